//! Specification of the local log: group commit, recovery, torn tails,
//! corruption reporting, disk-full behaviour and retention.

mod common;

use std::future::Future;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use common::{payload, read_all, run_on_glommio, segment_files};
use redrain_storage::record::{decode_batch, BatchDecode};
use redrain_storage::{
    DamageKind, DamagePolicy, FaultSwitches, FaultyFileSystem, GlommioFileSystem, Log, LogConfig, StorageError,
};

const LIMIT: Duration = Duration::from_secs(60);

fn fs() -> Rc<GlommioFileSystem> {
    Rc::new(GlommioFileSystem)
}

#[test]
fn appends_are_durable_in_order_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        {
            let log = Log::open(&path, LogConfig::default(), fs()).await.unwrap();
            for i in 1..=10u64 {
                assert_eq!(log.append(1, &payload(i)).await.unwrap(), i);
            }
            assert_eq!(log.durable_lsn(), 10);
        }
        let log = Log::open(&path, LogConfig::default(), fs()).await.unwrap();
        assert_eq!(log.durable_lsn(), 10);
        let records = read_all(&log).await;
        assert_eq!(records.len(), 10);
        for (i, (lsn, body)) in records.iter().enumerate() {
            assert_eq!(*lsn, i as u64 + 1);
            assert_eq!(body, &payload(i as u64 + 1));
        }
        assert_eq!(log.append(1, b"after reopen").await.unwrap(), 11);
    });
}

#[test]
fn concurrent_appends_share_one_write_and_fdatasync() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        let log = Log::open(&path, LogConfig::default(), fs()).await.unwrap();
        let futures: Vec<_> = (0..2000u64).map(|i| log.append(2, &payload(i))).collect();
        let mut lsns = Vec::new();
        for f in futures {
            lsns.push(f.await.unwrap());
        }
        // Submission order is LSN order.
        assert!(lsns.windows(2).all(|w| w[1] == w[0] + 1));
        let stats = log.stats();
        assert_eq!(stats.records_total, 2000);
        assert!(stats.batches_total <= 2, "2000 queued appends took {} batches", stats.batches_total);
    });
}

#[test]
fn batches_respect_the_configured_record_bound() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        let config = LogConfig { batch_records_max: 100, ..LogConfig::default() };
        let log = Log::open(&path, config, fs()).await.unwrap();
        let futures: Vec<_> = (0..1000u64).map(|i| log.append(2, &payload(i))).collect();
        for f in futures {
            f.await.unwrap();
        }
        assert_eq!(log.stats().batch_records_peak, 100);
        assert_eq!(log.stats().batches_total, 10);
    });
}

#[test]
fn one_commit_carries_several_queued_batches_up_to_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        let config = LogConfig { batch_records_max: 100, ..LogConfig::default() };
        {
            let log = Log::open(&path, config.clone(), fs()).await.unwrap();
            let futures: Vec<_> = (0..1000u64).map(|i| log.append(2, &payload(i))).collect();
            for (i, f) in futures.into_iter().enumerate() {
                assert_eq!(f.await.unwrap(), i as u64 + 1);
            }
            let stats = log.stats();
            assert_eq!(stats.batches_total, 10);
            // The first append wakes the writer, which may take the first
            // batch alone; the other nine are queued by then and go together.
            assert!(stats.commits_total <= 2, "10 queued batches took {} commits", stats.commits_total);
        }
        let log = Log::open(&path, config.clone(), fs()).await.unwrap();
        let records = read_all(&log).await;
        assert_eq!(records.len(), 1000);
        assert!(records.iter().enumerate().all(|(i, (lsn, body))| *lsn == i as u64 + 1 && *body == payload(i as u64)));
        // Every batch is still its own unit on disk.
        let mut batches = 0;
        for file in segment_files(&path) {
            let bytes = std::fs::read(&file).unwrap();
            let mut at = 0;
            loop {
                match decode_batch(&bytes[at..]) {
                    BatchDecode::Complete(batch) => {
                        batches += 1;
                        at += batch.bytes.len();
                    }
                    BatchDecode::Padding(len) => at += len,
                    BatchDecode::Incomplete if at == bytes.len() => break,
                    other => panic!("segment {} at {at}: {other:?}", file.display()),
                }
            }
        }
        assert_eq!(batches, 10);
    });
}

