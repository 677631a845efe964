//! Reading the rain's streams back, without opening them for writing: at start-up (before
//! any core owns its logs) to recover the opened packets and the issuance cursors, and
//! offline for `redrain rain export-opened`, which prints the open queue as the NDJSON that
//! `redrain tickets reconcile --opened` reads.
//!
//! Layout of a data directory: `core-<n>/cursors/` and `core-<n>/opens/`, one
//! `redrain-storage` log each. All cores' logs are read, so a node restarted with another
//! core count still knows every packet it opened (each packet goes to its user's new home
//! core) and every cursor (by file tag).

use super::records::{CursorRecord, OpenRecord, KIND_CURSOR_EXACT, KIND_CURSOR_RESERVED, KIND_OPENED};
use crate::tickets::format::FileTag;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Failure to read a stream.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: damaged at byte {offset} ({kind}) before the end of the log")]
    Damaged { path: PathBuf, offset: usize, kind: String },
    #[error("{path}: {source}")]
    Record { path: PathBuf, source: super::records::RecordError },
}

/// A core's directory of one stream.
pub fn stream_dir(data_dir: &Path, core: usize, stream: &str) -> PathBuf {
    data_dir.join(format!("core-{core}")).join(stream)
}

/// The `core-<n>` directories present, in core order.
pub fn core_dirs(data_dir: &Path) -> Result<Vec<(usize, PathBuf)>, ExportError> {
    let io = |source| ExportError::Io { path: data_dir.to_path_buf(), source };
    let mut cores = Vec::new();
    let entries = match std::fs::read_dir(data_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(cores),
        Err(e) => return Err(io(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        if let Some(n) = name.to_str().and_then(|n| n.strip_prefix("core-")).and_then(|n| n.parse::<usize>().ok()) {
            cores.push((n, entry.path()));
        }
    }
    cores.sort();
    Ok(cores)
}

/// Visits every whole record of the log in `dir` in LSN order. A torn last batch (a
/// crash mid-write, never acknowledged) ends the scan; damage before it is an error.
pub fn for_each_record(
    dir: &Path,
    mut visit: impl FnMut(u8, &[u8]) -> Result<(), ExportError>,
) -> Result<(), ExportError> {
    let io = |source| ExportError::Io { path: dir.to_path_buf(), source };
    let mut segments = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(io)?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.len() == 24 && name.ends_with(".seg") && name[..20].bytes().all(|b| b.is_ascii_digit()) {
                    segments.push(entry.path());
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
    }
    segments.sort();
    let last = segments.len().saturating_sub(1);
    for (i, path) in segments.iter().enumerate() {
        let bytes = std::fs::read(path).map_err(|source| ExportError::Io { path: path.clone(), source })?;
        let (batches, damage) = redrain_storage::record::split_batches(&bytes);
        for batch in &batches {
            for record in batch.records() {
                visit(record.kind, record.payload)?;
            }
        }
        if let Some((offset, kind)) = damage {
            // Zeros after the last batch (preallocated space) or a torn last batch.
            let rest_is_zero = bytes[offset..].iter().all(|b| *b == 0);
            if i != last && !rest_is_zero {
                return Err(ExportError::Damaged { path: path.clone(), offset, kind: format!("{kind:?}") });
            }
        }
    }
    Ok(())
}

/// Every open record of every core, in each core's order.
pub fn read_opens(data_dir: &Path, mut visit: impl FnMut(OpenRecord)) -> Result<u64, ExportError> {
    let mut count = 0;
    for (core, _) in core_dirs(data_dir)? {
        let dir = stream_dir(data_dir, core, "opens");
        for_each_record(&dir, |kind, payload| {
            if kind == KIND_OPENED {
                let record = OpenRecord::decode(kind, payload)
                    .map_err(|source| ExportError::Record { path: dir.clone(), source })?;
                count += 1;
                visit(record);
            }
            Ok(())
        })?;
    }
    Ok(count)
}

/// What the cursor streams say about one ticket file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CursorState {
    /// Highest reservation: a restart resumes here.
    pub reserved: u64,
    /// Last exact cursor written (0 if none).
    pub exact: u64,
}

/// Cursor state of every ticket file any core of this data directory issued from.
pub fn read_cursors(data_dir: &Path) -> Result<HashMap<FileTag, CursorState>, ExportError> {
    let mut cursors: HashMap<FileTag, CursorState> = HashMap::new();
    for (core, _) in core_dirs(data_dir)? {
        let dir = stream_dir(data_dir, core, "cursors");
        for_each_record(&dir, |kind, payload| {
            if kind == KIND_CURSOR_RESERVED || kind == KIND_CURSOR_EXACT {
                let r = CursorRecord::decode(kind, payload)
                    .map_err(|source| ExportError::Record { path: dir.clone(), source })?;
                let state = cursors.entry(r.tag).or_default();
                state.reserved = state.reserved.max(r.cursor);
                if kind == KIND_CURSOR_EXACT {
                    state.exact = state.exact.max(r.cursor);
                }
            }
            Ok(())
        })?;
    }
    Ok(cursors)
}

/// Writes the open queue of a data directory as NDJSON (one `OpenedRecord` per line).
pub fn export_opened(data_dir: &Path, out: &mut dyn std::io::Write) -> anyhow::Result<u64> {
    let mut failed = None;
    let count = read_opens(data_dir, |record| {
        if failed.is_none() {
            let line = serde_json::to_string(&record.to_opened()).expect("plain struct serializes");
            if let Err(e) = writeln!(out, "{line}") {
                failed = Some(e);
            }
        }
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    Ok(count)
}
