//! The switch endpoints of the admin API (`/admin/...`, token required) and the overload
//! part of `/metrics`.
//!
//! `GET /admin/status` shows the switches, the version each core runs with, what is
//! persisted, each core's degrade level and the recent changes. `POST /admin/<switch>`
//! or `POST /admin/<switch>/<value>` changes one (`pause`, `resume`, `quota/N`,
//! `degrade/L`, `blacklist/KEY`, `whitelist/KEY`, `adopt/NODE`, `drain`,
//! `messages_per_user_per_s/N`, `syncs_per_user_per_s/N`); the answer
//! comes once every core runs with the change and it is in the switches table (or after
//! [`APPLY_WAIT`], saying which of the two is missing).

use super::switches::SwitchChange;
use crate::shard::NodeShared;
use redrain_net::admin::{AdminMethod, AdminRequest, AdminResponse};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a change waits for every core and the table before it is answered anyway.
pub const APPLY_WAIT: Duration = Duration::from_secs(3);

/// The development admin token of a data dir (created on first start).
pub fn dev_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.token")
}

fn json(status: u16, value: serde_json::Value) -> AdminResponse {
    AdminResponse { status, content_type: "application/json", body: format!("{value}\n") }
}

/// Serves one `/admin/...` request (already authenticated by the server).
pub fn handle(node: &Arc<NodeShared>, req: &AdminRequest) -> AdminResponse {
    let rest = req.path.trim_start_matches(redrain_net::admin::PROTECTED_PREFIX);
    let mut parts = rest.splitn(2, '/');
    let name = parts.next().unwrap_or("");
    let value = parts.next().filter(|v| !v.is_empty());
    match (req.method, name) {
        (AdminMethod::Read, "status") => json(200, status(node)),
        (AdminMethod::Read, _) => AdminResponse::text(405, "switches change with POST\n"),
        (AdminMethod::Change, "status") => AdminResponse::text(405, "status is read with GET\n"),
        (AdminMethod::Change, _) => {
            let change = match SwitchChange::parse(name, value) {
                Ok(c) => c,
                Err(e) => return AdminResponse::text(400, format!("{e}\n")),
            };
            let who = format!(
                "token={} operator={} peer={}",
                req.token.map(|t| t.name()).unwrap_or("none"),
                req.operator.as_deref().unwrap_or("-"),
                req.peer
            );
            let now_ms = redrain_net::time::now_unix_ms();
            let version = match node.switches.change(change, &who, now_ms) {
                Ok(v) => v,
                Err(e) => return AdminResponse::text(400, format!("{e}\n")),
            };
            let deadline = Instant::now() + APPLY_WAIT;
            // Every node keeps its switches in core 0's table (data_dir/switches).
            let done = || node.switches.applied_everywhere(version) && node.switches.persisted() >= version;
            while !done() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let applied = node.switches.applied_everywhere(version);
            let persisted = node.switches.persisted() >= version;
            let note = match change {
                SwitchChange::Adopt(_) => "adopt applies at the next start (the event's files are assigned at load)",
                _ => "",
            };
            json(
                if applied { 200 } else { 202 },
                serde_json::json!({
                    "version": version,
                    "change": format!("{change:?}"),
                    "applied_on_every_core": applied,
                    "persisted": persisted,
                    "note": note,
                }),
            )
        }
    }
}

fn status(node: &Arc<NodeShared>) -> serde_json::Value {
    let (version, s) = node.switches.snapshot();
    let audit: Vec<_> = node
        .switches
        .audit_after(0)
        .into_iter()
        .rev()
        .take(20)
        .map(|e| serde_json::json!({"version": e.version, "when_unix_ms": e.unix_ms, "who": e.who, "what": e.what}))
        .collect();
    serde_json::json!({
        "version": version,
        "persisted_version": node.switches.persisted(),
        "applied_version_per_core": node.switches.applied(),
        "degrade_level_per_core": node.metrics.iter().map(|m| m.overload.degrade_level.load(Relaxed)).collect::<Vec<_>>(),
        "paused": s.paused,
        "draining": s.draining,
        "quota_per_s": s.quota_per_s,
        "configured_quota_per_s": node.config.issuance_quota_per_s,
        "degrade_floor": s.degrade_floor,
        "blacklist": s.blacklist,
        "keyring_blacklist": s.keyring_blacklist,
        "adopt_node": s.adopt_node,
        "messages_per_user_per_s": s.messages_per_user_per_s.unwrap_or(node.config.messages_per_user_per_s),
        "configured_messages_per_user_per_s": node.config.messages_per_user_per_s,
        "syncs_per_user_per_s": s.syncs_per_user_per_s.unwrap_or(node.config.syncs_per_user_per_s),
        "configured_syncs_per_user_per_s": node.config.syncs_per_user_per_s,
        "recent_changes": audit,
    })
}

