//! Replication on three in-process nodes over loopback, each with its own
//! data directory: peer death and catch-up, origin death, partitions, lost
//! disks, and the no-quorum policies. No acknowledged record may be lost or
//! duplicated.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::{payload, run_on_glommio};
use redrain_storage::replication::fetch::{fetch_from_peer, FetchLimits};
use redrain_storage::replication::PeerState;
use redrain_storage::{
    GlommioFileSystem, Log, LogConfig, NoQuorumPolicy, ReplicaServer, ReplicaServerConfig, ReplicatedLog,
    ReplicationConfig, StorageError, StreamId,
};

const LIMIT: Duration = Duration::from_secs(60);
const ORIGIN: StreamId = StreamId { origin_node: 0, core: 0 };

fn fs() -> Rc<GlommioFileSystem> {
    Rc::new(GlommioFileSystem)
}

/// One node's disk layout: a local log dir and a peer data dir.
struct Cluster {
    root: PathBuf,
    peer_addrs: [SocketAddr; 2],
}

impl Cluster {
    fn local_dir(&self) -> PathBuf {
        self.root.join("node0/log")
    }
    fn peer_dir(&self, peer: usize) -> PathBuf {
        self.root.join(format!("node{}/data", peer + 1))
    }
    fn start_peer(&self, peer: usize) -> ReplicaServer {
        let mut config = ReplicaServerConfig::new(self.peer_addrs[peer], self.peer_dir(peer));
        config.io_timeout = Duration::from_secs(5);
        ReplicaServer::start(config, fs()).expect("peer starts")
    }
    fn repl_config(&self, policy: NoQuorumPolicy) -> ReplicationConfig {
        let mut config = ReplicationConfig::new(ORIGIN, self.peer_addrs);
        config.no_quorum = policy;
        config.peer_io_timeout = Duration::from_millis(300);
        config.peer_heartbeat_interval = Duration::from_millis(50);
        config.commit_timeout = Duration::from_secs(3);
        config.reconnect_backoff_min = Duration::from_millis(10);
        config.reconnect_backoff_max = Duration::from_millis(100);
        config
    }
    async fn open_origin(&self, policy: NoQuorumPolicy) -> ReplicatedLog {
        ReplicatedLog::open(&self.local_dir(), LogConfig::default(), self.repl_config(policy), fs())
            .await
            .expect("origin opens")
            .0
    }
}

/// Starts both peers on ephemeral loopback ports and returns the layout.
fn cluster(root: &Path) -> (Cluster, [ReplicaServer; 2]) {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut first = Cluster { root: root.to_path_buf(), peer_addrs: [any, any] };
    let a = ReplicaServer::start(ReplicaServerConfig::new(any, first.peer_dir(0)), fs()).unwrap();
    let b = ReplicaServer::start(ReplicaServerConfig::new(any, first.peer_dir(1)), fs()).unwrap();
    first.peer_addrs = [a.local_addr(), b.local_addr()];
    (first, [a, b])
}

async fn append_many(log: &ReplicatedLog, from: u64, count: u64) -> Vec<u64> {
    // Keep many appends in flight so they group-commit and ship together.
    let futures: Vec<_> = (from..from + count).map(|i| log.append(1, &payload(i))).collect();
    let mut lsns = Vec::new();
    for f in futures {
        lsns.push(f.await.expect("append commits"));
    }
    lsns
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
}

async fn records_of(log: &Log) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    log.for_each_record(1, |r| out.push((r.lsn, r.payload.to_vec()))).await.unwrap();
    out
}

/// Everything `peer` serves for the origin's stream, fetched into a scratch log.
async fn fetch_all(peer: SocketAddr, scratch: &Path) -> Vec<(u64, Vec<u8>)> {
    try_fetch_all(peer, scratch).await.expect("fetch from peer")
}

async fn try_fetch_all(peer: SocketAddr, scratch: &Path) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
    let _ = std::fs::remove_dir_all(scratch);
    let log = Log::open(scratch, LogConfig::default(), fs()).await.unwrap();
    fetch_from_peer(peer, ORIGIN, &log, FetchLimits::default()).await?;
    Ok(records_of(&log).await)
}

/// Acknowledged LSNs are exactly 1..=n with the payload written for each.
fn assert_contains_acked(records: &[(u64, Vec<u8>)], acked: &[u64], who: &str) {
    for (i, (lsn, _)) in records.iter().enumerate() {
        assert_eq!(*lsn, i as u64 + 1, "{who}: LSNs not contiguous (duplicate or hole)");
    }
    for &lsn in acked {
        let (_, body) =
            records.get(lsn as usize - 1).unwrap_or_else(|| panic!("{who}: acknowledged record {lsn} missing"));
        assert_eq!(body, &payload(lsn - 1), "{who}: record {lsn} has wrong content");
    }
}

