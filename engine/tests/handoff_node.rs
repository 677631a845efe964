//! The payment hand-off through real processes: a node under shake/open load drains its open
//! queue to NATS JetStream (nats-server killed and restarted, the node killed and restarted)
//! and to NDJSON files (the node killed and restarted, the sink's disk full), and every
//! acknowledged open lands in the sink exactly once; bad sink settings refuse the start.
//!
//! The NATS tests start their own `nats-server` (Debian package `nats-server`, installed by
//! `.ci/run`) with JetStream in a temporary directory on a free loopback port.

mod common;

use common::{reconcile_demo, redrain, Node, TIMEOUT};
use redrain_engine::tickets::reconcile::OpenedRecord;
use redrain_net::client::{BlockingClient, ClientError};
use redrain_net::message::{Request, Response, SEALED_TICKET_BYTES};
use std::collections::{HashMap, HashSet};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const RAIN_ENV: &[(&str, &str)] = &[("REDRAIN_DEMO_EVENT", "true")];
/// How long the hand-off may take to catch up after the load stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A nats-server with JetStream that this test started (killed by pid on drop).
struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
}

impl NatsServer {
    fn start() -> NatsServer {
        let mut server = NatsServer { child: None, port: free_port(), store: tempfile::tempdir().unwrap() };
        server.spawn();
        server
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start nats-server ({e}): install the Debian package nats-server (.ci/run does)")
            });
        self.child = Some(child);
        let until = Instant::now() + TIMEOUT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < until, "nats-server did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Shake/open load from a few users until stopped or the node goes away; collects the
/// opens the node acknowledged.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(u64, u32)>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn shake_open(c: &mut BlockingClient) -> Result<Option<(u64, u32)>, ClientError> {
    let sealed: [u8; SEALED_TICKET_BYTES] = match c.call(&Request::Shake)?.parse().expect("valid ShakeOk") {
        Response::ShakeOk { sealed: Some(s), .. } => *s,
        Response::ShakeOk { sealed: None, .. } => return Ok(None),
        other => panic!("unexpected {other:?}"),
    };
    match c.call(&Request::Open { sealed: &sealed })?.parse().expect("valid OpenOk") {
        Response::OpenOk { packet_id, amount_fen, .. } => Ok(Some((packet_id, amount_fen))),
        other => panic!("unexpected {other:?}"),
    }
}

