//! `redrain replica serve|export|fetch|check` on a real replica: a peer's
//! copy of a dead node's stream can be exported or served and fetched, so
//! another node can take over; the check finds damage.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::{payload, run_on_glommio};
use redrain_storage::replica_cli::{run, ReplicaArgs, ReplicaCommand};
use redrain_storage::{
    GlommioFileSystem, Log, LogConfig, ReplicaServer, ReplicaServerConfig, ReplicatedLog, ReplicationConfig, StreamId,
};

const RECORDS: u64 = 300;

/// Runs origin node 5 core 1 against two peers until both hold every record.
fn build_replicas(root: &Path) -> [PathBuf; 2] {
    let dirs = [root.join("peer-a"), root.join("peer-b")];
    let (a, b, origin_dir) = (dirs[0].clone(), dirs[1].clone(), root.join("origin"));
    run_on_glommio(Duration::from_secs(30), move || async move {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let fs = Rc::new(GlommioFileSystem);
        let pa = ReplicaServer::start(ReplicaServerConfig::new(any, a), fs.clone()).unwrap();
        let pb = ReplicaServer::start(ReplicaServerConfig::new(any, b), fs.clone()).unwrap();
        let stream = StreamId { origin_node: 5, core: 1 };
        let config = ReplicationConfig::new(stream, [pa.local_addr(), pb.local_addr()]);
        let (origin, _) = ReplicatedLog::open(&origin_dir, LogConfig::default(), config, fs).await.unwrap();
        // Several rounds, so the log has several batches.
        for round in 0..6 {
            let futures: Vec<_> =
                (round * RECORDS / 6..(round + 1) * RECORDS / 6).map(|i| origin.append(9, &payload(i))).collect();
            for f in futures {
                f.await.unwrap();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while origin.metrics().peers.iter().any(|p| p.acked_lsn < RECORDS) {
            assert!(Instant::now() < deadline, "peers did not catch up");
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
    });
    dirs
}

fn records_in(dir: &Path) -> Vec<(u64, Vec<u8>)> {
    let dir = dir.to_path_buf();
    run_on_glommio(Duration::from_secs(30), move || async move {
        let log = Log::open(&dir, LogConfig::default(), Rc::new(GlommioFileSystem)).await.unwrap();
        let mut out = Vec::new();
        log.for_each_record(1, |r| out.push((r.lsn, r.payload.to_vec()))).await.unwrap();
        out
    })
}

fn assert_all_records(records: &[(u64, Vec<u8>)]) {
    assert_eq!(records.len() as u64, RECORDS);
    for (i, (lsn, body)) in records.iter().enumerate() {
        assert_eq!(*lsn, i as u64 + 1);
        assert_eq!(body, &payload(i as u64));
    }
}

#[test]
fn export_writes_an_openable_log_and_ndjson_of_a_dead_nodes_replica() {
    let root = tempfile::tempdir().unwrap();
    let [peer_a, _] = build_replicas(root.path());
    let out_dir = root.path().join("exported");
    let ndjson = root.path().join("exported.ndjson");
    let code = run(ReplicaArgs {
        command: ReplicaCommand::Export {
            data_dir: peer_a,
            origin: 5,
            core: 1,
            out_dir: Some(out_dir.clone()),
            ndjson: Some(ndjson.clone()),
        },
    })
    .unwrap();
    assert_eq!(code, 0);
    assert_all_records(&records_in(&out_dir));
    let text = std::fs::read_to_string(&ndjson).unwrap();
    assert_eq!(text.lines().count() as u64, RECORDS);
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["lsn"], 1);
    assert_eq!(first["kind"], 9);

    // The check passes on the export, and names damage once a byte flips.
    let check = |dir: &Path| {
        run(ReplicaArgs { command: ReplicaCommand::Check { dir: dir.to_path_buf(), table: false } }).unwrap()
    };
    assert_eq!(check(&out_dir), 0);
    let segment = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 4;
    bytes[middle] ^= 0x20;
    std::fs::write(&segment, &bytes).unwrap();
    assert_eq!(check(&out_dir), 1);
}

#[test]
fn a_served_replica_can_be_fetched_by_a_takeover_node() {
    let root = tempfile::tempdir().unwrap();
    let [_, peer_b] = build_replicas(root.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_storage-replica"))
        .args(["serve", "--listen", &listen.to_string(), "--data-dir"])
        .arg(&peer_b)
        .args(["--exit-after-secs", "30"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start replica server");
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("serving replicas on"), "server said {line:?}");

    let into = root.path().join("takeover");
    let fetched =
        run(ReplicaArgs { command: ReplicaCommand::Fetch { peer: listen, origin: 5, core: 1, into: into.clone() } });
    server.kill().expect("stop the server we started");
    let _ = server.wait();
    assert_eq!(fetched.unwrap(), 0);
    assert_all_records(&records_in(&into));
}
