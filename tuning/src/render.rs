//! Text and JSON output of a check (and of an apply).
//!
//! The text form is a table for people plus numbered notes; the JSON form is one object
//! with the target, the items, the apply outcomes and the exit code, for scripts.

use std::io::Write;

use serde::Serialize;

use crate::apply::{ApplyOutcome, ApplyResult};
use crate::check::{Report, Status};
use crate::recommend;

/// Widest a table cell may get before it is cut; long values (IRQ lists) are shown in
/// full in the notes and in JSON.
const CELL_CHARS_MAX: usize = 44;

fn cell(text: &str) -> String {
    if text.chars().count() <= CELL_CHARS_MAX {
        text.to_string()
    } else {
        let mut cut: String = text.chars().take(CELL_CHARS_MAX - 3).collect();
        cut.push_str("...");
        cut
    }
}

/// Writes the human-readable report.
pub fn write_text(
    out: &mut dyn Write,
    report: &Report,
    applied: Option<&[ApplyOutcome]>,
    after_apply: Option<&Report>,
    exit_code: i32,
) -> std::io::Result<()> {
    let target = &report.target;
    writeln!(
        out,
        "redrain tune check: target {} sessions on {} cores, io_memory {} per executor",
        target.sessions,
        target.cores,
        recommend::format_bytes(target.io_memory_bytes_per_executor)
    )?;
    writeln!(out)?;
    let header = ["SETTING", "CURRENT", "RECOMMENDED", "STATUS"];
    let rows: Vec<[String; 4]> = report
        .items
        .iter()
        .map(|item| {
            [cell(&item.setting), cell(&item.current), cell(&item.recommended), item.status.label().to_string()]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, text) in widths.iter_mut().zip(row.iter()) {
            *width = (*width).max(text.chars().count());
        }
    }
    writeln!(
        out,
        "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  APPLY",
        header[0],
        header[1],
        header[2],
        header[3],
        w0 = widths[0],
        w1 = widths[1],
        w2 = widths[2],
        w3 = widths[3]
    )?;
    for (row, item) in rows.iter().zip(&report.items) {
        let command = if item.status == Status::Ok { "-" } else { item.apply_command.as_str() };
        writeln!(
            out,
            "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {command}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        )?;
    }
    writeln!(out)?;
    writeln!(out, "notes:")?;
    for item in &report.items {
        writeln!(out, "  {} [{}]: {}", item.setting, item.status.label(), item.note)?;
        if item.current.chars().count() > CELL_CHARS_MAX {
            writeln!(out, "    current: {}", item.current)?;
        }
    }
    if let Some(outcomes) = applied {
        writeln!(out)?;
        writeln!(out, "apply:")?;
        if outcomes.is_empty() {
            writeln!(out, "  nothing to do")?;
        }
        for outcome in outcomes {
            let line = match &outcome.result {
                ApplyResult::Written { value } => format!("written {value:?}"),
                ApplyResult::WrittenButDiffers { value, read_back } => {
                    format!("wrote {value:?} but the kernel reports {read_back:?}")
                }
                ApplyResult::Failed { value, error } => {
                    format!("FAILED to write {value:?}: {error}")
                }
                ApplyResult::Manual { why } => format!("not applied: {why}"),
            };
            writeln!(out, "  {}: {line}", outcome.setting)?;
        }
        writeln!(
            out,
            "  (sysctl writes last until reboot; install tuning/redrain.sysctl.conf in \
             /etc/sysctl.d/ to keep them)"
        )?;
    }
    writeln!(out)?;
    let (summary_report, when) = match after_apply {
        Some(after) => (after, "after apply, re-checked: "),
        None => (report, ""),
    };
    let counts =
        summary_report.counts().iter().map(|(label, count)| format!("{count} {label}")).collect::<Vec<_>>().join(", ");
    let verdict = if exit_code == 0 { "all settings meet the recommendation" } else { "some settings fall short" };
    writeln!(out, "summary: {when}{counts}; {verdict} (exit {exit_code})")?;
    Ok(())
}

#[derive(Serialize)]
struct JsonOutput<'a> {
    #[serde(flatten)]
    report: &'a Report,
    #[serde(skip_serializing_if = "Option::is_none")]
    applied: Option<&'a [ApplyOutcome]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    after_apply: Option<&'a [crate::check::Item]>,
    exit_code: i32,
}

/// Writes the report as one JSON object followed by a newline.
pub fn write_json(
    out: &mut dyn Write,
    report: &Report,
    applied: Option<&[ApplyOutcome]>,
    after_apply: Option<&Report>,
    exit_code: i32,
) -> std::io::Result<()> {
    let output =
        JsonOutput { report, applied, after_apply: after_apply.map(|after| after.items.as_slice()), exit_code };
    serde_json::to_writer_pretty(&mut *out, &output)?;
    writeln!(out)
}