#[test]
fn killed_peer_restarts_and_catches_up_while_commits_continue() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        let (cluster, [peer_a, peer_b]) = cluster(&root);
        let origin = Rc::new(cluster.open_origin(NoQuorumPolicy::FailFast).await);
        const TOTAL: u64 = 3000;
        // A writer keeps appending in windows of 50 while the peer dies and
        // comes back underneath it.
        let writer = {
            let origin = origin.clone();
            glommio::spawn_local(async move {
                let mut acked = Vec::new();
                for window in 0..TOTAL / 50 {
                    let futures: Vec<_> =
                        (window * 50..(window + 1) * 50).map(|i| origin.append_rc(1, &payload(i))).collect();
                    for f in futures {
                        acked.push(f.await.expect("commits continue with one peer down"));
                    }
                }
                acked
            })
        };
        glommio::timer::sleep(Duration::from_millis(5)).await;
        drop(peer_a); // kill a peer during writes
        glommio::timer::sleep(Duration::from_millis(30)).await;
        let peer_a = cluster.start_peer(0);
        let acked = writer.await;
        assert_eq!(acked.len() as u64, TOTAL);
        wait_until("restarted peer to catch up", || origin.metrics().peers[0].acked_lsn == TOTAL).await;
        assert!(origin.metrics().peers[0].disconnects_total >= 1);
        let local = records_of(origin.log()).await;
        assert_contains_acked(&local, &acked, "origin");
        for (i, addr) in cluster.peer_addrs.iter().enumerate() {
            let replica = fetch_all(*addr, &root.join(format!("scratch{i}"))).await;
            assert_eq!(replica, local, "peer {i} replica differs from the origin");
        }
        drop((peer_a, peer_b));
    });
}

#[test]
fn dead_origin_committed_writes_are_readable_from_either_peer() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        let (cluster, peers) = cluster(&root);
        let origin = cluster.open_origin(NoQuorumPolicy::FailFast).await;
        let acked = append_many(&origin, 0, 800).await;
        wait_until("both peers to acknowledge", || origin.metrics().peers.iter().all(|p| p.acked_lsn == 800)).await;
        drop(origin); // the origin dies; its users move to another node
        for (i, addr) in cluster.peer_addrs.iter().enumerate() {
            let replica = fetch_all(*addr, &root.join(format!("takeover{i}"))).await;
            assert_contains_acked(&replica, &acked, &format!("peer {i}"));
            assert_eq!(replica.len(), 800);
        }
        drop(peers);
    });
}

#[test]
fn a_committed_group_is_on_the_peers_whole() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        let (cluster, peers) = cluster(&root);
        let origin = cluster.open_origin(NoQuorumPolicy::FailFast).await;
        assert_eq!(origin.append(1, &payload(0)).await.unwrap(), 1);
        let group: Vec<Vec<u8>> = (1..=500u64).map(payload).collect();
        let refs: Vec<&[u8]> = group.iter().map(|p| p.as_slice()).collect();
        // Committed means the last record of the group is on 2 of 3 copies.
        assert_eq!(origin.append_group(1, &refs).await.unwrap(), 2);
        wait_until("both peers to acknowledge", || origin.metrics().peers.iter().all(|p| p.acked_lsn == 501)).await;
        drop(origin);
        for (i, addr) in cluster.peer_addrs.iter().enumerate() {
            let replica = fetch_all(*addr, &root.join(format!("group{i}"))).await;
            let expected: Vec<(u64, Vec<u8>)> = (0..=500u64).map(|i| (i + 1, payload(i))).collect();
            assert_eq!(replica, expected, "peer {i}");
        }
        drop(peers);
    });
}

#[test]
fn partition_of_one_peer_keeps_commits_going_and_heals() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        let (cluster, peers) = cluster(&root);
        let origin = cluster.open_origin(NoQuorumPolicy::FailFast).await;
        let mut acked = append_many(&origin, 0, 100).await;

        peers[1].set_paused(true); // peer 1 stops reading
        acked.extend(append_many(&origin, 100, 300).await);
        wait_until("stalled peer to be declared down", || origin.metrics().peers[1].state != PeerState::Up).await;
        assert!(origin.metrics().peers[1].acked_lsn < 400);

        peers[1].set_paused(false); // heal
        wait_until("healed peer to catch up", || origin.metrics().peers[1].acked_lsn == 400).await;
        let local = records_of(origin.log()).await;
        assert_contains_acked(&local, &acked, "origin");
        let replica = fetch_all(cluster.peer_addrs[1], &root.join("scratch")).await;
        assert_eq!(replica, local);
        drop(peers);
    });
}

