//! `tune check`: reads each relevant host setting through [`Host`], compares it with the
//! capacity model in [`crate::recommend`], and produces a [`Report`] of [`Item`]s.
//!
//! Reading never fails the whole check: a missing or unreadable file becomes an item with
//! status `n/a` and the reason, so the check runs on containers, VMs and old kernels alike.
//!
//! Single-number sysctls are checked here by `sysctl_min`-style helpers; items that need
//! more live in one submodule per area: `limits` (rlimits), `tcp` (tcp_mem, socket
//! buffers, port range), `io_uring`, `cpu` (governor, isolation), `irq` (NIC queues) and
//! `memory` (transparent hugepages).

use std::collections::BTreeMap;

use serde::Serialize;

mod cpu;
mod io_uring;
mod irq;
mod limits;
mod memory;
mod tcp;

pub use irq::is_nic_queue_irq;

use crate::host::{Host, ReadError};
use crate::parse;
use crate::recommend::{self, Target};

/// How an item compares with its recommendation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Status {
    /// Meets the recommendation.
    #[serde(rename = "ok")]
    Ok,
    /// Below a recommended minimum.
    #[serde(rename = "low")]
    Low,
    /// Above a recommended maximum.
    #[serde(rename = "high")]
    High,
    /// A choice (governor, THP mode, switch) other than the recommended one.
    #[serde(rename = "differs")]
    Differs,
    /// Shown for information; there is no single right value (CPU isolation, IRQ layout).
    #[serde(rename = "info")]
    Info,
    /// The setting does not exist or cannot be read here; the note says why.
    #[serde(rename = "n/a")]
    NotApplicable,
}

impl Status {
    /// The word printed in the status column.
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Low => "low",
            Status::High => "high",
            Status::Differs => "differs",
            Status::Info => "info",
            Status::NotApplicable => "n/a",
        }
    }

    /// Whether this status makes the check exit with [`EXIT_CODE_BELOW_RECOMMENDATION`].
    pub fn falls_short(self) -> bool {
        matches!(self, Status::Low | Status::High | Status::Differs)
    }
}

/// Exit code when every item is ok, info or n/a.
pub const EXIT_CODE_OK: i32 = 0;
/// Exit code when at least one item is low, high or differs.
pub const EXIT_CODE_BELOW_RECOMMENDATION: i32 = 1;

/// How `--apply` can bring an item to its recommendation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Remedy {
    /// Write `value` to the sysctl `key` through `/proc/sys`.
    Sysctl {
        /// Dotted sysctl name, e.g. `net.core.somaxconn`.
        key: String,
        /// The text to write, e.g. `8192` or `200000 400000 600000`.
        value: String,
    },
    /// `--apply` does not change this item; `why` says what to do instead.
    Manual {
        /// Why it is not applied and what the operator should do.
        why: String,
    },
}

/// One checked setting.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    /// The setting's name as an operator searches for it (`fs.nr_open`,
    /// `RLIMIT_NOFILE soft`).
    pub setting: String,
    /// The current value, or why there is none.
    pub current: String,
    /// The recommended value for the target, e.g. `>= 131072`.
    pub recommended: String,
    /// How current compares with recommended.
    pub status: Status,
    /// The shell command (or config line) that sets the recommended value.
    pub apply_command: String,
    /// Why the value matters, the arithmetic behind it, or why the item is n/a.
    pub note: String,
    /// What `--apply` would do about it.
    pub remedy: Remedy,
}

/// The result of a whole check.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What the host was sized for.
    pub target: Target,
    /// Every checked setting, in the order of `docs/tuning.md`.
    pub items: Vec<Item>,
}

impl Report {
    /// [`EXIT_CODE_BELOW_RECOMMENDATION`] if any item falls short, else [`EXIT_CODE_OK`].
    pub fn exit_code(&self) -> i32 {
        if self.items.iter().any(|item| item.status.falls_short()) {
            EXIT_CODE_BELOW_RECOMMENDATION
        } else {
            EXIT_CODE_OK
        }
    }

    /// Number of items per status label, for the summary line.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for item in &self.items {
            *counts.entry(item.status.label()).or_insert(0) += 1;
        }
        counts
    }
}

