//! The `file` sink: rotated NDJSON files, one `OpenedRecord` per line (the input of
//! `redrain tickets reconcile --opened`), fsynced before the position advances.
//!
//! Files are `opened-core<c>-<seq>.ndjson` in the sink directory; core `c` writes only its
//! own. A file is complete once a file of the same core with a higher sequence number
//! exists: the back office reads complete files, and the active one only up to its last
//! whole line. Rotation happens before a batch once the active file reached
//! `handoff_file_bytes_max` bytes or is older than `handoff_file_age_max_s`.
//!
//! Exactly once: the position names the active file and its acknowledged length. A batch is
//! written and fdatasync'd, then the position is made durable; if either fails (a full
//! disk, an I/O error) the file is cut back to its acknowledged length and the batch is
//! retried later. On start, bytes past the acknowledged length (a crash between the write
//! and the position) and files past the acknowledged one are removed before the consumer
//! resumes at the position, so a redelivered batch is written exactly once.
//!
//! Lucky packet shares have a sink of their own per core (its own position), writing
//! `lucky-core<c>-<seq>.ndjson` beside the event files, with the same rules.
//!
//! All file I/O here is blocking std I/O: the consumer runs it on the core's blocking
//! thread pool, never on the core's executor thread.

use super::position::Position;
use super::HandoffError;
use super::HandoffRecord;
use crate::config::Config;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Rotation bounds of the file sink.
#[derive(Debug, Clone, Copy)]
pub struct FileBounds {
    pub file_bytes_max: u64,
    pub file_age_max: Duration,
}

impl FileBounds {
    pub fn from_config(config: &Config) -> Self {
        Self {
            file_bytes_max: config.handoff_file_bytes_max,
            file_age_max: Duration::from_secs(config.handoff_file_age_max_s),
        }
    }
}

/// One core's NDJSON writer and its position.
pub struct FileSink {
    dir: PathBuf,
    /// File name prefix: [`EVENT_FILE_PREFIX`] or [`LUCKY_FILE_PREFIX`].
    prefix: &'static str,
    core: usize,
    position_path: PathBuf,
    position: Position,
    file: File,
    opened_at: Instant,
    bounds: FileBounds,
    /// Reused line buffer of one batch.
    buffer: Vec<u8>,
}

/// Files of event packets' opens: `opened-core<c>-<seq>.ndjson`.
pub const EVENT_FILE_PREFIX: &str = "opened";
/// Files of lucky packets' shares: `lucky-core<c>-<seq>.ndjson`.
pub const LUCKY_FILE_PREFIX: &str = "lucky";

/// Name of the file `seq` of `core`.
pub fn file_name(core: usize, seq: u64) -> String {
    stream_file_name(EVENT_FILE_PREFIX, core, seq)
}

/// Name of the file `seq` of `core` with `prefix`.
pub fn stream_file_name(prefix: &str, core: usize, seq: u64) -> String {
    format!("{prefix}-core{core}-{seq:010}.ndjson")
}

fn parse_file_name(prefix: &str, name: &str) -> Option<(usize, u64)> {
    let rest = name.strip_prefix(prefix)?.strip_prefix("-core")?.strip_suffix(".ndjson")?;
    let (core, seq) = rest.split_once('-')?;
    Some((core.parse().ok()?, seq.parse().ok()?))
}

/// The sink's files of `core` in sequence order.
pub fn core_files(dir: &Path, core: usize) -> Result<Vec<(u64, PathBuf)>, HandoffError> {
    stream_core_files(dir, EVENT_FILE_PREFIX, core)
}

/// The files of `core` with `prefix` in sequence order.
pub fn stream_core_files(dir: &Path, prefix: &str, core: usize) -> Result<Vec<(u64, PathBuf)>, HandoffError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(HandoffError::io(dir))? {
        let entry = entry.map_err(HandoffError::io(dir))?;
        if let Some((c, seq)) = entry.file_name().to_str().and_then(|n| parse_file_name(prefix, n)) {
            if c == core {
                files.push((seq, entry.path()));
            }
        }
    }
    files.sort();
    Ok(files)
}