#[test]
fn both_peers_unreachable_fails_fast_with_a_typed_error_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        let (cluster, [a, b]) = cluster(&root);
        let origin = cluster.open_origin(NoQuorumPolicy::FailFast).await;
        let mut acked = append_many(&origin, 0, 10).await;
        drop((a, b));
        wait_until("both peers down", || origin.metrics().peers.iter().all(|p| p.state == PeerState::Down)).await;
        match origin.append(1, &payload(10)).await {
            Err(StorageError::NoQuorum { lsn }) => assert_eq!(lsn, 11),
            other => panic!("expected NoQuorum, got {other:?}"),
        }
        assert_eq!(origin.metrics().no_quorum_failures_total, 1);

        // The peers come back: the record that failed (durable locally
        // only) is shipped, and new appends commit again.
        let peers = [cluster.start_peer(0), cluster.start_peer(1)];
        let next = loop {
            match origin.append(1, &payload(11)).await {
                Ok(lsn) => break lsn,
                Err(StorageError::NoQuorum { .. }) => glommio::timer::sleep(Duration::from_millis(20)).await,
                Err(other) => panic!("unexpected error {other}"),
            }
        };
        acked.push(next);
        wait_until("peers to catch up", || origin.metrics().peers[0].acked_lsn >= next).await;
        let replica = fetch_all(cluster.peer_addrs[0], &root.join("scratch")).await;
        for &lsn in &acked {
            assert!(replica.iter().any(|(l, _)| *l == lsn), "acked {lsn} missing on peer");
        }
        drop(peers);
    });
}

#[test]
fn local_only_policy_commits_without_peers_and_counts_it_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        let (cluster, [a, b]) = cluster(&root);
        let origin = cluster.open_origin(NoQuorumPolicy::LocalOnly).await;
        append_many(&origin, 0, 5).await;
        drop((a, b));
        wait_until("both peers down", || origin.metrics().peers.iter().all(|p| p.state == PeerState::Down)).await;
        assert_eq!(origin.append(1, b"alone").await.unwrap(), 6);
        let metrics = origin.metrics();
        assert_eq!(metrics.local_only_commits_total, 1);
        let mut text = String::new();
        metrics.render_prometheus(&mut text);
        assert!(text.contains("redrain_storage_local_only_commits_total{origin_node=\"0\",core=\"0\"} 1"));
        assert!(text.contains("redrain_storage_peer_state{origin_node=\"0\",core=\"0\",peer=\"0\""));
        assert!(text.contains("redrain_storage_commit_latency_seconds{"));
    });
}

#[test]
fn node_that_lost_its_disk_restores_from_peers_before_serving() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        let (cluster, peers) = cluster(&root);
        let acked = {
            let origin = cluster.open_origin(NoQuorumPolicy::FailFast).await;
            append_many(&origin, 0, 700).await
        };
        std::fs::remove_dir_all(cluster.local_dir()).unwrap(); // the disk is gone
        let (origin, report) = ReplicatedLog::open(
            &cluster.local_dir(),
            LogConfig::default(),
            cluster.repl_config(NoQuorumPolicy::FailFast),
            fs(),
        )
        .await
        .expect("restores from peers");
        assert!(report.local_data_lost);
        assert_eq!(report.peers_reached, 2);
        assert_eq!(report.records_fetched, 700);
        let local = records_of(origin.log()).await;
        assert_contains_acked(&local, &acked, "restored origin");
        // It serves again, continuing the LSN sequence.
        assert_eq!(origin.append(1, &payload(700)).await.unwrap(), 701);
        drop(peers);
    });
}

#[test]
fn lost_disk_with_no_peer_reachable_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        let (cluster, peers) = cluster(&root);
        drop(peers);
        let opened = ReplicatedLog::open(
            &cluster.local_dir(),
            LogConfig::default(),
            cluster.repl_config(NoQuorumPolicy::FailFast),
            fs(),
        )
        .await;
        assert!(matches!(opened, Err(StorageError::NoQuorum { .. })));
    });
}

