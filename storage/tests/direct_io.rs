//! The log on direct I/O (O_DIRECT): every write is padded to a block
//! boundary, a torn write can only damage the batch being written, padding
//! never reaches readers or peers, and a log moves between the buffered and
//! the direct backend in either direction.
//!
//! The directories live under cargo's target tmp dir: /tmp may be a tmpfs,
//! which has no O_DIRECT.

mod common;

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use common::{payload, read_all, run_on_glommio, segment_files};
use redrain_storage::file_io::DIRECT_IO_ALIGNMENT;
use redrain_storage::record::{decode_batch, split_batches, BatchDecode, PAD_MAGIC};
use redrain_storage::{
    direct_io_supported, DamageKind, DamagePolicy, FaultSwitches, FaultyFileSystem, FileSystem,
    GlommioDirectFileSystem, GlommioFileSystem, Log, LogConfig, StorageError,
};

const LIMIT: Duration = Duration::from_secs(60);
const BLOCK: usize = DIRECT_IO_ALIGNMENT as usize;

fn direct() -> Rc<dyn FileSystem> {
    Rc::new(GlommioDirectFileSystem)
}

fn buffered() -> Rc<dyn FileSystem> {
    Rc::new(GlommioFileSystem)
}

/// A scratch directory on a file system with O_DIRECT (checked).
fn scratch() -> tempfile::TempDir {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().to_path_buf();
    assert!(
        run_on_glommio(LIMIT, move || async move { direct_io_supported(&path).await }),
        "{} does not support O_DIRECT: these tests need a disk-backed target dir",
        dir.path().display()
    );
    dir
}

/// Appends `batches` batches of 3 records (LSNs 1..=3*batches) with `fs`.
async fn append_batches(log: &Log, from: u64, batches: u64) {
    for b in 0..batches {
        let futures: Vec<_> = (0..3).map(|i| log.append(1, &payload(from + b * 3 + i))).collect();
        for (i, f) in futures.into_iter().enumerate() {
            assert_eq!(f.await.unwrap(), from + b * 3 + i as u64 + 1);
        }
    }
}

/// Offsets of the batches (not the padding) in a segment file.
fn batch_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        match decode_batch(&bytes[at..]) {
            BatchDecode::Complete(batch) => {
                offsets.push(at);
                at += batch.bytes.len();
            }
            BatchDecode::Padding(len) => at += len,
            other => panic!("bad bytes at {at}: {other:?}"),
        }
    }
    offsets
}

fn reopen(
    dir: &Path,
    fs: fn() -> Rc<dyn FileSystem>,
    policy: DamagePolicy,
) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
    let path = dir.to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        let log = Log::open_with(&path, LogConfig::default(), fs(), policy).await?;
        let records = read_all(&log).await;
        // The log takes appends right after recovery, at the next LSN.
        assert_eq!(log.append(1, b"after recovery").await?, records.len() as u64 + 1);
        Ok(records)
    })
}

#[test]
fn every_write_is_block_aligned_and_the_log_moves_between_backends() {
    let dir = scratch();
    let path = dir.path().to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        {
            let log = Log::open(&path, LogConfig::default(), direct()).await.unwrap();
            append_batches(&log, 0, 5).await;
            let stats = log.stats();
            assert_eq!(stats.batches_total, 5);
            assert_eq!(stats.bytes_total % DIRECT_IO_ALIGNMENT, 0, "writes are whole blocks");
            assert!(stats.pad_bytes_total > 0 && stats.pad_bytes_total < stats.bytes_total);
        }
        let segment = segment_files(&path).pop().unwrap();
        assert_eq!(std::fs::metadata(&segment).unwrap().len() % DIRECT_IO_ALIGNMENT, 0);
        // Buffered continues the direct log (no alignment needed)...
        {
            let log = Log::open(&path, LogConfig::default(), buffered()).await.unwrap();
            assert_eq!(read_all(&log).await.len(), 15);
            append_batches(&log, 15, 1).await;
        }
        assert_ne!(std::fs::metadata(&segment).unwrap().len() % DIRECT_IO_ALIGNMENT, 0, "buffered tail unaligned");
        // ...and direct continues the buffered tail after padding it.
        let log = Log::open(&path, LogConfig::default(), direct()).await.unwrap();
        assert_eq!(std::fs::metadata(&segment).unwrap().len() % DIRECT_IO_ALIGNMENT, 0, "tail padded at open");
        append_batches(&log, 18, 2).await;
        let records = read_all(&log).await;
        assert_eq!(records.len(), 24);
        for (i, (lsn, body)) in records.iter().enumerate() {
            assert_eq!((*lsn, body), (i as u64 + 1, &payload(i as u64)));
        }
    });
}