fn sync_dir(dir: &Path) -> Result<(), HandoffError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(HandoffError::io(dir))
}

impl FileSink {
    /// Opens core `core`'s sink in `dir`: reads the position at `position_path` and cuts
    /// every unacknowledged byte off the sink's files.
    pub fn open(dir: &Path, core: usize, position_path: &Path, bounds: FileBounds) -> Result<FileSink, HandoffError> {
        Self::open_stream(dir, EVENT_FILE_PREFIX, core, position_path, bounds)
    }

    /// Like [`open`](Self::open), for the files named with `prefix`.
    pub fn open_stream(
        dir: &Path,
        prefix: &'static str,
        core: usize,
        position_path: &Path,
        bounds: FileBounds,
    ) -> Result<FileSink, HandoffError> {
        std::fs::create_dir_all(dir).map_err(HandoffError::io(dir))?;
        let position = match Position::read(position_path)? {
            Some(p) => Position { file_seq: p.file_seq.max(1), ..p },
            None => {
                // Files with no position are not ours to cut: refuse rather than destroy them.
                if !stream_core_files(dir, prefix, core)?.is_empty() {
                    return Err(HandoffError::FilesWithoutPosition { dir: dir.to_path_buf(), core });
                }
                // The first position is durable before the first file exists, so later a
                // missing position always means foreign files.
                let first = Position { lsn: 0, file_seq: 1, file_bytes: 0 };
                first.write(position_path)?;
                first
            }
        };
        for (seq, path) in stream_core_files(dir, prefix, core)? {
            if seq > position.file_seq {
                log::warn!("hand-off core {core}: removing {} (written, never acknowledged)", path.display());
                std::fs::remove_file(&path).map_err(HandoffError::io(&path))?;
            }
        }
        let path = dir.join(stream_file_name(prefix, core, position.file_seq));
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(HandoffError::io(&path))?;
        let actual = file.metadata().map_err(HandoffError::io(&path))?.len();
        if actual < position.file_bytes {
            return Err(HandoffError::FileShorterThanPosition { path, actual, acknowledged: position.file_bytes });
        }
        if actual > position.file_bytes {
            log::warn!(
                "hand-off core {core}: cutting {} unacknowledged bytes off {}",
                actual - position.file_bytes,
                path.display()
            );
            file.set_len(position.file_bytes).map_err(HandoffError::io(&path))?;
            file.sync_data().map_err(HandoffError::io(&path))?;
        }
        sync_dir(dir)?;
        Ok(FileSink {
            dir: dir.to_path_buf(),
            prefix,
            core,
            position_path: position_path.to_path_buf(),
            position,
            file,
            opened_at: Instant::now(),
            bounds,
            buffer: Vec::new(),
        })
    }

    /// The acknowledged position.
    pub fn position(&self) -> Position {
        self.position
    }

    fn active_path(&self) -> PathBuf {
        self.dir.join(stream_file_name(self.prefix, self.core, self.position.file_seq))
    }

    /// Starts the next file when the active one is full or old (and not empty).
    fn rotate_if_due(&mut self) -> Result<(), HandoffError> {
        let due = self.position.file_bytes >= self.bounds.file_bytes_max
            || (self.position.file_bytes > 0 && self.opened_at.elapsed() >= self.bounds.file_age_max);
        if !due {
            return Ok(());
        }
        let next = self.position.file_seq + 1;
        let path = self.dir.join(stream_file_name(self.prefix, self.core, next));
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(HandoffError::io(&path))?;
        // A leftover of a failed earlier attempt holds nothing acknowledged.
        file.set_len(0).map_err(HandoffError::io(&path))?;
        sync_dir(&self.dir)?;
        self.file = file;
        self.opened_at = Instant::now();
        self.position = Position { file_seq: next, file_bytes: 0, ..self.position };
        Ok(())
    }