#[test]
fn a_commit_is_bounded_by_commit_bytes_max() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        // Batches of 10 records (394-754 bytes); at most two fit 1,600 bytes.
        let config = LogConfig {
            batch_records_max: 10,
            batch_bytes_max: 800,
            commit_bytes_max: 1600,
            record_payload_bytes_max: 256,
            ..LogConfig::default()
        };
        let log = Log::open(&path, config, fs()).await.unwrap();
        let futures: Vec<_> = (0..200u64).map(|i| log.append(2, &payload(i))).collect();
        for f in futures {
            f.await.unwrap();
        }
        let stats = log.stats();
        assert_eq!(stats.batches_total, 20);
        assert!(stats.commits_total >= 10, "20 batches in {} commits of at most 2", stats.commits_total);
        let bad = LogConfig { commit_bytes_max: 1 << 20, ..LogConfig::default() };
        assert!(matches!(bad.validate(), Err(StorageError::Config(_))), "a commit smaller than a batch is refused");
    });
}

#[test]
fn a_failed_fdatasync_fails_every_batch_of_its_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        let switches = Rc::new(FaultSwitches::default());
        let faulty = Rc::new(FaultyFileSystem::new(fs(), switches.clone()));
        let config = LogConfig { batch_records_max: 10, ..LogConfig::default() };
        let log = Log::open(&path, config.clone(), faulty).await.unwrap();
        assert_eq!(log.append(1, &payload(0)).await.unwrap(), 1);
        // 50 appends queued at once: five batches in one commit, whose
        // fdatasync fails.
        switches.syncs_before_failure.set(Some(0));
        let futures: Vec<_> = (1..=50u64).map(|i| log.append(1, &payload(i))).collect();
        for f in futures {
            assert!(matches!(f.await, Err(StorageError::Io(_))));
        }
        assert_eq!(log.stats().batch_failures_total, 1, "one commit failed");
        assert_eq!(log.durable_lsn(), 1);
        // The LSNs were handed back; the log goes on from 2.
        switches.syncs_before_failure.set(None);
        assert_eq!(log.append(1, &payload(51)).await.unwrap(), 2);
        drop(log);
        let log = Log::open(&path, config, fs()).await.unwrap();
        assert_eq!(read_all(&log).await, vec![(1, payload(0)), (2, payload(51))]);
    });
}

#[test]
fn pending_queue_is_bounded_with_a_typed_rejection() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        let config = LogConfig { appends_pending_max: 10, ..LogConfig::default() };
        let log = Log::open(&path, config, fs()).await.unwrap();
        let accepted: Vec<_> = (0..10u64).map(|i| log.append(1, &payload(i))).collect();
        let rejected = log.append(1, b"one too many").await;
        assert!(matches!(rejected, Err(StorageError::Overloaded { limit: 10, .. })));
        for f in accepted {
            f.await.unwrap();
        }
        let too_big = vec![0u8; LogConfig::default().record_payload_bytes_max + 1];
        assert!(matches!(log.append(1, &too_big).await, Err(StorageError::RecordTooLarge { .. })));
    });
}