#[test]
fn reads_for_peers_carry_whole_batches_and_no_padding() {
    let dir = scratch();
    let path = dir.path().to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        let log = Log::open(&path, LogConfig::default(), direct()).await.unwrap();
        append_batches(&log, 0, 6).await;
        let bytes = log.read_batches(4, 1 << 20).await.unwrap();
        assert!(!bytes.windows(4).any(|w| w == PAD_MAGIC.to_le_bytes()), "padding shipped");
        let (batches, damage) = split_batches(&bytes);
        assert!(damage.is_none());
        // The batch holding LSN 4 and everything after it.
        assert_eq!(batches.first().map(|b| b.first_lsn), Some(4));
        assert_eq!(batches.last().map(|b| b.last_lsn()), Some(18));
        assert_eq!(batches.iter().map(|b| b.bytes.len()).sum::<usize>(), bytes.len());
        // A second log imports them as is (and pads them on its own disk).
        let copy = Log::open(&path.join("copy"), LogConfig::default(), direct()).await.unwrap();
        assert_eq!(copy.import(bytes).await.unwrap(), 18);
        assert_eq!(read_all(&copy).await.first().map(|r| r.0), Some(4));
    });
}

fn write_direct_batches(dir: &Path, batches: u64) -> (PathBuf, Vec<usize>) {
    let path = dir.to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        let log = Log::open(&path, LogConfig::default(), direct()).await.unwrap();
        append_batches(&log, 0, batches).await;
    });
    let segment = segment_files(dir).pop().unwrap();
    let offsets = batch_offsets(&std::fs::read(&segment).unwrap());
    assert_eq!(offsets.len(), batches as usize);
    assert!(offsets.iter().all(|o| o % BLOCK == 0), "every batch starts a block: {offsets:?}");
    (segment, offsets)
}

#[test]
fn one_direct_write_carries_several_batches_and_a_cut_inside_it_keeps_a_clean_prefix() {
    let dir = scratch();
    let path = dir.path().to_path_buf();
    let config = LogConfig { batch_records_max: 3, ..LogConfig::default() };
    run_on_glommio(LIMIT, move || async move {
        let log = Log::open(&path, config, direct()).await.unwrap();
        // 30 appends queued at once: ten batches of three in one commit.
        let futures: Vec<_> = (0..30u64).map(|i| log.append(1, &payload(i))).collect();
        for (i, f) in futures.into_iter().enumerate() {
            assert_eq!(f.await.unwrap(), i as u64 + 1);
        }
        let stats = log.stats();
        assert_eq!((stats.batches_total, stats.commits_total), (10, 1));
        assert_eq!(stats.bytes_total % DIRECT_IO_ALIGNMENT, 0, "the commit is whole blocks");
    });
    let segment = segment_files(dir.path()).pop().unwrap();
    let original = std::fs::read(&segment).unwrap();
    let offsets = batch_offsets(&original);
    assert_eq!(offsets.len(), 10);
    assert_eq!(offsets[0] % BLOCK, 0, "the commit starts a block");
    assert!(offsets.windows(2).any(|w| w[1] - w[0] < BLOCK), "batches inside a commit are packed, not padded");
    // A write cut short anywhere inside it (a crash) leaves whole batches
    // before the cut, and only those.
    for (k, &start) in offsets.iter().enumerate().skip(1) {
        for cut in [start, start + 1, start + 40] {
            std::fs::write(&segment, &original[..cut]).unwrap();
            let records = reopen(dir.path(), direct, DamagePolicy::Refuse).expect("a cut commit opens");
            assert_eq!(records.len(), 3 * k, "cut at byte {cut}");
            assert!(records
                .iter()
                .enumerate()
                .all(|(i, (lsn, body))| *lsn == i as u64 + 1 && *body == payload(i as u64)));
        }
    }
}