#[test]
fn corrupt_local_log_is_repaired_from_peers_when_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        let (cluster, peers) = cluster(&root);
        let acked = {
            let origin = cluster.open_origin(NoQuorumPolicy::FailFast).await;
            let mut acked = Vec::new();
            for chunk in 0..5 {
                acked.extend(append_many(&origin, chunk * 50, 50).await);
            }
            wait_until("both peers to acknowledge", || origin.metrics().peers.iter().all(|p| p.acked_lsn == 250)).await;
            acked
        };
        // Flip a bit in the middle of the local segment.
        let segment = std::fs::read_dir(cluster.local_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "seg"))
            .unwrap();
        let mut bytes = std::fs::read(&segment).unwrap();
        let middle = bytes.len() / 3;
        bytes[middle] ^= 0x04;
        std::fs::write(&segment, &bytes).unwrap();

        let refused = ReplicatedLog::open(
            &cluster.local_dir(),
            LogConfig::default(),
            cluster.repl_config(NoQuorumPolicy::FailFast),
            fs(),
        )
        .await;
        assert!(matches!(refused, Err(StorageError::Corruption { .. })));

        let mut config = cluster.repl_config(NoQuorumPolicy::FailFast);
        config.repair_damage_from_peers = true;
        let (origin, report) = ReplicatedLog::open(&cluster.local_dir(), LogConfig::default(), config, fs())
            .await
            .expect("repairs from peers");
        assert!(report.local_data_lost);
        assert!(report.records_fetched > 0);
        assert_contains_acked(&records_of(origin.log()).await, &acked, "repaired origin");
        drop(peers);
    });
}

#[test]
fn released_records_are_dropped_by_the_peers_too() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let small_segments = LogConfig { segment_bytes_target: 4096, retention_bytes_max: 0, ..LogConfig::default() };
        let start = |name: &str| {
            let mut config = ReplicaServerConfig::new(any, root.join(name));
            config.log = small_segments.clone();
            ReplicaServer::start(config, fs()).unwrap()
        };
        let peers = [start("peer-a"), start("peer-b")];
        let mut config = ReplicationConfig::new(ORIGIN, [peers[0].local_addr(), peers[1].local_addr()]);
        config.peer_heartbeat_interval = Duration::from_millis(20);
        let (origin, _) =
            ReplicatedLog::open(&root.join("origin"), small_segments.clone(), config, fs()).await.unwrap();
        for round in 0..10 {
            append_many(&origin, round * 50, 50).await;
        }
        wait_until("both peers to acknowledge", || origin.metrics().peers.iter().all(|p| p.acked_lsn == 500)).await;
        origin.set_retention_watermark(400);
        origin.log().enforce_retention().await.unwrap();
        assert!(origin.log().first_lsn() > 1, "origin kept released segments");
        for (i, peer) in peers.iter().enumerate() {
            let scratch = root.join(format!("scratch{i}"));
            let deadline = Instant::now() + Duration::from_secs(10);
            let replica = loop {
                // A fetch racing the peer's retention may see a gap (a typed
                // LsnGap error): retry until the release has been applied.
                let fetched = try_fetch_all(peer.local_addr(), &scratch).await;
                if let Ok(replica) = fetched {
                    if replica.first().is_some_and(|(lsn, _)| *lsn > 1) {
                        break replica;
                    }
                }
                assert!(Instant::now() < deadline, "peer {i} never dropped released records");
                glommio::timer::sleep(Duration::from_millis(20)).await;
            };
            let first = replica.first().unwrap().0;
            assert!(first > 1 && first <= 400, "peer {i} replica starts at {first}");
            assert_eq!(replica.last().unwrap().0, 500, "peer {i} lost needed records");
        }
    });
}

#[test]
fn frame_bounds_too_small_for_a_whole_batch_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run_on_glommio(LIMIT, move || async move {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        // A batch of up to 4 MiB must fit one frame, on either side.
        let mut origin = ReplicationConfig::new(ORIGIN, [any, any]);
        origin.frame_bytes_max = 4 << 20;
        let refused = ReplicatedLog::open(&root.join("origin"), LogConfig::default(), origin, fs()).await;
        assert!(matches!(refused, Err(StorageError::Config(_))), "origin: {:?}", refused.err());
        assert!(!root.join("origin").exists(), "nothing was created");
        let mut peer = ReplicaServerConfig::new(any, root.join("peer"));
        peer.frame_bytes_max = 1 << 20;
        assert!(matches!(ReplicaServer::start(peer, fs()), Err(StorageError::Config(_))));
        // The defaults are coherent.
        let peer = ReplicaServer::start(ReplicaServerConfig::new(any, root.join("peer")), fs()).expect("defaults");
        let origin = ReplicationConfig::new(ORIGIN, [peer.local_addr(), peer.local_addr()]);
        assert!(origin.frame_bytes_max >= LogConfig::default().batch_bytes_max + 64);
    });
}