#[test]
fn a_group_gets_consecutive_lsns_in_one_batch_and_becomes_durable_together() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        let config = LogConfig { batch_records_max: 8, ..LogConfig::default() };
        {
            let log = Log::open(&path, config.clone(), fs()).await.unwrap();
            // Queued together: a single append, a group of 5, a single append,
            // then a group of 6 that no longer fits the batch of 7 so far.
            let a = log.append(1, b"a");
            let g: Vec<Vec<u8>> = (0..5u64).map(payload).collect();
            let g_refs: Vec<&[u8]> = g.iter().map(|p| p.as_slice()).collect();
            let group = log.append_group(2, &g_refs);
            let b = log.append(1, b"b");
            let h: Vec<Vec<u8>> = (10..16u64).map(payload).collect();
            let h_refs: Vec<&[u8]> = h.iter().map(|p| p.as_slice()).collect();
            let second = log.append_group(3, &h_refs);
            assert_eq!(a.await.unwrap(), 1);
            assert_eq!(group.await.unwrap(), 2, "a group resolves to its first LSN");
            assert_eq!(b.await.unwrap(), 7);
            assert_eq!(second.await.unwrap(), 8);
            assert_eq!(log.stats().batches_total, 2, "the second group started a new batch instead of splitting");
            assert_eq!(log.durable_lsn(), 13);
        }
        let log = Log::open(&path, config, fs()).await.unwrap();
        let records = read_all(&log).await;
        let lsns: Vec<u64> = records.iter().map(|(lsn, _)| *lsn).collect();
        assert_eq!(lsns, (1..=13).collect::<Vec<_>>());
        assert_eq!(records[1].1, payload(0));
        assert_eq!(records[5].1, payload(4));
        assert_eq!(records[7].1, payload(10));
        assert_eq!(records[12].1, payload(15));
    });
}

#[test]
fn a_group_that_cannot_fit_one_batch_is_refused_and_queues_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        let config = LogConfig { batch_records_max: 4, appends_pending_max: 6, ..LogConfig::default() };
        let log = Log::open(&path, config.clone(), fs()).await.unwrap();
        let empty: [&[u8]; 0] = [];
        assert!(matches!(log.append_group(1, &empty).await, Err(StorageError::BadGroup { records: 0, .. })));
        let five = [&b"1"[..], b"2", b"3", b"4", b"5"];
        assert!(matches!(
            log.append_group(1, &five).await,
            Err(StorageError::BadGroup { records: 5, records_limit: 4, .. })
        ));
        // Four records of the largest payload each fit alone, but not in one batch.
        let big = vec![7u8; config.record_payload_bytes_max];
        assert!(matches!(
            log.append_group(1, &[&big, &big, &big, &big]).await,
            Err(StorageError::BadGroup { records: 4, .. })
        ));
        let too_large = vec![0u8; config.record_payload_bytes_max + 1];
        assert!(matches!(log.append_group(1, &[b"ok", &too_large]).await, Err(StorageError::RecordTooLarge { .. })));
        // The pending bound counts every record of a group.
        let first = log.append_group(1, &[b"a", b"b", b"c", b"d"]);
        assert!(matches!(log.append_group(1, &[b"e", b"f", b"g"]).await, Err(StorageError::Overloaded { .. })));
        assert_eq!(first.await.unwrap(), 1);
        assert_eq!(log.append(1, b"next").await.unwrap(), 5, "refused groups took no LSNs");
    });
}

#[test]
fn a_group_in_a_failed_batch_fails_whole_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        let switches = Rc::new(FaultSwitches::default());
        let faulty = Rc::new(FaultyFileSystem::new(fs(), switches.clone()));
        let log = Log::open(&path, LogConfig::default(), faulty).await.unwrap();
        assert_eq!(log.append(1, b"one").await.unwrap(), 1);
        switches.sync_errno.set(Some(libc::EIO));
        assert!(matches!(log.append_group(1, &[b"x", b"y", b"z"]).await, Err(StorageError::Io(_))));
        switches.heal();
        assert_eq!(log.append_group(1, &[b"two", b"three"]).await.unwrap(), 2);
        drop(log);
        let log = Log::open(&path, LogConfig::default(), fs()).await.unwrap();
        let records = read_all(&log).await;
        assert_eq!(records, vec![(1, b"one".to_vec()), (2, b"two".to_vec()), (3, b"three".to_vec())]);
    });
}

/// Writes `batches` batches of 3 records each and returns the byte offsets of
/// every batch in the (single) segment, plus the segment path.
fn write_batches(dir: &Path, batches: u64) -> (std::path::PathBuf, Vec<u64>) {
    let path = dir.to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        let log = Log::open(&path, LogConfig::default(), fs()).await.unwrap();
        for b in 0..batches {
            let futures: Vec<_> = (0..3).map(|i| log.append(1, &payload(b * 3 + i))).collect();
            for f in futures {
                f.await.unwrap();
            }
        }
    });
    let segment = segment_files(dir).pop().unwrap();
    let bytes = std::fs::read(&segment).unwrap();
    let mut offsets = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        offsets.push(at as u64);
        match decode_batch(&bytes[at..]) {
            BatchDecode::Complete(b) => at += b.bytes.len(),
            other => panic!("bad batch written: {other:?}"),
        }
    }
    (segment, offsets)
}

