//! Specification of keyed tables: put/get/delete survive restarts, start-up
//! uses the snapshot instead of replaying everything, compaction drops dead
//! entries while writes continue, and the full-scan check reports damage.

mod common;

use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use common::run_on_glommio;
use redrain_storage::{GlommioFileSystem, LogConfig, Table, TableConfig};

const LIMIT: Duration = Duration::from_secs(60);

fn config() -> TableConfig {
    TableConfig {
        log: LogConfig { segment_bytes_target: 8192, ..TableConfig::default().log },
        ..TableConfig::default()
    }
}

async fn open(dir: &Path) -> Table {
    Table::open(dir, config(), Rc::new(GlommioFileSystem)).await.expect("table opens")
}

#[test]
fn put_get_delete_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        {
            let table = open(&path).await;
            table.put(b"cursor/slot-1", b"100").await.unwrap();
            table.put(b"cursor/slot-2", b"7").await.unwrap();
            table.put(b"cursor/slot-1", b"200").await.unwrap();
            table.delete(b"cursor/slot-2").await.unwrap();
            assert_eq!(table.get(b"cursor/slot-1").as_deref(), Some(&b"200"[..]));
            assert_eq!(table.get(b"cursor/slot-2"), None);
            assert_eq!(table.len(), 1);
        }
        let table = open(&path).await;
        assert_eq!(table.get(b"cursor/slot-1").as_deref(), Some(&b"200"[..]));
        assert_eq!(table.get(b"cursor/slot-2"), None);
        assert_eq!(table.len(), 1);
    });
}

#[test]
fn compaction_drops_dead_entries_and_startup_uses_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        {
            let table = open(&path).await;
            // 20 keys overwritten 50 times each: 1000 records, 20 live.
            for round in 0..50u32 {
                for key in 0..20u32 {
                    let value = format!("value-{round}-{key}");
                    table.put(format!("k{key}").as_bytes(), value.as_bytes()).await.unwrap();
                }
            }
            table.delete(b"k0").await.unwrap();
            let segments_before = table.log().segment_count();
            assert!(segments_before > 2);
            let covered = table.compact().await.unwrap();
            assert_eq!(covered, 1001);
            assert!(table.log().segment_count() < segments_before, "compaction kept all {segments_before} segments");
            // Writes after the snapshot land in the log after it.
            table.put(b"k1", b"after-snapshot").await.unwrap();
        }
        let table = open(&path).await;
        assert_eq!(table.snapshot_lsn(), 1001);
        assert_eq!(table.len(), 19);
        assert_eq!(table.get(b"k0"), None);
        assert_eq!(table.get(b"k1").as_deref(), Some(&b"after-snapshot"[..]));
        assert_eq!(table.get(b"k19").as_deref(), Some(&b"value-49-19"[..]));
        // Start-up replayed only what follows the snapshot: the one put of k1
        // superseding the snapshot's value.
        assert_eq!(table.dead_records(), 1);
    });
}

#[test]
fn writes_continue_while_compaction_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        let table = Rc::new(open(&path).await);
        for i in 0..300u32 {
            table.put(format!("k{}", i % 10).as_bytes(), &i.to_le_bytes()).await.unwrap();
        }
        let writer = {
            let table = table.clone();
            glommio::spawn_local(async move {
                for i in 300..600u32 {
                    table.put(format!("k{}", i % 10).as_bytes(), &i.to_le_bytes()).await.unwrap();
                }
            })
        };
        let compactor = {
            let table = table.clone();
            glommio::spawn_local(async move { table.compact().await.unwrap() })
        };
        let covered = compactor.await;
        writer.await;
        assert!(covered >= 300);
        for key in 0..10u32 {
            let value = table.get(format!("k{key}").as_bytes()).unwrap();
            assert_eq!(u32::from_le_bytes(value.try_into().unwrap()) % 10, key);
            assert!(u32::from_le_bytes(table.get(format!("k{key}").as_bytes()).unwrap().try_into().unwrap()) >= 590);
        }
        drop(table);
        let table = open(&path).await;
        for key in 0..10u32 {
            let value = table.get(format!("k{key}").as_bytes()).unwrap();
            assert_eq!(u32::from_le_bytes(value.try_into().unwrap()), 590 + key);
        }
    });
}

#[test]
fn full_scan_check_reports_a_damaged_snapshot_and_open_refuses_partial_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let inner = path.clone();
    run_on_glommio(LIMIT, move || async move {
        let table = open(&inner).await;
        for i in 0..200u32 {
            table.put(format!("k{}", i % 30).as_bytes(), b"v").await.unwrap();
        }
        table.compact().await.unwrap();
        table.put(b"late", b"value").await.unwrap();
    });
    let clean = Table::check_dir(&path).unwrap();
    assert!(clean.is_clean(), "{clean}");
    assert_eq!(clean.snapshots_valid, 1);

    // Damage the snapshot: the check names the file.
    let snapshot = std::fs::read_dir(&path)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "hint"))
        .unwrap();
    let mut bytes = std::fs::read(&snapshot).unwrap();
    bytes[30] ^= 0xFF;
    std::fs::write(&snapshot, &bytes).unwrap();
    let report = Table::check_dir(&path).unwrap();
    assert!(!report.is_clean());
    assert_eq!(report.findings[0].file, snapshot);
    let reopened = path.clone();
    let outcome = run_on_glommio(LIMIT, move || async move {
        Table::open(&reopened, config(), Rc::new(GlommioFileSystem)).await.map(|t| t.len())
    });
    // The log before the snapshot was released, so without the snapshot the
    // table cannot be rebuilt: open says so instead of serving partial state.
    assert!(outcome.is_err(), "opened with a damaged snapshot and a released log");
}
