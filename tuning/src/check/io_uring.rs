//! io_uring availability: `kernel.io_uring_disabled` and `kernel.io_uring_group` (6.6+).

use super::{not_applicable, sysctl_command, Item, Remedy, Status};
use crate::host::{Host, ReadError};
use crate::parse;

pub(super) fn check_io_uring(host: &Host) -> Vec<Item> {
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
                0 => (Status::Ok, "io_uring is available to every process".to_string()),
                1 => (
                    Status::Differs,
                    "only CAP_SYS_ADMIN or members of kernel.io_uring_group may create \
                     rings: the redrain user must be in that group, or set 0"
                        .to_string(),
                ),
                _ => (Status::Differs, "io_uring is disabled for everyone: redrain cannot start".to_string()),
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
        Err(error) => items.push(not_applicable(disabled_key, "= 0".to_string(), command, error.to_string())),
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
                apply_command: format!("{}  # a gid the redrain user belongs to", sysctl_command(group_key, "<gid>")),
                note,
                remedy: Remedy::Manual { why: "informational".to_string() },
            });
        }
        // The group switch only exists alongside io_uring_disabled; listing its absence
        // separately would say the same thing twice.
        Err(ReadError::Missing { .. }) => {}
        Err(error) => items.push(not_applicable(group_key, "-".to_string(), String::new(), error.to_string())),
    }
    items
}