/// Checks every setting of the host against the target.
pub fn check_host(host: &Host, target: &Target) -> Report {
    let mut items = Vec::new();
    items.extend(limits::check_nofile(host, target));
    items.push(sysctl_min(
        host,
        "fs.nr_open",
        recommend::nr_open_min(target),
        "ceiling for any process's RLIMIT_NOFILE: LimitNOFILE above it fails to apply",
    ));
    items.push(sysctl_min(
        host,
        "fs.file-max",
        recommend::file_max_min(target),
        "system-wide open files: two full redrain processes overlap during a rolling \
         restart, plus 65536 for the rest of the host",
    ));
    items.extend(limits::check_memlock(host, target));
    let backlog = recommend::listen_backlog(target);
    items.push(sysctl_min(
        host,
        "net.core.somaxconn",
        backlog,
        "caps each per-core listener's accept queue; 1/8 of a core's sessions must fit \
         during a reconnect storm",
    ));
    items.push(sysctl_min(
        host,
        "net.ipv4.tcp_max_syn_backlog",
        backlog,
        "half-open connections per listener before SYN cookies; sized like somaxconn",
    ));
    items.push(sysctl_min(
        host,
        "net.core.netdev_max_backlog",
        recommend::NETDEV_MAX_BACKLOG_PACKETS,
        "per-CPU packet queue ahead of the TCP stack; the default 1000 drops bursts of \
         small frames",
    ));
    items.push(tcp::check_tcp_mem(host, target));
    items.push(tcp::check_socket_buffers(host, "net.ipv4.tcp_rmem"));
    items.push(tcp::check_socket_buffers(host, "net.ipv4.tcp_wmem"));
    items.push(tcp::check_port_range(host, target));
    items.push(sysctl_equal(
        host,
        "net.ipv4.tcp_tw_reuse",
        recommend::TCP_TW_REUSE_RECOMMENDED,
        "lets outgoing connections (loadgen, peer links, sink) reuse TIME_WAIT ports; \
         2 (the default) does so on loopback only",
    ));
    items.push(sysctl_max(
        host,
        "net.ipv4.tcp_fin_timeout",
        recommend::TCP_FIN_TIMEOUT_SECONDS_MAX,
        "seconds an orphaned FIN_WAIT_2 socket of a vanished client holds memory",
    ));
    items.extend(io_uring::check_io_uring(host));
    items.push(cpu::check_governor(host));
    items.push(cpu::check_isolation(host));
    items.push(irq::check_nic_irqs(host));
    items.push(memory::check_transparent_hugepages(host));
    items.push(sysctl_min(
        host,
        "vm.max_map_count",
        recommend::MAX_MAP_COUNT_MIN,
        "allocator segments, io_uring rings and mapped log segments each take a \
         mapping; running out fails mmap with ENOMEM despite free memory",
    ));
    items.push(sysctl_max(
        host,
        "vm.swappiness",
        recommend::SWAPPINESS_MAX,
        "a major fault on a shard core stalls every session of that core",
    ));
    Report { target: *target, items }
}

/// Number of CPUs this process (or the inspected one) may run on, from
/// `Cpus_allowed_list` in `/proc/<pid>/status`: the set redrain starts executors on.
pub fn allowed_cpu_count(host: &Host) -> Result<u64, ReadError> {
    let path = host.process_path("status");
    let cpus =
        host.read_parsed(&path, |text| parse::parse_cpu_list(parse::find_key_value(text, "Cpus_allowed_list")?))?;
    Ok(cpus.len() as u64)
}

fn sysctl_command(key: &str, value: &str) -> String {
    if value.contains(char::is_whitespace) {
        format!("sysctl -w {key}=\"{value}\"")
    } else {
        format!("sysctl -w {key}={value}")
    }
}

fn sysctl_remedy(key: &str, value: &str) -> Remedy {
    Remedy::Sysctl { key: key.to_string(), value: value.to_string() }
}

fn not_applicable(setting: &str, recommended: String, apply_command: String, why: String) -> Item {
    Item {
        setting: setting.to_string(),
        current: "-".to_string(),
        recommended,
        status: Status::NotApplicable,
        apply_command,
        note: why,
        remedy: Remedy::Manual { why: "not present on this host".to_string() },
    }
}

/// A sysctl whose value should be at least `min`.
fn sysctl_min(host: &Host, key: &str, min: u64, why: &str) -> Item {
    sysctl_bound(host, key, min, why, |current| current >= min, Status::Low, ">=")
}

/// A sysctl whose value should be at most `max`.
fn sysctl_max(host: &Host, key: &str, max: u64, why: &str) -> Item {
    sysctl_bound(host, key, max, why, |current| current <= max, Status::High, "<=")
}

/// A sysctl whose value should be exactly `want` (a mode switch, not a quantity).
fn sysctl_equal(host: &Host, key: &str, want: u64, why: &str) -> Item {
    sysctl_bound(host, key, want, why, |current| current == want, Status::Differs, "=")
}

fn sysctl_bound(
    host: &Host,
    key: &str,
    value: u64,
    why: &str,
    is_ok: impl FnOnce(u64) -> bool,
    failing: Status,
    relation: &str,
) -> Item {
    let value_text = value.to_string();
    let recommended = format!("{relation} {value}");
    let apply_command = sysctl_command(key, &value_text);
    match host.read_parsed(&host.sysctl_path(key), parse::parse_u64) {
        Ok(current) => Item {
            setting: key.to_string(),
            current: current.to_string(),
            recommended,
            status: if is_ok(current) { Status::Ok } else { failing },
            apply_command,
            note: why.to_string(),
            remedy: sysctl_remedy(key, &value_text),
        },
        Err(error) => not_applicable(key, recommended, apply_command, error.to_string()),
    }
}
