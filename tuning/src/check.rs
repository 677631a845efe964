//! `tune check`: reads each relevant host setting through [`Host`], compares it with the
//! capacity model in [`crate::recommend`], and produces a [`Report`] of [`Item`]s.
//!
//! Reading never fails the whole check: a missing or unreadable file becomes an item with
//! status `n/a` and the reason, so the check runs on containers, VMs and old kernels alike.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::host::{Host, ReadError};
use crate::parse::{self, LimitValue, SoftHard};
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
    items.extend(check_nofile(host, target));
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
    items.extend(check_memlock(host, target));
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
    items.push(check_tcp_mem(host, target));
    items.push(check_socket_buffers(host, "net.ipv4.tcp_rmem"));
    items.push(check_socket_buffers(host, "net.ipv4.tcp_wmem"));
    items.push(check_port_range(host, target));
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
    items.extend(check_io_uring(host));
    items.push(check_governor(host));
    items.push(check_isolation(host));
    items.push(check_nic_irqs(host));
    items.push(check_transparent_hugepages(host));
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
    Report {
        target: *target,
        items,
    }
}

/// Number of CPUs this process (or the inspected one) may run on, from
/// `Cpus_allowed_list` in `/proc/<pid>/status`: the set redrain starts executors on.
pub fn allowed_cpu_count(host: &Host) -> Result<u64, ReadError> {
    let path = host.process_path("status");
    let cpus = host.read_parsed(&path, |text| {
        parse::parse_cpu_list(parse::find_key_value(text, "Cpus_allowed_list")?)
    })?;
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
    Remedy::Sysctl {
        key: key.to_string(),
        value: value.to_string(),
    }
}

fn not_applicable(setting: &str, recommended: String, apply_command: String, why: String) -> Item {
    Item {
        setting: setting.to_string(),
        current: "-".to_string(),
        recommended,
        status: Status::NotApplicable,
        apply_command,
        note: why,
        remedy: Remedy::Manual {
            why: "not present on this host".to_string(),
        },
    }
}

/// A sysctl whose value should be at least `min`.
fn sysctl_min(host: &Host, key: &str, min: u64, why: &str) -> Item {
    sysctl_bound(
        host,
        key,
        min,
        why,
        |current| current >= min,
        Status::Low,
        ">=",
    )
}

/// A sysctl whose value should be at most `max`.
fn sysctl_max(host: &Host, key: &str, max: u64, why: &str) -> Item {
    sysctl_bound(
        host,
        key,
        max,
        why,
        |current| current <= max,
        Status::High,
        "<=",
    )
}

