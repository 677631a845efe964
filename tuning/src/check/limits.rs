//! Resource limit items: RLIMIT_NOFILE and RLIMIT_MEMLOCK of the inspected process, read
//! from `/proc/<pid>/limits`, against the fd and io_uring buffer arithmetic of
//! [`crate::recommend`].

use super::{not_applicable, Item, Remedy, Status};
use crate::host::{Host, ReadError};
use crate::parse::{self, LimitValue, SoftHard};
use crate::recommend::{self, Target};

fn limit_item(setting: &str, current: LimitValue, needed: u64, apply_command: &str, note: String) -> Item {
    Item {
        setting: setting.to_string(),
        current: current.to_string(),
        recommended: format!(">= {needed}"),
        status: if current.at_least(needed) { Status::Ok } else { Status::Low },
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

pub(super) fn check_nofile(host: &Host, target: &Target) -> Vec<Item> {
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
            limit_item("RLIMIT_NOFILE soft", limits.soft, needed, &command, note.clone()),
            limit_item(
                "RLIMIT_NOFILE hard",
                limits.hard,
                needed,
                &command,
                "a process may raise its soft limit up to this without privilege".to_string(),
            ),
        ],
        Err(error) => vec![not_applicable("RLIMIT_NOFILE", format!(">= {needed}"), command, error.to_string())],
    }
}

pub(super) fn check_memlock(host: &Host, target: &Target) -> Vec<Item> {
    let needed = recommend::memlock_bytes_min(target);
    let command = format!("LimitMEMLOCK={needed} in redrain.service; ulimit -l {}", needed / 1024);
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
                    recommend::format_bytes(recommend::io_memory_bytes_fitting(bytes, target.cores)),
                ),
                _ => arithmetic.clone(),
            };
            vec![
                limit_item("RLIMIT_MEMLOCK soft", limits.soft, needed, &command, soft_note),
                limit_item(
                    "RLIMIT_MEMLOCK hard",
                    limits.hard,
                    needed,
                    &command,
                    "the kernel charges the buffers of all rings of the user together".to_string(),
                ),
            ]
        }
        Err(error) => vec![not_applicable("RLIMIT_MEMLOCK", format!(">= {needed}"), command, error.to_string())],
    }
}