    /// Writes `records` (the last of which has LSN `last_lsn`), makes them durable and then
    /// the position; returns the new position. On error nothing is acknowledged and the
    /// file holds no byte of the batch.
    pub fn deliver(&mut self, records: &[HandoffRecord], last_lsn: u64) -> Result<Position, HandoffError> {
        assert!(last_lsn > self.position.lsn, "positions only move forward");
        self.rotate_if_due()?;
        self.buffer.clear();
        for r in records {
            serde_json::to_writer(&mut self.buffer, &r.to_opened()).expect("plain struct serializes");
            self.buffer.push(b'\n');
        }
        let path = self.active_path();
        let acknowledged = self.position.file_bytes;
        let result = (|| {
            self.file.write_all(&self.buffer).map_err(HandoffError::io(&path))?;
            self.file.sync_data().map_err(HandoffError::io(&path))?;
            let next = Position {
                lsn: last_lsn,
                file_seq: self.position.file_seq,
                file_bytes: acknowledged + self.buffer.len() as u64,
            };
            next.write(&self.position_path)?;
            Ok(next)
        })();
        match result {
            Ok(next) => {
                self.position = next;
                Ok(next)
            }
            Err(e) => {
                // Leave no partial batch behind: the retry writes it again from here.
                if let Err(cut) = self.file.set_len(acknowledged) {
                    log::warn!("hand-off core {}: cutting {} back failed: {cut}", self.core, path.display());
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rain::records::OpenRecord;
    use crate::tickets::reconcile::OpenedRecord;

    fn record(packet_id: u64) -> HandoffRecord {
        HandoffRecord::Event(OpenRecord {
            packet_id,
            user_id: 7,
            amount_fen: 100 + packet_id as u32,
            key_id: 1,
            batch_id: 2,
            node: 0,
            core: 0,
            opened_at_ms: 1_000,
            flags: 0,
        })
    }

    fn bounds(file_bytes_max: u64) -> FileBounds {
        FileBounds { file_bytes_max, file_age_max: Duration::from_secs(3_600) }
    }

    fn lines(dir: &Path) -> Vec<OpenedRecord> {
        core_files(dir, 0)
            .unwrap()
            .iter()
            .flat_map(|(_, p)| {
                std::fs::read_to_string(p)
                    .unwrap()
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn delivered_batches_are_reconcile_lines_in_order_across_rotated_files() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, pos) = (tmp.path().join("sink"), tmp.path().join("core-0/handoff-file.pos"));
        let mut sink = FileSink::open(&dir, 0, &pos, bounds(200)).unwrap();
        for lsn in 1..=10u64 {
            sink.deliver(&[record(lsn)], lsn).unwrap();
        }
        let got: Vec<u64> = lines(&dir).iter().map(|r| r.packet_id).collect();
        assert_eq!(got, (1..=10).collect::<Vec<_>>());
        assert!(core_files(&dir, 0).unwrap().len() > 1, "200-byte files rotate");
        assert_eq!(lines(&dir)[0], record(1).to_opened());
        assert_eq!(Position::read(&pos).unwrap().unwrap().lsn, 10);
    }

    #[test]
    fn bytes_written_but_never_acknowledged_are_cut_off_at_start_so_a_redelivery_lands_once() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, pos) = (tmp.path().join("sink"), tmp.path().join("core-0/handoff-file.pos"));
        let mut sink = FileSink::open(&dir, 0, &pos, bounds(300)).unwrap();
        sink.deliver(&[record(1), record(2)], 2).unwrap();
        let acknowledged = sink.position();
        drop(sink);
        // A crash after writing batch 3..4 (and rotating) but before its position.
        let active = dir.join(file_name(0, acknowledged.file_seq));
        let mut f = OpenOptions::new().append(true).open(&active).unwrap();
        f.write_all(b"{\"packet_id\":3,\"amount_fen\":103,\"key_id\":1,\"user_id\":7,\"node\":0,\"core\":0,\"opened_at_ms\":1000}\n{\"packet_id\":4,\"am").unwrap();
        std::fs::write(dir.join(file_name(0, acknowledged.file_seq + 1)), b"{\"packet_id\":5}\n").unwrap();

        let mut sink = FileSink::open(&dir, 0, &pos, bounds(300)).unwrap();
        assert_eq!(sink.position(), acknowledged);
        sink.deliver(&[record(3), record(4)], 4).unwrap();
        let got: Vec<u64> = lines(&dir).iter().map(|r| r.packet_id).collect();
        assert_eq!(got, [1, 2, 3, 4]);
    }

    #[test]
    fn a_file_shorter_than_its_acknowledged_length_refuses_to_start() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, pos) = (tmp.path().join("sink"), tmp.path().join("core-0/handoff-file.pos"));
        let mut sink = FileSink::open(&dir, 0, &pos, bounds(1 << 20)).unwrap();
        sink.deliver(&[record(1)], 1).unwrap();
        let active = dir.join(file_name(0, sink.position().file_seq));
        drop(sink);
        std::fs::write(&active, b"{").unwrap();
        assert!(matches!(
            FileSink::open(&dir, 0, &pos, bounds(1 << 20)),
            Err(HandoffError::FileShorterThanPosition { acknowledged, .. }) if acknowledged > 1
        ));
    }

    #[test]
    fn files_of_the_core_without_a_position_are_refused_not_truncated() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("sink");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(file_name(0, 1)), b"{\"packet_id\":1}\n").unwrap();
        let pos = tmp.path().join("fresh-data/core-0/handoff-file.pos");
        assert!(matches!(
            FileSink::open(&dir, 0, &pos, bounds(1 << 20)),
            Err(HandoffError::FilesWithoutPosition { core: 0, .. })
        ));
        assert_eq!(std::fs::read(dir.join(file_name(0, 1))).unwrap(), b"{\"packet_id\":1}\n");
        // Another core's files are not in the way.
        assert!(
            FileSink::open(&dir, 1, &tmp.path().join("fresh-data/core-1/handoff-file.pos"), bounds(1 << 20)).is_ok()
        );
    }

    #[test]
    fn file_names_round_trip_and_foreign_names_are_ignored() {
        assert_eq!(parse_file_name(EVENT_FILE_PREFIX, &file_name(3, 17)), Some((3, 17)));
        assert_eq!(parse_file_name(EVENT_FILE_PREFIX, "opened-core3-x.ndjson"), None);
        assert_eq!(parse_file_name(EVENT_FILE_PREFIX, "notes.txt"), None);
        let lucky = stream_file_name(LUCKY_FILE_PREFIX, 1, 2);
        assert_eq!(lucky, "lucky-core1-0000000002.ndjson");
        assert_eq!(parse_file_name(LUCKY_FILE_PREFIX, &lucky), Some((1, 2)));
        assert_eq!(parse_file_name(EVENT_FILE_PREFIX, &lucky), None, "the streams' files never mix");
    }

    #[test]
    fn the_lucky_stream_has_its_own_files_beside_the_event_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("sink");
        let mut events = FileSink::open(&dir, 0, &tmp.path().join("e.pos"), bounds(1 << 20)).unwrap();
        events.deliver(&[record(1)], 1).unwrap();
        let lucky_pos = tmp.path().join("l.pos");
        let share = crate::handoff::lucky::LuckyShare {
            packet_id: 5,
            group: 6,
            user: 7,
            amount_fen: 8,
            opened_at_ms: 9,
            node: 0,
            core: 0,
        };
        let mut lucky = FileSink::open_stream(&dir, LUCKY_FILE_PREFIX, 0, &lucky_pos, bounds(1 << 20)).unwrap();
        lucky.deliver(&[HandoffRecord::Lucky(share)], 3).unwrap();
        assert_eq!(lines(&dir), vec![record(1).to_opened()], "event files hold event lines only");
        let text = std::fs::read_to_string(dir.join(stream_file_name(LUCKY_FILE_PREFIX, 0, 1))).unwrap();
        assert_eq!(serde_json::from_str::<OpenedRecord>(text.trim()).unwrap(), share.to_opened());
        // Reopening the event sink does not treat the lucky files as its own.
        drop(events);
        assert!(FileSink::open(&dir, 0, &tmp.path().join("e.pos"), bounds(1 << 20)).is_ok());
        assert_eq!(Position::read(&lucky_pos).unwrap().unwrap().lsn, 3);
    }
}