#[test]
fn torn_last_write_drops_only_its_batch_wherever_it_was_cut() {
    let dir = scratch();
    let (segment, offsets) = write_direct_batches(dir.path(), 4);
    let original = std::fs::read(&segment).unwrap();
    let last_start = *offsets.last().unwrap();
    let batch_end = match decode_batch(&original[last_start..]) {
        BatchDecode::Complete(batch) => last_start + batch.bytes.len(),
        other => panic!("{other:?}"),
    };
    // Every byte of the batch, the pad's header, then every 61st byte of the
    // pad's zeros (a cut there leaves a whole batch: it is kept).
    let cuts = (last_start..batch_end + 16).chain((batch_end + 16..original.len()).step_by(61));
    for cut in cuts {
        std::fs::write(&segment, &original[..cut]).unwrap();
        let records = reopen(dir.path(), direct, DamagePolicy::Refuse).expect("torn tail opens");
        let expected = if cut < batch_end { 9 } else { 12 };
        assert_eq!(records.len(), expected, "cut at byte {cut}");
        assert_eq!(records[8].1, payload(8));
        assert_eq!(std::fs::metadata(&segment).unwrap().len() % DIRECT_IO_ALIGNMENT, 0, "cut at {cut}");
    }
}

#[test]
fn damage_before_the_tail_is_reported_not_skipped() {
    let dir = scratch();
    let (segment, offsets) = write_direct_batches(dir.path(), 4);
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[offsets[1] + 30] ^= 0x01;
    // Damaged padding in the middle is damage too.
    let pad_of_third = offsets[3] - 200;
    bytes[pad_of_third] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();
    match reopen(dir.path(), direct, DamagePolicy::Refuse) {
        Err(StorageError::Corruption { segment: reported, offset, kind }) => {
            assert_eq!(reported, segment);
            assert_eq!(offset, offsets[1] as u64);
            assert!(matches!(kind, DamageKind::BatchChecksum | DamageKind::RecordChecksum));
        }
        other => panic!("middle damage not reported: {other:?}"),
    }
    assert_eq!(std::fs::read(&segment).unwrap(), bytes, "a refused open changes nothing");
    let records = reopen(dir.path(), direct, DamagePolicy::TruncateForPeerRepair).unwrap();
    assert_eq!(records.len(), 3);
}

#[test]
fn disk_full_and_io_errors_with_direct_io_leave_a_consistent_log() {
    let dir = scratch();
    let path = dir.path().to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        let switches = Rc::new(FaultSwitches::default());
        let faulty = Rc::new(FaultyFileSystem::new(direct(), switches.clone()));
        let log = Log::open(&path, LogConfig::default(), faulty).await.unwrap();
        assert_eq!(log.append(1, b"one").await.unwrap(), 1);
        switches.write_errno.set(Some(libc::ENOSPC));
        assert!(matches!(log.append(1, b"lost").await, Err(StorageError::DiskFull(_))));
        switches.heal();
        // A full device cuts a direct write at a block boundary: one block
        // of a two-block batch reaches the file.
        switches.short_write_bytes.set(Some(BLOCK + 100));
        let big = vec![7u8; BLOCK + 500];
        assert!(matches!(log.append(1, &big).await, Err(StorageError::DiskFull(_))));
        switches.sync_errno.set(Some(libc::EIO));
        assert!(matches!(log.append(1, b"unsynced").await, Err(StorageError::Io(_))));
        switches.heal();
        assert_eq!(log.append(1, b"two").await.unwrap(), 2);
        drop(log);
        let log = Log::open(&path, LogConfig::default(), direct()).await.unwrap();
        assert_eq!(read_all(&log).await, vec![(1, b"one".to_vec()), (2, b"two".to_vec())]);
    });
}