/// A sysctl whose value should be exactly `want` (a mode switch, not a quantity).
fn sysctl_equal(host: &Host, key: &str, want: u64, why: &str) -> Item {
    sysctl_bound(
        host,
        key,
        want,
        why,
        |current| current == want,
        Status::Differs,
        "=",
    )
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

fn limit_item(
    setting: &str,
    current: LimitValue,
    needed: u64,
    apply_command: &str,
    note: String,
) -> Item {
    Item {
        setting: setting.to_string(),
        current: current.to_string(),
        recommended: format!(">= {needed}"),
        status: if current.at_least(needed) {
            Status::Ok
        } else {
            Status::Low
        },
        apply_command: apply_command.to_string(),
        note,
        remedy: Remedy::Manual {
            why: "resource limits belong to each process and are inherited at start; set \
                  them in redrain.service (LimitNOFILE=/LimitMEMLOCK=) or \
                  /etc/security/limits.d for login shells, then restart redrain"
                .to_string(),
        },
    }
}

fn read_limits(host: &Host, label: &'static str) -> Result<SoftHard, ReadError> {
    let path = host.process_path("limits");
    host.read_parsed(&path, |text| parse::parse_proc_limits(text, label))
}

fn check_nofile(host: &Host, target: &Target) -> Vec<Item> {
    let needed = recommend::nofile_limit(target);
    let command = format!("LimitNOFILE={needed} in redrain.service; ulimit -n {needed}");
    let note = format!(
        "one fd per session + {}% headroom + {} per core + {} per process = {} sessions -> \
         {needed} (rounded up to 64 Ki); limits of process '{}'",
        recommend::FDS_HEADROOM_PERCENT,
        recommend::FDS_PER_CORE_OVERHEAD,
        recommend::FDS_PER_PROCESS_OVERHEAD,
        target.sessions,
        host.process,
    );
    match read_limits(host, parse::LIMIT_LABEL_NOFILE) {
        Ok(limits) => vec![
            limit_item(
                "RLIMIT_NOFILE soft",
                limits.soft,
                needed,
                &command,
                note.clone(),
            ),
            limit_item(
                "RLIMIT_NOFILE hard",
                limits.hard,
                needed,
                &command,
                "a process may raise its soft limit up to this without privilege".to_string(),
            ),
        ],
        Err(error) => vec![not_applicable(
            "RLIMIT_NOFILE",
            format!(">= {needed}"),
            command,
            error.to_string(),
        )],
    }
}

fn check_memlock(host: &Host, target: &Target) -> Vec<Item> {
    let needed = recommend::memlock_bytes_min(target);
    let command = format!(
        "LimitMEMLOCK={needed} in redrain.service; ulimit -l {}",
        needed / 1024
    );
    let arithmetic = format!(
        "io_uring registered buffers count against it: {} cores x {} rings x {} io_memory = {}",
        target.cores,
        recommend::IO_URING_RINGS_PER_EXECUTOR,
        recommend::format_bytes(target.io_memory_bytes_per_executor),
        recommend::format_bytes(needed),
    );
    match read_limits(host, parse::LIMIT_LABEL_MEMLOCK) {
        Ok(limits) => {
            let soft_note = match limits.soft {
                LimitValue::Finite(bytes) if bytes < needed => format!(
                    "{arithmetic}; at the current {} limit, io_memory must be <= {} per \
                     executor or glommio skips buffer registration",
                    recommend::format_bytes(bytes),
                    recommend::format_bytes(recommend::io_memory_bytes_fitting(
                        bytes,
                        target.cores
                    )),
                ),
                _ => arithmetic.clone(),
            };
            vec![
                limit_item(
                    "RLIMIT_MEMLOCK soft",
                    limits.soft,
                    needed,
                    &command,
                    soft_note,
                ),
                limit_item(
                    "RLIMIT_MEMLOCK hard",
                    limits.hard,
                    needed,
                    &command,
                    "the kernel charges the buffers of all rings of the user together".to_string(),
                ),
            ]
        }
        Err(error) => vec![not_applicable(
            "RLIMIT_MEMLOCK",
            format!(">= {needed}"),
            command,
            error.to_string(),
        )],
    }
}

fn triple_text(values: &[u64; 3]) -> String {
    format!("{} {} {}", values[0], values[1], values[2])
}

fn check_tcp_mem(host: &Host, target: &Target) -> Item {
    let key = "net.ipv4.tcp_mem";
    let want = recommend::tcp_mem_pages(target, host.page_size_bytes);
    let want_text = triple_text(&want);
    let recommended = format!(">= {want_text}");
    let command = sysctl_command(key, &want_text);
    let low_bytes = want[0].saturating_mul(host.page_size_bytes);
    let high_bytes = want[2].saturating_mul(host.page_size_bytes);
    let mut note = format!(
        "pages (x{} B); low = {} sessions x {} B (rmem+wmem floor) = {}, pressure x{}, \
         high x{} = {}",
        host.page_size_bytes,
        target.sessions,
        recommend::SOCKET_BUFFER_MIN_BYTES * 2,
        recommend::format_bytes(low_bytes),
        recommend::TCP_MEM_PRESSURE_FACTOR,
        recommend::TCP_MEM_HIGH_FACTOR,
        recommend::format_bytes(high_bytes),
    );
    if let Ok(mem_total_bytes) =
        host.read_parsed(&host.proc_path("meminfo"), parse::parse_mem_total_bytes)
    {
        let percent = high_bytes.saturating_mul(100) / mem_total_bytes.max(1);
        note.push_str(&format!(
            "; high is {percent}% of {} RAM",
            recommend::format_bytes(mem_total_bytes)
        ));
        if percent > recommend::TCP_MEM_RAM_PERCENT_WARN {
            note.push_str(" - too much: this host is small for the target");
        }
    }
    match host.read_parsed(&host.sysctl_path(key), parse::parse_triple) {
        Ok(current) => {
            let meets = current
                .iter()
                .zip(want.iter())
                .all(|(have, need)| have >= need);
            Item {
                setting: key.to_string(),
                current: triple_text(&current),
                recommended,
                status: if meets { Status::Ok } else { Status::Low },
                apply_command: command,
                note,
                remedy: sysctl_remedy(key, &want_text),
            }
        }
        Err(error) => not_applicable(key, recommended, command, error.to_string()),
    }
}

fn check_socket_buffers(host: &Host, key: &str) -> Item {
    let note_why = format!(
        "bytes per socket (floor, initial, max); with many mostly idle sessions a small \
         initial size bounds what peers can queue, max >= {} keeps bulk links fast",
        recommend::format_bytes(recommend::SOCKET_BUFFER_MAX_BYTES_MIN)
    );
    match host.read_parsed(&host.sysctl_path(key), parse::parse_triple) {
        Ok(current) => {
            let want = recommend::socket_buffer_triple(current[2]);
            let want_text = triple_text(&want);
            let status = if current[1] > want[1] {
                Status::High
            } else if current[0] < want[0] || current[2] < recommend::SOCKET_BUFFER_MAX_BYTES_MIN {
                Status::Low
            } else {
                Status::Ok
            };
            Item {
                setting: key.to_string(),
                current: triple_text(&current),
                recommended: want_text.clone(),
                status,
                apply_command: sysctl_command(key, &want_text),
                note: note_why,
                remedy: sysctl_remedy(key, &want_text),
            }
        }
        Err(error) => {
            let want_text = triple_text(&recommend::socket_buffer_triple(0));
            let command = sysctl_command(key, &want_text);
            not_applicable(key, want_text, command, error.to_string())
        }
    }
}

fn check_port_range(host: &Host, target: &Target) -> Item {
    let key = "net.ipv4.ip_local_port_range";
    let (first, last) = recommend::LOCAL_PORT_RANGE_RECOMMENDED;
    let want_size = parse::port_range_size(first, last);
    let want_text = format!("{first} {last}");
    let command = sysctl_command(key, &want_text);
    match host.read_parsed(&host.sysctl_path(key), parse::parse_port_range) {
        Ok((current_first, current_last)) => {
            let size = parse::port_range_size(current_first, current_last);
            Item {
                setting: key.to_string(),
                current: format!("{current_first} {current_last}"),
                recommended: want_text.clone(),
                status: if size >= want_size {
                    Status::Ok
                } else {
                    Status::Low
                },
                apply_command: command,
                note: format!(
                    "{size} ephemeral ports; a loadgen opening {} sessions to one server \
                     ip:port needs {} source IPs (at {want_size} ports: {}); reserve \
                     redrain's listen ports with net.ipv4.ip_local_reserved_ports",
                    target.sessions,
                    recommend::loadgen_source_addresses(target.sessions, size),
                    recommend::loadgen_source_addresses(target.sessions, want_size),
                ),
                remedy: sysctl_remedy(key, &want_text),
            }
        }
        Err(error) => not_applicable(key, want_text, command, error.to_string()),
    }
}

fn check_io_uring(host: &Host) -> Vec<Item> {
    let disabled_key = "kernel.io_uring_disabled";
    let group_key = "kernel.io_uring_group";
    let command = sysctl_command(disabled_key, "0");
    let disabled = host.read_parsed(&host.sysctl_path(disabled_key), parse::parse_u64);
    let group = host.read_parsed(&host.sysctl_path(group_key), parse::parse_i64);
    let manual = Remedy::Manual {
        why: "io_uring_disabled is a security decision of the host's owner; --apply does \
              not loosen it"
            .to_string(),
    };
    let mut items = Vec::new();
    match &disabled {
        Ok(value) => {
            let (status, note) = match value {
                0 => (
                    Status::Ok,
                    "io_uring is available to every process".to_string(),
                ),
                1 => (
                    Status::Differs,
                    "only CAP_SYS_ADMIN or members of kernel.io_uring_group may create \
                     rings: the redrain user must be in that group, or set 0"
                        .to_string(),
                ),
                _ => (
                    Status::Differs,
                    "io_uring is disabled for everyone: redrain cannot start".to_string(),
                ),
            };
            items.push(Item {
                setting: disabled_key.to_string(),
                current: value.to_string(),
                recommended: "= 0".to_string(),
                status,
                apply_command: command,
                note,
                remedy: manual,
            });
        }
        Err(ReadError::Missing { .. }) => items.push(not_applicable(
            disabled_key,
            "= 0".to_string(),
            command,
            "no such sysctl (kernels before 6.6): io_uring is enabled if built in".to_string(),
        )),
        Err(error) => items.push(not_applicable(
            disabled_key,
            "= 0".to_string(),
            command,
            error.to_string(),
        )),
    }
    match group {
        Ok(gid) => {
            let note = match (&disabled, gid) {
                (Ok(1), -1) => "io_uring_disabled=1 and no group: only CAP_SYS_ADMIN may \
                                 use io_uring"
                    .to_string(),
                (Ok(1), gid) => format!("the redrain user must be a member of gid {gid}"),
                _ => "only consulted when io_uring_disabled = 1".to_string(),
            };
            items.push(Item {
                setting: group_key.to_string(),
                current: gid.to_string(),
                recommended: "- (see io_uring_disabled)".to_string(),
                status: Status::Info,
                apply_command: format!(
                    "{}  # a gid the redrain user belongs to",
                    sysctl_command(group_key, "<gid>")
                ),
                note,
                remedy: Remedy::Manual {
                    why: "informational".to_string(),
                },
            });
        }
        // The group switch only exists alongside io_uring_disabled; listing its absence
        // separately would say the same thing twice.
        Err(ReadError::Missing { .. }) => {}
        Err(error) => items.push(not_applicable(
            group_key,
            "-".to_string(),
            String::new(),
            error.to_string(),
        )),
    }
    items
}

/// CPU directory names (`cpu0`, `cpu17`) under `/sys/devices/system/cpu`, by number.
fn cpu_numbers(host: &Host) -> Vec<u32> {
    let mut cpus: Vec<u32> = host
        .list_dir(&host.sys_path("devices/system/cpu"))
        .iter()
        .filter_map(|name| name.strip_prefix("cpu")?.parse::<u32>().ok())
        .collect();
    cpus.sort_unstable();
    cpus
}

fn check_governor(host: &Host) -> Item {
    let setting = "cpufreq scaling_governor";
    let command = "cpupower frequency-set -g performance".to_string();
    let mut by_governor: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for cpu in cpu_numbers(host) {
        let path = host.sys_path(&format!(
            "devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor"
        ));
        if let Ok(text) = host.read_text(&path) {
            by_governor
                .entry(text.trim().to_string())
                .or_default()
                .push(cpu);
        }
    }
    if by_governor.is_empty() {
        return not_applicable(
            setting,
            "performance".to_string(),
            command,
            "no cpu*/cpufreq/scaling_governor: no cpufreq driver (virtual machine, or \
             frequency managed by firmware)"
                .to_string(),
        );
    }
    let all_performance = by_governor.keys().all(|governor| governor == "performance");
    let current = by_governor
        .iter()
        .map(|(governor, cpus)| format!("{governor} on {}", parse::format_cpu_list(cpus)))
        .collect::<Vec<_>>()
        .join("; ");
    Item {
        setting: setting.to_string(),
        current,
        recommended: "performance".to_string(),
        status: if all_performance {
            Status::Ok
        } else {
            Status::Differs
        },
        apply_command: command,
        note: "shard cores poll and sleep in short bursts; ramping the clock up after each \
               sleep adds tail latency"
            .to_string(),
        remedy: Remedy::Manual {
            why: "the governor is a sysfs setting of the whole machine, usually owned by \
                  cpupower/tuned; set it there so it survives reboots"
                .to_string(),
        },
    }
}

fn check_isolation(host: &Host) -> Item {
    let setting = "CPU isolation";
    let recommended = "optional: isolcpus/nohz_full on shard cores".to_string();
    let command = "kernel command line: isolcpus=managed_irq,domain,<cpus> nohz_full=<cpus> \
                   (reboot)"
        .to_string();
    let isolated = host.read_parsed(
        &host.sys_path("devices/system/cpu/isolated"),
        parse::parse_cpu_list,
    );
    let nohz_full = host.read_parsed(
        &host.sys_path("devices/system/cpu/nohz_full"),
        parse::parse_cpu_list,
    );
    let describe = |result: &Result<Vec<u32>, ReadError>| match result {
        Ok(cpus) => parse::format_cpu_list(cpus),
        Err(ReadError::Missing { .. }) => "n/a (not built in)".to_string(),
        Err(_) => "unreadable".to_string(),
    };
    if isolated.is_err() && nohz_full.is_err() {
        return not_applicable(
            setting,
            recommended,
            command,
            "neither devices/system/cpu/isolated nor nohz_full is readable".to_string(),
        );
    }
    Item {
        setting: setting.to_string(),
        current: format!(
            "isolated: {}; nohz_full: {}",
            describe(&isolated),
            describe(&nohz_full)
        ),
        recommended,
        status: Status::Info,
        apply_command: command,
        note: "keeps other tasks and the scheduler tick off shard cores; worth it for \
               p99.9 on dedicated hosts, not required"
            .to_string(),
        remedy: Remedy::Manual {
            why: "isolation is a boot parameter; edit the kernel command line and reboot"
                .to_string(),
        },
    }
}

/// Most NIC queue IRQs listed in the `current` column; the rest are counted.
const NIC_IRQS_LISTED_MAX: usize = 8;

/// Names of network interfaces (not `lo`) and the device each sits on (`virtio2`,
/// `0000:3b:00.0`), from `/sys/class/net`.
fn network_devices(host: &Host) -> Vec<(String, Option<String>)> {
    let class_net = host.sys_path("class/net");
    host.list_dir(&class_net)
        .into_iter()
        .filter(|name| name != "lo")
        .map(|name| {
            let device = std::fs::read_link(class_net.join(&name).join("device"))
                .ok()
                .and_then(|target| Some(target.file_name()?.to_str()?.to_string()));
            (name, device)
        })
        .collect()
}

/// Whether an interrupt handler name is a NIC queue. Drivers name queue vectors
/// `<iface>-TxRx-<n>` (Intel), `<iface>-rx-<n>`, `mlx5_comp<n>@pci:...` (Mellanox),
/// `<virtio dev>-input.<n>`/`-output.<n>` (virtio-net). virtio-rng's single queue is also
/// called `input`, but without the `.<n>` suffix, so the dot is what tells them apart.
pub fn is_nic_queue_irq(name: &str, devices: &[(String, Option<String>)]) -> bool {
    let virtio_net_queue = |rest: &str| {
        let suffix = rest
            .strip_prefix("input.")
            .or_else(|| rest.strip_prefix("output."));
        suffix.is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    if name.contains("-TxRx-") || name.starts_with("mlx5_comp") || name.starts_with("mlx4-") {
        return true;
    }
    if let Some(rest) = name.strip_prefix("virtio") {
        if let Some((number, queue)) = rest.split_once('-') {
            if number.bytes().all(|b| b.is_ascii_digit()) && virtio_net_queue(queue) {
                // With sysfs we know which virtio devices are NICs; without it, the
                // input.N/output.N queue names are specific enough on their own.
                let device = format!("virtio{number}");
                let known: Vec<&String> = devices.iter().filter_map(|(_, d)| d.as_ref()).collect();
                return known.is_empty() || known.iter().any(|d| **d == device);
            }
        }
    }
    devices.iter().any(|(interface, _)| {
        name.strip_prefix(interface.as_str())
            .is_some_and(|rest| rest.starts_with('-'))
    })
}

fn check_nic_irqs(host: &Host) -> Item {
    let setting = "NIC queue IRQ affinity";
    let recommended = "queues spread over cores".to_string();
    let command = "echo <cpus> > /proc/irq/<irq>/smp_affinity_list (with irqbalance stopped \
                   or told to skip those IRQs)"
        .to_string();
    let text = match host.read_text(&host.proc_path("interrupts")) {
        Ok(text) => text,
        Err(error) => return not_applicable(setting, recommended, command, error.to_string()),
    };
    let devices = network_devices(host);
    let mut queues: Vec<(u32, String, Result<Vec<u32>, ReadError>)> = Vec::new();
    for line in parse::parse_interrupts(&text) {
        if is_nic_queue_irq(&line.name, &devices) {
            let path = host.proc_path(&format!("irq/{}/smp_affinity_list", line.irq));
            let affinity = host.read_parsed(&path, parse::parse_cpu_list);
            queues.push((line.irq, line.name, affinity));
        }
    }
    if queues.is_empty() {
        return not_applicable(
            setting,
            recommended,
            command,
            "no NIC queue interrupts in /proc/interrupts (names like eth0-TxRx-0, \
             virtio0-input.0, mlx5_comp0)"
                .to_string(),
        );
    }
    let mut union: Vec<u32> = queues
        .iter()
        .filter_map(|(_, _, affinity)| affinity.as_ref().ok())
        .flatten()
        .copied()
        .collect();
    union.sort_unstable();
    union.dedup();
    let host_cpus = cpu_numbers(host).len();
    let crowded = queues.len() >= 2 && union.len() == 1 && host_cpus > 1;
    let mut current: Vec<String> = queues
        .iter()
        .take(NIC_IRQS_LISTED_MAX)
        .map(|(irq, name, affinity)| {
            let cpus = match affinity {
                Ok(cpus) => parse::format_cpu_list(cpus),
                Err(_) => "?".to_string(),
            };
            format!("{irq} {name} -> {cpus}")
        })
        .collect();
    if queues.len() > NIC_IRQS_LISTED_MAX {
        current.push(format!("(+{} more)", queues.len() - NIC_IRQS_LISTED_MAX));
    }
    Item {
        setting: setting.to_string(),
        current: current.join(", "),
        recommended,
        status: if crowded {
            Status::Differs
        } else {
            Status::Info
        },
        apply_command: command,
        note: if crowded {
            "all NIC queues interrupt one CPU: that core does every core's packet work".to_string()
        } else {
            "either pin queue i to shard core i (RSS keeps a flow on one core) or keep NIC \
             IRQs on cores without shards"
                .to_string()
        },
        remedy: Remedy::Manual {
            why: "IRQ placement depends on the NIC's queue count and which cores run shards, \
                  and irqbalance would undo a one-off change; set it in the host's \
                  provisioning"
                .to_string(),
        },
    }
}

fn check_transparent_hugepages(host: &Host) -> Item {
    let setting = "transparent_hugepage/enabled";
    let command = "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled; persist with \
                   transparent_hugepage=madvise on the kernel command line"
        .to_string();
    let path = host.sys_path("kernel/mm/transparent_hugepage/enabled");
    match host.read_parsed(&path, parse::parse_selected_choice) {
        Ok(mode) => Item {
            setting: setting.to_string(),
            status: if mode == "madvise" || mode == "never" {
                Status::Ok
            } else {
                Status::Differs
            },
            current: mode,
            recommended: "madvise (or never)".to_string(),
            apply_command: command,
            note: "'always' makes khugepaged compact and collapse pages behind the shards' \
                   backs, a source of latency spikes and memory bloat"
                .to_string(),
            remedy: Remedy::Manual {
                why: "a sysfs switch that does not persist; set it on the kernel command \
                      line"
                    .to_string(),
            },
        },
        Err(error) => not_applicable(
            setting,
            "madvise (or never)".to_string(),
            command,
            error.to_string(),
        ),
    }
}