fn reopen_records(dir: &Path, policy: DamagePolicy) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
    let path = dir.to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        let log = Log::open_with(&path, LogConfig::default(), fs(), policy).await?;
        let records = read_all(&log).await;
        // The log must accept appends right after the cut, at the next LSN.
        let next = log.append(1, b"after recovery").await?;
        assert_eq!(next, records.len() as u64 + 1);
        Ok(records)
    })
}

#[test]
fn truncation_at_every_byte_of_the_last_batch_drops_exactly_that_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (segment, offsets) = write_batches(dir.path(), 4);
    let original = std::fs::read(&segment).unwrap();
    let last_start = *offsets.last().unwrap() as usize;
    for cut in last_start..original.len() {
        std::fs::write(&segment, &original[..cut]).unwrap();
        let records = reopen_records(dir.path(), DamagePolicy::Refuse).expect("torn tail opens");
        assert_eq!(records.len(), 9, "cut at byte {cut}");
        assert_eq!(records[8].1, payload(8));
    }
}

#[test]
fn bit_flip_in_the_last_batch_is_truncated_as_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (segment, offsets) = write_batches(dir.path(), 4);
    let mut bytes = std::fs::read(&segment).unwrap();
    let last_start = *offsets.last().unwrap() as usize;
    bytes[last_start + 40] ^= 0x10;
    std::fs::write(&segment, &bytes).unwrap();
    let records = reopen_records(dir.path(), DamagePolicy::Refuse).unwrap();
    assert_eq!(records.len(), 9);
}

#[test]
fn bit_flip_in_the_middle_is_reported_with_segment_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (segment, offsets) = write_batches(dir.path(), 4);
    let mut bytes = std::fs::read(&segment).unwrap();
    let victim = offsets[1] as usize;
    bytes[victim + 30] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();
    match reopen_records(dir.path(), DamagePolicy::Refuse) {
        Err(StorageError::Corruption { segment: reported, offset, kind }) => {
            assert_eq!(reported, segment);
            assert_eq!(offset, offsets[1]);
            assert!(matches!(kind, DamageKind::BatchChecksum | DamageKind::RecordChecksum));
        }
        other => panic!("middle damage not reported: {other:?}"),
    }
    // The refused open must not have changed the file.
    assert_eq!(std::fs::read(&segment).unwrap(), bytes);
    // Told to repair from a peer, the log cuts at the damage and keeps a copy.
    let records = reopen_records(dir.path(), DamagePolicy::TruncateForPeerRepair).unwrap();
    assert_eq!(records.len(), 3);
    assert!(segment.with_extension("seg.damaged").exists());
}

#[test]
fn damaged_header_length_in_the_middle_is_still_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (segment, offsets) = write_batches(dir.path(), 4);
    let mut bytes = std::fs::read(&segment).unwrap();
    let victim = offsets[2] as usize;
    bytes[victim + 5] ^= 0x80; // body length field
    std::fs::write(&segment, &bytes).unwrap();
    assert!(matches!(
        reopen_records(dir.path(), DamagePolicy::Refuse),
        Err(StorageError::Corruption { offset, .. }) if offset == offsets[2]
    ));
}