impl Load {
    fn start(node: &Node, users: std::ops::Range<u64>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Mutex<Vec<(u64, u32)>>> = Arc::default();
        let threads = users
            .map(|user| {
                let mut c = node.login(user, 1);
                let (stop, acked) = (stop.clone(), acked.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match shake_open(&mut c) {
                            Ok(Some(open)) => acked.lock().unwrap().push(open),
                            Ok(None) => std::thread::sleep(Duration::from_millis(1)),
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        Load { stop, acked, threads }
    }

    fn acked_so_far(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    fn finish(self, into: &mut HashMap<u64, u32>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        for (p, a) in self.acked.lock().unwrap().iter() {
            assert!(into.insert(*p, *a).is_none(), "packet {p} acknowledged twice as a first open");
        }
    }
}

fn start_node(dir: tempfile::TempDir, extra: &[&str]) -> Node {
    let mut args = vec!["--cores", "2", "--shake-interval-ms", "0", "--handoff-retry-backoff-max-ms", "200"];
    args.extend_from_slice(extra);
    Node::start_env(dir, &args, RAIN_ENV)
}

fn kill9(node: &mut Node) -> tempfile::TempDir {
    unsafe { libc::kill(node.pid(), libc::SIGKILL) };
    let _ = node.child.wait();
    std::mem::replace(&mut node.dir, tempfile::tempdir().unwrap())
}

/// Waits until every core's sink acknowledged every durable open.
fn wait_drained(node: &Node) {
    // The streams' figures are copied once a second: let them catch up with the load's end.
    std::thread::sleep(Duration::from_millis(1_100));
    let until = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let m = node.metrics();
        let depth = common::metric_sum(&m, "redrain_handoff_queue_depth", &[]);
        let durable = common::metric_sum(&m, "redrain_stream_durable_lsn", &["stream=\"opens\""]);
        let acked = common::metric_sum(&m, "redrain_handoff_acknowledged_lsn", &[]);
        if depth == 0.0 && acked >= durable {
            return;
        }
        assert!(
            Instant::now() < until,
            "hand-off did not drain: depth {depth}; /handoff: {}",
            node.http_get("/handoff").1
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The node's own open queue, exported: what the sink must hold, exactly.
fn exported_opens(data: &Path) -> Vec<OpenedRecord> {
    let out = redrain(&["rain", "export-opened", "--data-dir", data.to_str().unwrap()]);
    assert!(out.status.success(), "export: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Checks a sink's records: each packet once, every acknowledged open with its amount,
/// exactly the node's open queue, and a clean reconciliation of the sink's NDJSON.
fn check_sink_holds_every_open_once(sink: &[OpenedRecord], acked: &HashMap<u64, u32>, data: &Path) {
    let mut seen: HashMap<u64, u32> = HashMap::new();
    for r in sink {
        assert!(seen.insert(r.packet_id, r.amount_fen).is_none(), "packet {} is in the sink twice", r.packet_id);
    }
    for (p, a) in acked {
        assert_eq!(seen.get(p), Some(a), "acknowledged open of packet {p} is not in the sink");
    }
    let queue: HashSet<u64> = exported_opens(data).iter().map(|r| r.packet_id).collect();
    let in_sink: HashSet<u64> = seen.keys().copied().collect();
    assert_eq!(in_sink, queue, "the sink holds exactly the node's open queue");
    assert!(acked.len() >= 20, "only {} acknowledged opens: the load did not run", acked.len());

    let ndjson = data.join("sink-opened.ndjson");
    let text: String = sink.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
    std::fs::write(&ndjson, text).unwrap();
    let report = reconcile_demo(data, &ndjson);
    assert_eq!(report["opened_records"].as_u64(), Some(sink.len() as u64), "{report}");
    assert_eq!(report["ok"], true, "{report}");
}

/// Every message of the stream, as the open records they carry.
fn stream_records(url: &str, stream: &str) -> Vec<OpenedRecord> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(stream).await.unwrap();
        let state = stream.info().await.unwrap().state.clone();
        let mut out = Vec::with_capacity(state.messages as usize);
        for seq in state.first_sequence..=state.last_sequence {
            let message = stream.get_raw_message(seq).await.unwrap();
            let id = message.headers.get(async_nats::header::NATS_MESSAGE_ID).map(|v| v.as_str().to_owned());
            let record: OpenedRecord = serde_json::from_slice(&message.payload).unwrap();
            assert_eq!(id, Some(record.packet_id.to_string()), "the message id is the packet id");
            out.push(record);
        }
        assert_eq!(out.len() as u64, state.messages);
        out
    })
}

#[test]
fn nats_sink_holds_every_acknowledged_open_exactly_once_across_server_and_node_kills() {
    let mut nats = NatsServer::start();
    let url = nats.url();
    let flags = [
        "--handoff-sink",
        "nats",
        "--handoff-nats-urls",
        url.as_str(),
        "--handoff-nats-create-stream",
        "true",
        "--handoff-nats-ack-timeout-ms",
        "500",
        "--handoff-batch-records-max",
        "256",
    ];
    let mut acked = HashMap::new();

    let mut node = start_node(tempfile::tempdir().unwrap(), &flags);
    let load = Load::start(&node, 100..104);
    std::thread::sleep(Duration::from_millis(700));
    // The back office goes away mid-run: users keep opening.
    nats.kill9();
    let before_outage = load.acked_so_far();
    std::thread::sleep(Duration::from_millis(1_500));
    assert!(load.acked_so_far() > before_outage, "opens stopped while the sink was down");
    let errors = node.wait_metric("redrain_handoff_sink_errors_total", &[], 1.0);
    let status = node.http_get("/handoff").1;
    assert!(status.contains("\"last_error\": \"publish"), "{status}");
    nats.spawn();
    std::thread::sleep(Duration::from_millis(700));
    // The node dies mid-run, and comes back on the same data dir.
    let dir = kill9(&mut node);
    load.finish(&mut acked);
    let mut node = start_node(dir, &flags);
    let load = Load::start(&node, 200..204);
    std::thread::sleep(Duration::from_millis(1_000));
    load.finish(&mut acked);
    wait_drained(&node);
    eprintln!("nats: {} acknowledged opens, {errors} sink errors during the outage", acked.len());

    let data = node.dir.path().join("data");
    node.stop();
    let records = stream_records(&url, "REDRAIN_OPENS");
    check_sink_holds_every_open_once(&records, &acked, &data);
}

/// The file sink's records of a sink directory, every core, in file order.
fn file_records(dir: &Path) -> Vec<OpenedRecord> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ndjson"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<OpenedRecord>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn file_sink_holds_every_acknowledged_open_exactly_once_across_node_kills_and_rotations() {
    let flags = ["--handoff-file-bytes-max", "8192", "--handoff-batch-records-max", "64"];
    let mut acked = HashMap::new();
    let mut dir = tempfile::tempdir().unwrap();
    for round in 0..3u64 {
        let mut node = start_node(dir, &flags);
        let load = Load::start(&node, 300 + round * 10..304 + round * 10);
        std::thread::sleep(Duration::from_millis(400 + 300 * round));
        dir = kill9(&mut node);
        load.finish(&mut acked);
    }
    let mut node = start_node(dir, &flags);
    wait_drained(&node);
    let data = node.dir.path().join("data");
    node.stop();
    let sink_dir = data.join("handoff");
    let files = std::fs::read_dir(&sink_dir).unwrap().count();
    assert!(files > 2, "8 KiB files rotate: {files} files");
    check_sink_holds_every_open_once(&file_records(&sink_dir), &acked, &data);
}

/// A small tmpfs this test mounted (unmounted on drop).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, bytes: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .output()
            .ok()?;
        out.status.success().then(|| Tmpfs(dir.to_path_buf())).or_else(|| {
            eprintln!("SKIPPED: cannot mount a tmpfs here ({})", String::from_utf8_lossy(&out.stderr).trim());
            None
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Fills the file system of `dir` with one file until it is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 64 * 1024];
    loop {
        if f.write_all(&block).is_err() || f.sync_all().is_err() {
            break;
        }
    }
    // Single bytes for the last partial block.
    while f.write_all(&[0]).is_ok() && f.sync_all().is_ok() {}
}

#[test]
fn a_full_sink_disk_stalls_the_hand_off_with_an_error_while_users_keep_opening_and_loses_nothing() {
    let root = tempfile::tempdir().unwrap();
    let sink_dir = root.path().join("sink");
    let Some(tmpfs) = Tmpfs::mount(&sink_dir, 4 << 20) else { return };
    let node_dir = tempfile::tempdir().unwrap();
    let mut node = start_node(node_dir, &["--handoff-dir", sink_dir.to_str().unwrap()]);
    let mut acked = HashMap::new();
    let load = Load::start(&node, 400..404);
    std::thread::sleep(Duration::from_millis(300));
    let filler = sink_dir.join("filler");
    fill(&filler);
    node.wait_metric("redrain_handoff_stalled", &[], 1.0);
    node.wait_metric("redrain_handoff_sink_errors_total", &[], 1.0);
    let stalled_at = load.acked_so_far();
    std::thread::sleep(Duration::from_millis(700));
    assert!(load.acked_so_far() > stalled_at, "users kept opening while the sink's disk was full");
    let depth = node.metric_sum("redrain_handoff_queue_depth", &[]);
    assert!(depth > 0.0, "opens wait in the queue while the disk is full");
    let status = node.http_get("/handoff").1;
    assert!(status.contains("No space left on device"), "{status}");
    let out = redrain(&["handoff", "status", "--admin", &node.admin.to_string()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("No space left on device"), "{out:?}");
    // Space returns: the consumer resumes by itself.
    std::fs::remove_file(&filler).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    load.finish(&mut acked);
    wait_drained(&node);
    assert_eq!(node.metric_sum("redrain_handoff_stalled", &[]), 0.0);
    let data = node.dir.path().join("data");
    node.stop();
    check_sink_holds_every_open_once(&file_records(&sink_dir), &acked, &data);
    drop(tmpfs);
}

/// Runs `redrain serve` on `data` expecting it to refuse to start; returns its stderr.
fn refused_start_in(data: &Path, extra: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_redrain"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--cores", "1", "--data-dir"])
        .arg(data)
        .args(extra)
        .envs(RAIN_ENV.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            panic!("the node started (or hung) with {extra:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "a refused start exits with 2: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn refused_start(extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    refused_start_in(&dir.path().join("data"), extra)
}

#[test]
fn bad_nats_settings_refuse_the_start_with_a_clear_message() {
    let nowhere = format!("nats://127.0.0.1:{}", free_port());
    let err = refused_start(&["--handoff-sink", "nats", "--handoff-nats-urls", &nowhere]);
    // Refused at once ("connecting to ...") or, when the client keeps retrying the
    // closed port, at the start-up deadline ("no answer from ... within ..."): both name it.
    assert!(
        err.contains(&format!("connecting to {nowhere}")) || err.contains(&format!("no answer from {nowhere}")),
        "{err}"
    );

    let nats = NatsServer::start();
    let url = nats.url();
    let err = refused_start(&["--handoff-sink", "nats", "--handoff-nats-urls", &url]);
    assert!(err.contains("stream REDRAIN_OPENS is missing"), "{err}");
    assert!(err.contains("handoff_nats_create_stream"), "{err}");

    let creds = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(creds.path(), "not a credentials file\n").unwrap();
    let err = refused_start(&[
        "--handoff-sink",
        "nats",
        "--handoff-nats-urls",
        &url,
        "--handoff-nats-credentials",
        creds.path().to_str().unwrap(),
    ]);
    assert!(err.contains("credentials file"), "{err}");

    let err = refused_start(&["--handoff-sink", "nats", "--handoff-nats-stream", "bad.name"]);
    assert!(err.contains("handoff_nats_stream"), "{err}");
}

#[test]
fn a_damaged_file_sink_position_refuses_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("core-0")).unwrap();
    std::fs::write(data.join("core-0/handoff-file.pos"), "{\"lsn\": 5, \"file_seq\"").unwrap();
    let err = refused_start_in(&data, &[]);
    assert!(err.contains("handoff-file.pos is damaged"), "{err}");
}
