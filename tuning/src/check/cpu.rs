//! CPU items: the frequency governor of every CPU and CPU isolation (`isolated`,
//! `nohz_full`), both from `/sys/devices/system/cpu`.

use std::collections::BTreeMap;

use super::{not_applicable, Item, Remedy, Status};
use crate::host::{Host, ReadError};
use crate::parse;

/// CPU directory names (`cpu0`, `cpu17`) under `/sys/devices/system/cpu`, by number.
pub(super) fn cpu_numbers(host: &Host) -> Vec<u32> {
    let mut cpus: Vec<u32> = host
        .list_dir(&host.sys_path("devices/system/cpu"))
        .iter()
        .filter_map(|name| name.strip_prefix("cpu")?.parse::<u32>().ok())
        .collect();
    cpus.sort_unstable();
    cpus
}

pub(super) fn check_governor(host: &Host) -> Item {
    let setting = "cpufreq scaling_governor";
    let command = "cpupower frequency-set -g performance".to_string();
    let mut by_governor: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for cpu in cpu_numbers(host) {
        let path = host.sys_path(&format!("devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor"));
        if let Ok(text) = host.read_text(&path) {
            by_governor.entry(text.trim().to_string()).or_default().push(cpu);
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
        status: if all_performance { Status::Ok } else { Status::Differs },
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

pub(super) fn check_isolation(host: &Host) -> Item {
    let setting = "CPU isolation";
    let recommended = "optional: isolcpus/nohz_full on shard cores".to_string();
    let command = "kernel command line: isolcpus=managed_irq,domain,<cpus> nohz_full=<cpus> \
                   (reboot)"
        .to_string();
    let isolated = host.read_parsed(&host.sys_path("devices/system/cpu/isolated"), parse::parse_cpu_list);
    let nohz_full = host.read_parsed(&host.sys_path("devices/system/cpu/nohz_full"), parse::parse_cpu_list);
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
        current: format!("isolated: {}; nohz_full: {}", describe(&isolated), describe(&nohz_full)),
        recommended,
        status: Status::Info,
        apply_command: command,
        note: "keeps other tasks and the scheduler tick off shard cores; worth it for \
               p99.9 on dedicated hosts, not required"
            .to_string(),
        remedy: Remedy::Manual {
            why: "isolation is a boot parameter; edit the kernel command line and reboot".to_string(),
        },
    }
}