#[test]
fn disk_full_fails_the_append_keeps_the_log_consistent_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        let switches = Rc::new(FaultSwitches::default());
        let faulty = Rc::new(FaultyFileSystem::new(fs(), switches.clone()));
        let log = Log::open(&path, LogConfig::default(), faulty.clone()).await.unwrap();
        assert_eq!(log.append(1, b"one").await.unwrap(), 1);

        switches.write_errno.set(Some(libc::ENOSPC));
        assert!(matches!(log.append(1, b"lost").await, Err(StorageError::DiskFull(_))));
        switches.heal();
        switches.short_write_bytes.set(Some(10));
        assert!(matches!(log.append(1, b"half written").await, Err(StorageError::DiskFull(_))));
        switches.sync_errno.set(Some(libc::EIO));
        assert!(matches!(log.append(1, b"unsynced").await, Err(StorageError::Io(_))));
        switches.heal();
        // Space is back: the failed LSNs are reused, no hole, no garbage.
        assert_eq!(log.append(1, b"two").await.unwrap(), 2);
        drop(log);
        let log = Log::open(&path, LogConfig::default(), fs()).await.unwrap();
        let records = read_all(&log).await;
        assert_eq!(records, vec![(1, b"one".to_vec()), (2, b"two".to_vec())]);
    });
}

#[test]
fn segments_roll_and_retention_drops_only_what_the_owner_released() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        let config = LogConfig { segment_bytes_target: 4096, retention_bytes_max: 8192, ..LogConfig::default() };
        let log = Log::open(&path, config.clone(), fs()).await.unwrap();
        for i in 1..=400u64 {
            log.append(1, &payload(i)).await.unwrap();
        }
        let segments = log.segment_count();
        assert!(segments > 3, "only {segments} segments");
        // Without a watermark nothing is deleted, however large the log.
        assert_eq!(log.enforce_retention().await.unwrap(), 0);
        log.set_retention_watermark(200);
        let removed = log.enforce_retention().await.unwrap();
        assert!(removed > 0);
        assert!(log.first_lsn() <= 200, "needed records were deleted");
        assert_eq!(log.stats().segments_deleted_total, removed as u64);
        drop(log);
        let log = Log::open(&path, config, fs()).await.unwrap();
        let first = log.first_lsn();
        let records = read_all(&log).await;
        assert_eq!(records.first().unwrap().0, first);
        assert_eq!(records.last().unwrap().0, 400);
        assert!(matches!(log.read_batches(1, 1024).await, Err(StorageError::NotRetained { .. })));
    });
}

#[test]
fn import_keeps_lsns_and_ignores_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let source_dir = dir.path().join("source");
    let replica_dir = dir.path().join("replica");
    run_on_glommio(LIMIT, move || async move {
        let source = Log::open(&source_dir, LogConfig::default(), fs()).await.unwrap();
        for i in 1..=50u64 {
            source.append(3, &payload(i)).await.unwrap();
        }
        let replica = Log::open(&replica_dir, LogConfig::default(), fs()).await.unwrap();
        let first_half = source.read_batches(1, 1).await.unwrap();
        let all = source.read_batches(1, 1 << 20).await.unwrap();
        assert!(replica.import(first_half).await.unwrap() >= 1);
        // Resend everything, twice: duplicates are skipped.
        assert_eq!(replica.import(all.clone()).await.unwrap(), 50);
        assert_eq!(replica.import(all).await.unwrap(), 50);
        assert_eq!(read_all(&replica).await, read_all(&source).await);
        // A gap is refused.
        let mut gap = redrain_storage::record::BatchBuilder::new(60);
        gap.push(1, b"x");
        gap.finish();
        assert!(matches!(replica.import(gap.take()).await, Err(StorageError::LsnGap { expected: 51, got: 60 })));
    });
}

#[test]
fn appends_queued_behind_a_failed_batch_take_over_its_lsns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        let switches = Rc::new(FaultSwitches::default());
        let faulty = Rc::new(FaultyFileSystem::new(fs(), switches.clone()));
        let log = Log::open(&path, LogConfig::default(), faulty).await.unwrap();
        assert_eq!(log.append(1, b"zero").await.unwrap(), 1);
        switches.short_write_bytes.set(Some(5)); // the next write comes up short, once
        let doomed = log.append(1, b"doomed");
        // Let the writer pick up the doomed batch, then queue more behind it.
        futures_lite::future::yield_now().await;
        let behind: Vec<_> = (0..3u64).map(|i| log.append(1, &payload(i))).collect();
        assert!(matches!(doomed.await, Err(StorageError::DiskFull(_))));
        let mut lsns = Vec::new();
        for f in behind {
            lsns.push(f.await.expect("queued appends succeed"));
        }
        assert_eq!(lsns, vec![2, 3, 4], "LSN 2 is reused, no hole");
        drop(log);
        let log = Log::open(&path, LogConfig::default(), fs()).await.unwrap();
        let records = read_all(&log).await;
        assert_eq!(records.len(), 4);
        assert_eq!(records[1], (2, payload(0)));
        assert_eq!(records[3], (4, payload(2)));
    });
}

