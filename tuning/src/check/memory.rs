//! Memory-management items that are not plain numbers: transparent hugepages.

use super::{not_applicable, Item, Remedy, Status};
use crate::host::Host;
use crate::parse;

pub(super) fn check_transparent_hugepages(host: &Host) -> Item {
    let setting = "transparent_hugepage/enabled";
    let command = "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled; persist with \
                   transparent_hugepage=madvise on the kernel command line"
        .to_string();
    let path = host.sys_path("kernel/mm/transparent_hugepage/enabled");
    match host.read_parsed(&path, parse::parse_selected_choice) {
        Ok(mode) => Item {
            setting: setting.to_string(),
            status: if mode == "madvise" || mode == "never" { Status::Ok } else { Status::Differs },
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
        Err(error) => not_applicable(setting, "madvise (or never)".to_string(), command, error.to_string()),
    }
}
