//! The durable position of one core's hand-off: the last open-queue LSN its sink
//! acknowledged (and, for the file sink, the active file and its acknowledged length).
//!
//! Written as a small JSON file: to `<name>.tmp`, fdatasync'd, renamed over the old one,
//! and the directory fsync'd, so a crash leaves either the old or the new position whole.
//! A missing file means nothing was handed off yet; an unreadable one is a typed error (the
//! node refuses to start rather than guess and lose or repeat records).

use super::HandoffError;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// What the sink has acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    /// Last open-queue LSN the sink holds (0: none).
    pub lsn: u64,
    /// File sink: sequence number of the active file (0 for other sinks).
    #[serde(default)]
    pub file_seq: u64,
    /// File sink: bytes of the active file that hold acknowledged records.
    #[serde(default)]
    pub file_bytes: u64,
}

/// Largest position file accepted (it is one short JSON line).
const POSITION_FILE_BYTES_MAX: u64 = 4096;

impl Position {
    /// Reads the position at `path`; `Ok(None)` when there is none yet.
    pub fn read(path: &Path) -> Result<Option<Position>, HandoffError> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(HandoffError::io(path)(e)),
        };
        if text.len() as u64 > POSITION_FILE_BYTES_MAX {
            return Err(HandoffError::DamagedPosition {
                path: path.to_path_buf(),
                reason: format!("{} bytes, more than {POSITION_FILE_BYTES_MAX}", text.len()),
            });
        }
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| HandoffError::DamagedPosition { path: path.to_path_buf(), reason: e.to_string() })
    }

    /// Makes this position durable at `path` (write, fdatasync, rename, fsync the directory).
    pub fn write(&self, path: &Path) -> Result<(), HandoffError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(HandoffError::io(dir))?;
        let tmp = path.with_extension("pos.tmp");
        let mut text = serde_json::to_vec(self).expect("plain struct serializes");
        text.push(b'\n');
        let mut file = std::fs::File::create(&tmp).map_err(HandoffError::io(&tmp))?;
        file.write_all(&text).map_err(HandoffError::io(&tmp))?;
        file.sync_data().map_err(HandoffError::io(&tmp))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(HandoffError::io(path))?;
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(HandoffError::io(dir))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_position_reads_back_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("core-0").join("handoff-file.pos");
        assert_eq!(Position::read(&path).unwrap(), None);
        let p = Position { lsn: 42, file_seq: 3, file_bytes: 1_234 };
        p.write(&path).unwrap();
        assert_eq!(Position::read(&path).unwrap(), Some(p));
        let later = Position { lsn: 43, ..p };
        later.write(&path).unwrap();
        assert_eq!(Position::read(&path).unwrap(), Some(later));
        assert!(!path.with_extension("pos.tmp").exists(), "the temporary file is renamed away");
    }

    #[test]
    fn a_damaged_position_is_a_typed_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handoff-file.pos");
        std::fs::write(&path, b"{\"lsn\": 12, \"file_seq\":").unwrap();
        assert!(matches!(Position::read(&path), Err(HandoffError::DamagedPosition { .. })));
        std::fs::write(&path, vec![b' '; 5_000]).unwrap();
        assert!(matches!(Position::read(&path), Err(HandoffError::DamagedPosition { .. })));
    }
}