#[test]
fn dropping_the_log_answers_every_waiting_append() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        let log = Log::open(&path, LogConfig::default(), fs()).await.unwrap();
        let in_flight = log.append(1, b"in flight");
        futures_lite::future::yield_now().await; // the writer takes it
        let queued = log.append(1, b"queued");
        drop(log);
        // Neither future may hang: each is durable or told the log closed.
        assert!(matches!(in_flight.await, Ok(1) | Err(StorageError::Closed)));
        assert!(matches!(queued.await, Ok(_) | Err(StorageError::Closed)));
    });
}

#[test]
fn one_task_polling_a_hundred_thousand_appends_registers_its_waker_once_per_batch() {
    // glommio counts the waker clones of a task in 16 bits and panics past
    // 32,767: 100,000 appends polled by one task with one waker must not
    // clone it per append.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        let config = LogConfig { appends_pending_max: 200_000, ..LogConfig::default() };
        let log = Log::open(&path, config, fs()).await.unwrap();
        let mut futures: Vec<_> = (0..100_000u64).map(|i| Some(log.append(1, &payload(i)))).collect();
        let mut lsns = vec![0u64; futures.len()];
        std::future::poll_fn(|cx| {
            let mut pending = 0;
            for (i, slot) in futures.iter_mut().enumerate() {
                if let Some(fut) = slot {
                    match std::pin::Pin::new(fut).poll(cx) {
                        std::task::Poll::Ready(outcome) => {
                            lsns[i] = outcome.expect("append durable");
                            *slot = None;
                        }
                        std::task::Poll::Pending => pending += 1,
                    }
                }
            }
            if pending == 0 {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
        assert!(lsns.iter().enumerate().all(|(i, lsn)| *lsn == i as u64 + 1), "LSNs follow the append order");
        assert_eq!(log.durable_lsn(), 100_000);
    });
}

#[test]
fn a_failed_fdatasync_fails_its_batch_and_the_one_written_behind_it_and_nothing_else() {
    // Under load batch N+1 is written while batch N's fdatasync runs. When
    // that fdatasync fails, N is not durable, so N+1 (written after it) is
    // cut and failed too; everything queued behind takes over their LSNs.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        let switches = Rc::new(FaultSwitches::default());
        let faulty = Rc::new(FaultyFileSystem::new(fs(), switches.clone()));
        // One batch of 10 records (at most 754 bytes) per commit: two never
        // fit 768 bytes.
        let config = LogConfig {
            batch_records_max: 10,
            batch_bytes_max: 768,
            commit_bytes_max: 768,
            record_payload_bytes_max: 256,
            ..LogConfig::default()
        };
        let log = Log::open(&path, config.clone(), faulty).await.unwrap();
        switches.syncs_before_failure.set(Some(2));
        let futures: Vec<_> = (0..100u64).map(|i| log.append(1, &payload(i))).collect();
        let mut kept = Vec::new();
        let mut failed = Vec::new();
        for (i, f) in futures.into_iter().enumerate() {
            match f.await {
                Ok(lsn) => kept.push((lsn, payload(i as u64))),
                Err(StorageError::Io(_)) => failed.push(i),
                Err(other) => panic!("append {i}: unexpected {other:?}"),
            }
        }
        assert_eq!(failed, (20..40).collect::<Vec<_>>(), "batches 3 and 4 fail, no other");
        assert!(kept.iter().enumerate().all(|(i, (lsn, _))| *lsn == i as u64 + 1), "no LSN hole");
        assert_eq!(log.stats().batch_failures_total, 2);
        drop(log);
        let log = Log::open(&path, config, fs()).await.unwrap();
        assert_eq!(read_all(&log).await, kept, "exactly the acknowledged records, in order");
    });
}
