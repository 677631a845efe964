//! `--processes N`: one run driven by N generator processes. The parent starts
//! this binary N times with the same flags plus its index and a shared load
//! start, waits for them, and merges their JSON summaries exactly
//! ([`crate::report::merge`]). Child i drives connections `j % N == i` of the
//! run on the run's own schedule, so the processes' sends interleave as one
//! process's would, and logs in users `--user-id-base + j` (no overlaps).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use thiserror::Error;

/// Time allowed for the children's ramps before the shared load start, on top
/// of the ramp at the connect rate.
pub const RAMP_ALLOWANCE: Duration = Duration::from_secs(2);
/// Handshakes per second assumed for the allowance when no connect rate is given.
const RAMP_RATE_ASSUMED_PER_S: f64 = 5_000.0;
/// Flags whose values are per process (each child writes its own JSON).
const OUTPUT_FLAGS: [&str; 3] = ["--json", "--hgrm", "--svg"];

#[derive(Debug, Error)]
pub enum ProcessesError {
    #[error("starting generator process {index}: {source}")]
    Spawn { index: u32, source: std::io::Error },
    #[error("generator process {index} exited with {status} (its output: {log})")]
    Failed { index: u32, status: String, log: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The arguments of child `index`: the parent's, without its output flags,
/// plus the child's index, the shared load start and the child's JSON path.
pub fn child_args(parent: &[OsString], index: u32, start_at_unix_ms: u64, json: &Path) -> Vec<OsString> {
    let mut out = Vec::with_capacity(parent.len() + 6);
    let mut skip_value = false;
    for a in parent {
        if skip_value {
            skip_value = false;
            continue;
        }
        let text = a.to_string_lossy();
        if OUTPUT_FLAGS.contains(&text.as_ref()) {
            skip_value = true;
            continue;
        }
        if OUTPUT_FLAGS.iter().any(|f| text.starts_with(&format!("{f}="))) {
            continue;
        }
        out.push(a.clone());
    }
    out.extend(
        ["--process-index".into(), index.to_string(), "--start-at-unix-ms".into(), start_at_unix_ms.to_string()]
            .map(OsString::from),
    );
    out.push("--json".into());
    out.push(json.as_os_str().to_owned());
    out
}

/// When the children start their load: after the slowest expected ramp.
pub fn start_at_unix_ms(connections_per_process: u32, connect_rate_per_s: Option<f64>) -> u64 {
    let rate = connect_rate_per_s.unwrap_or(RAMP_RATE_ASSUMED_PER_S).max(1.0);
    let ramp = Duration::from_secs_f64(f64::from(connections_per_process) / rate) + RAMP_ALLOWANCE;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (now + ramp).as_millis() as u64
}

/// Runs `processes` children of this binary (argv after the program name is
/// `parent_args`); returns the JSON paths they wrote, in index order.
pub fn run_children(
    parent_args: &[OsString],
    processes: u32,
    start_at_unix_ms: u64,
    dir: &Path,
) -> Result<Vec<PathBuf>, ProcessesError> {
    let exe = std::env::current_exe()?;
    let mut children = Vec::with_capacity(processes as usize);
    for index in 0..processes {
        let json = dir.join(format!("process-{index}.json"));
        let log_path = dir.join(format!("process-{index}.log"));
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(&exe)
            .args(child_args(parent_args, index, start_at_unix_ms, &json))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|source| ProcessesError::Spawn { index, source })?;
        children.push((index, child, json, log_path));
    }
    let mut paths = Vec::with_capacity(children.len());
    let mut failure = None;
    for (index, mut child, json, log_path) in children {
        let status = child.wait()?;
        // Exit code 1 = a run without sessions: its JSON still merges.
        if !json.is_file() && failure.is_none() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            failure = Some(ProcessesError::Failed { index, status: status.to_string(), log });
        }
        paths.push(json);
    }
    match failure {
        Some(f) => Err(f),
        None => Ok(paths),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_arguments_drop_the_outputs_and_add_index_start_and_json() {
        let parent: Vec<OsString> =
            ["ping", "--rate", "100", "--json", "a.json", "--svg=a.svg", "--processes", "2", "--hgrm", "a.hgrm"]
                .map(OsString::from)
                .to_vec();
        let child = child_args(&parent, 1, 1234, Path::new("/tmp/p1.json"));
        let child: Vec<String> = child.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            child,
            [
                "ping",
                "--rate",
                "100",
                "--processes",
                "2",
                "--process-index",
                "1",
                "--start-at-unix-ms",
                "1234",
                "--json",
                "/tmp/p1.json"
            ]
        );
    }
}
