//! `tune check --apply`: writes the recommended sysctls through `/proc/sys` and reports,
//! item by item, what happened.
//!
//! Only sysctls are written. Resource limits, the CPU governor, IRQ affinity, CPU
//! isolation and THP are reported with what to do instead, because they either belong to
//! a process that is already running or are owned by boot configuration and other
//! daemons. Writes through `/proc/sys` last until reboot; `redrain.sysctl.conf` makes
//! them permanent.

use serde::Serialize;

use crate::check::{Remedy, Report};
use crate::host::Host;

/// What `--apply` did about one item that fell short.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ApplyResult {
    /// Written, and reading it back gave the written value.
    Written {
        /// The value written.
        value: String,
    },
    /// Written, but the kernel kept or clamped to another value.
    WrittenButDiffers {
        /// The value written.
        value: String,
        /// The value read back.
        read_back: String,
    },
    /// The write failed (not root, value rejected, sysctl absent).
    Failed {
        /// The value that was to be written.
        value: String,
        /// Why it failed.
        error: String,
    },
    /// Not something `--apply` changes; what to do instead.
    Manual {
        /// Instructions.
        why: String,
    },
}

/// One line of the apply report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApplyOutcome {
    /// The item's setting name.
    pub setting: String,
    /// What happened.
    #[serde(flatten)]
    pub result: ApplyResult,
}

fn normalized(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Applies every item of `report` that falls short and returns one outcome per such item,
/// in report order. Items that are ok, info or n/a are left alone.
pub fn apply_report(host: &Host, report: &Report) -> Vec<ApplyOutcome> {
    report
        .items
        .iter()
        .filter(|item| item.status.falls_short())
        .map(|item| {
            let result = match &item.remedy {
                Remedy::Sysctl { key, value } => apply_sysctl(host, key, value),
                Remedy::Manual { why } => ApplyResult::Manual { why: why.clone() },
            };
            ApplyOutcome { setting: item.setting.clone(), result }
        })
        .collect()
}

fn apply_sysctl(host: &Host, key: &str, value: &str) -> ApplyResult {
    if let Err(error) = host.write_sysctl(key, value) {
        return ApplyResult::Failed { value: value.to_string(), error: error.to_string() };
    }
    // The kernel may accept a write and clamp it (somaxconn on old kernels), so trust
    // only what reads back.
    match host.read_sysctl(key) {
        Ok(text) if normalized(&text) == normalized(value) => ApplyResult::Written { value: value.to_string() },
        Ok(text) => ApplyResult::WrittenButDiffers { value: value.to_string(), read_back: normalized(&text) },
        Err(error) => ApplyResult::Failed {
            value: value.to_string(),
            error: format!("written, but reading back failed: {error}"),
        },
    }
}