/// The overload block of `/metrics`: per-core counters, switches, limits, admin counters.
pub fn render_metrics(node: &Arc<NodeShared>, out: &mut String) {
    let cores: Vec<_> = node.metrics.iter().map(|m| &m.overload).collect();
    super::metrics::render(&cores, out);
    let (version, s) = node.switches.snapshot();
    let c = &node.config;
    let quota = s.quota_per_s.unwrap_or(c.issuance_quota_per_s);
    super::metrics::render_limits(
        &[
            ("issuance_quota_per_s", quota as f64),
            ("shake_interval_ms", f64::from(c.shake_interval_ms)),
            ("sessions_per_core_max", node.sessions_per_core_max as f64),
            ("messages_per_user_per_s", f64::from(s.messages_per_user_per_s.unwrap_or(c.messages_per_user_per_s))),
            ("syncs_per_user_per_s", f64::from(s.syncs_per_user_per_s.unwrap_or(c.syncs_per_user_per_s))),
            ("handoff_queue_capacity", c.handoff_queue_capacity as f64),
            ("opens_pending_max", c.opens_pending_max as f64),
            ("pipelined_requests_max", c.pipelined_requests_max as f64),
            ("conn_output_bytes_max", c.conn_output_bytes_max as f64),
            ("queue_delay_max_us", c.queue_delay_max_us as f64),
            ("write_timeout_ms", f64::from(c.write_timeout_ms)),
            ("messages_per_user_burst", f64::from(c.messages_per_user_burst)),
            ("syncs_per_user_burst", f64::from(c.syncs_per_user_burst)),
            ("rate_users_per_core_max", c.rate_users_per_core_max as f64),
            ("conn_pushed_bytes_max", c.conn_pushed_bytes_max as f64),
            ("timeline_mail_outbox_max", c.timeline.mail_outbox_max as f64),
        ],
        out,
    );
    let _ = writeln!(
        out,
        "# HELP redrain_switch Operator switches in force.\n# TYPE redrain_switch gauge\n\
         redrain_switch{{name=\"paused\"}} {}\nredrain_switch{{name=\"draining\"}} {}\n\
         redrain_switch{{name=\"degrade_floor\"}} {}\nredrain_switch{{name=\"blacklisted_keys\"}} {}\n\
         redrain_switch{{name=\"version\"}} {version}\nredrain_switch{{name=\"persisted_version\"}} {}",
        u8::from(s.paused),
        u8::from(s.draining),
        s.degrade_floor,
        s.blacklist.len() + s.keyring_blacklist.len(),
        node.switches.persisted(),
    );
    let a = &node.admin_counters;
    let _ = writeln!(
        out,
        "# HELP redrain_admin_requests_total Admin API requests.\n# TYPE redrain_admin_requests_total counter\n\
         redrain_admin_requests_total {}\n\
         # HELP redrain_admin_auth_failures_total Admin API requests refused for their token.\n\
         # TYPE redrain_admin_auth_failures_total counter\n\
         redrain_admin_auth_failures_total{{reason=\"missing\"}} {}\nredrain_admin_auth_failures_total{{reason=\"wrong\"}} {}\n\
         # HELP redrain_admin_connections_refused_total Admin connections refused at the bound.\n\
         # TYPE redrain_admin_connections_refused_total counter\nredrain_admin_connections_refused_total {}",
        a.requests_total.load(Relaxed),
        a.unauthenticated_total.load(Relaxed),
        a.wrong_token_total.load(Relaxed),
        a.connections_refused_total.load(Relaxed),
    );
    super::reload::render(out);
}
