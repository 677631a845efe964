//! The human summary printed after every run.

use super::summary::{LatencySummary, RunSummary};
use std::fmt::Write;

fn latency_row(out: &mut String, label: &str, l: &LatencySummary) {
    let _ = writeln!(
        out,
        "  {label:<10} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10}",
        l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.mean_ms, l.count
    );
}

fn map_line(map: &std::collections::BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    map.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

/// Renders the summary table.
pub fn render(s: &RunSummary) -> String {
    let mut out = String::new();
    let c = &s.config;
    let load = match (c.offered_rate_per_s, c.in_flight_per_connection) {
        (Some(r), _) => format!("open loop {r:.0} req/s (pipeline {})", c.pipeline_depth),
        (None, Some(k)) => format!("closed loop, {k} in flight per connection"),
        _ => "heartbeats only".into(),
    };
    let _ = writeln!(
        out,
        "redrain-loadgen {}: {} -> {}, {} connections, {}, {:.1}s measured after {:.1}s warm-up, {} thread(s)",
        s.scenario, s.headline, c.target, c.connections, load, c.duration_s, c.warmup_s, c.threads
    );
    let se = &s.sessions;
    let _ = writeln!(
        out,
        "  sessions   established {}/{}  failed {}  lost {}  closings {}",
        se.established,
        se.target,
        map_line(&se.failures),
        se.lost,
        map_line(&se.closings_by_code)
    );
    if se.tls_handshakes > 0 || se.ramp_s > 0.0 {
        let tls = if se.tls_handshakes > 0 {
            format!("TLS handshakes {} ({} resumed), ", se.tls_handshakes, se.tls_resumed)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "  ramp       {tls}{:.1} sessions/s over {:.2} s{}",
            se.established_per_s,
            se.ramp_s,
            // Only where the warm-up carries no requests (heartbeats) is it the sessions' cost.
            s.node
                .as_ref()
                .filter(|_| s.headline == "sessions")
                .and_then(|n| n.cpu_us_per_session_ramp)
                .map(|u| format!(", node CPU {u:.1} us per session (ramp + warm-up)"))
                .unwrap_or_default()
        );
    }
    let r = &s.requests;
    let _ = writeln!(
        out,
        "  requests   sent {}  ok {}  errors {}  unanswered {}  unexpected {}  duplicated {}  malformed {}  check failures {}",
        r.sent, r.ok, r.errors, r.unanswered, r.unexpected, r.duplicated, r.malformed, r.check_failures
    );
    let offered = c.offered_rate_per_s.map(|o| format!("offered {o:.1}/s, ")).unwrap_or_default();
    let _ = writeln!(out, "  throughput {:.1} ok/s ({offered}sent {:.1}/s)", s.throughput_per_s, s.sent_rate_per_s);
    let _ = writeln!(out, "  errors     {}", map_line(&s.errors_by_code));
    if !s.scenario_counters.is_empty() {
        let _ = writeln!(out, "  {:<10} {}", s.scenario, map_line(&s.scenario_counters));
    }
    let _ = writeln!(
        out,
        "  latency ms {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "p50", "p90", "p99", "p99.9", "max", "mean", "count"
    );
    latency_row(&mut out, "requests", &s.request_latency);
    latency_row(&mut out, "service", &s.service_time);
    latency_row(&mut out, "sessions", &s.session_latency);
    for (name, l) in &s.scenario_latency {
        latency_row(&mut out, name, l);
    }
    match &s.floor {
        Some(f) => {
            latency_row(&mut out, "floor rtt", &f.round_trip);
            latency_row(&mut out, "floor lag", &f.send_lag);
            let _ = writeln!(
                out,
                "  (floor: this generator against a trivial echo server in-process on cpu {}, {} runtime, {}; \
                 requests = from the intended send, service = from the actual send)",
                f.server_cpu, f.runtime, f.measured_at
            );
        }
        None => {
            let _ = writeln!(
                out,
                "  (floor: not measured on this machine - run `redrain-loadgen floor`; \
                 requests = from the intended send, service = from the actual send)"
            );
        }
    }
    if let Some(n) = &s.node {
        let mb = |v: Option<f64>| v.map(|b| format!("{:.1} MiB", b / 1048576.0)).unwrap_or_else(|| "?".into());
        let per = n.memory_per_session_bytes.map(|b| format!("{b:.0} B")).unwrap_or_else(|| "?".into());
        let _ = writeln!(
            out,
            "  node       rss {} -> {}  sessions {} -> {}  memory per session {per}",
            mb(n.rss_bytes_before),
            mb(n.rss_bytes_held),
            n.sessions_before.map(|v| v.to_string()).unwrap_or_else(|| "?".into()),
            n.sessions_held.map(|v| v.to_string()).unwrap_or_else(|| "?".into()),
        );
        if let Some(cpu_s) = n.cpu_s_window {
            let per = n.node_cpu_us_per_request.map(|u| format!("{u:.2} us")).unwrap_or_else(|| "?".into());
            let cores: Vec<String> = n.core_busy.iter().map(|(k, v)| format!("{k} {:.0}%", v * 100.0)).collect();
            let _ = writeln!(
                out,
                "  node cpu   {cpu_s:.3} s in the window = {:.2} cores busy, {per} per request; threads [{}]",
                n.cpu_cores_busy.unwrap_or(0.0),
                cores.join(", ")
            );
        }
    }
    let g = &s.generator;
    let utils: Vec<String> = g
        .thread_cpu_utilization
        .iter()
        .enumerate()
        .map(|(i, u)| match g.thread_spin_fraction.get(i).filter(|s| **s >= 0.005) {
            Some(s) => format!("{:.0}% (+{:.0}% spin)", u * 100.0, s * 100.0),
            None => format!("{:.0}%", u * 100.0),
        })
        .collect();
    let verdict = if g.limited { "GENERATOR-LIMITED" } else { "ok" };
    let busy: Vec<String> =
        g.core_busy.iter().map(|b| b.map(|b| format!("{:.0}%", b * 100.0)).unwrap_or_else(|| "?".into())).collect();
    let _ = writeln!(
        out,
        "  generator  {verdict}: thread cpu [{}], its core busy [{}], send lag p99 {:.3} ms max {:.3} ms (threshold {:.1} ms), process cpu {:.2}s",
        utils.join(" "),
        busy.join(" "),
        g.send_lag_ms.p99_ms,
        g.send_lag_ms.max_ms,
        g.lag_threshold_ms,
        g.process_cpu_s
    );
    for (i, reason) in g.reasons.iter().enumerate() {
        let rule = g.rules_fired.get(i).map(|r| format!("[{r}] ")).unwrap_or_default();
        let _ = writeln!(out, "    ! {rule}{reason}");
    }
    for w in &s.warnings {
        let _ = writeln!(out, "  warning: {w}");
    }
    out
}
