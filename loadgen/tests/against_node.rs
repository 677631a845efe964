//! The load generator against a real `redrain` node (debug or release build
//! found next to this test binary; `cargo test --workspace` builds it).
//!
//! Each test starts its own node on free ports with its own data directory, runs
//! a short, bounded load and checks what the generator measured.

use redrain_loadgen::config::{LoadMode, RunConfig, Runtime};
use redrain_loadgen::node_process::{find_node_binary, NodeProcess};
use redrain_loadgen::report::{compare, hgrm};
use redrain_loadgen::scenario::chat::{self, ChatParams, ChatScenario};
use redrain_loadgen::scenario::connect::ConnectScenario;
use redrain_loadgen::scenario::ping::PingScenario;
use redrain_loadgen::scenario::shake::ShakeScenario;
use redrain_loadgen::tls::TlsClientSetup;
use redrain_loadgen::RunSummary;
use std::process::Command;
use std::time::Duration;

/// Tests run one at a time: each starts a node, and timing assertions should
/// not compete with each other for the machine's two cores.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn start_node() -> (tempfile::TempDir, NodeProcess) {
    let bin = find_node_binary().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(&bin, dir.path(), 1, None).unwrap_or_else(|e| panic!("{e}"));
    (dir, node)
}

fn ping_config(node: &NodeProcess, rate_per_s: f64, duration: Duration) -> RunConfig {
    let mut cfg = RunConfig::with_defaults(node.client, node.secret.clone());
    cfg.admin = Some(node.admin);
    cfg.connections = 10;
    cfg.threads = 1;
    cfg.duration = duration;
    cfg.warmup = Duration::from_millis(500);
    cfg.interval = RunConfig::interval_for(duration);
    cfg.mode = LoadMode::OpenLoop { rate_per_s };
    cfg.pipeline_depth = 4096;
    cfg.drain_timeout = Duration::from_secs(5);
    cfg
}

fn assert_clean(s: &RunSummary) {
    assert_eq!(s.sessions.established, u64::from(s.config.connections), "{:?}", s.sessions);
    assert_eq!(s.correctness_violations(), 0, "{:?}", s.requests);
    assert_eq!(s.requests.errors, 0, "{:?}", s.errors_by_code);
    assert_eq!(s.requests.unanswered, 0);
    assert_eq!(s.requests.matched, s.requests.sent, "every measured request answered once");
    assert!(s.scenario_counters.values().all(|v| *v == 0), "{:?}", s.scenario_counters);
}

/// Neither the absolute lag rule nor the thread CPU rule fired.
fn assert_no_gross_limit(s: &RunSummary) {
    let gross = ["send_lag_threshold", "thread_cpu"];
    assert!(
        !s.generator.rules_fired.iter().any(|r| gross.contains(&r.as_str())),
        "{:?}: {:?}",
        s.generator.rules_fired,
        s.generator.reasons
    );
    assert_eq!(s.generator.rules_fired.len(), s.generator.reasons.len());
}

#[test]
fn open_loop_keeps_its_schedule_at_a_moderate_rate() {
    let _serial = serial();
    let (_dir, node) = start_node();
    let cfg = ping_config(&node, 2000.0, Duration::from_secs(3));
    let out = redrain_loadgen::run(cfg, PingScenario::new(16)).unwrap();
    let s = &out.summary;
    assert_clean(s);
    let offered = 2000.0;
    assert!((s.sent_rate_per_s - offered).abs() / offered < 0.03, "sent {:.1}/s", s.sent_rate_per_s);
    assert!((s.throughput_per_s - offered).abs() / offered < 0.03, "answered {:.1}/s", s.throughput_per_s);
    // How close to its schedule the generator sends is a timing goal shown by
    // benchmark output (docs/loadgen.md), not asserted here; the run must not
    // fall 10 ms behind or saturate its thread.
    assert_no_gross_limit(s);
    // Both latencies are recorded for every answer; the service time (from
    // the actual send) never exceeds the latency from the intended send.
    assert_eq!(s.service_time.count, s.requests.ok);
    assert!(s.service_time.p50_ms <= s.request_latency.p50_ms && s.service_time.max_ms <= s.request_latency.max_ms);
    let n = s.node.as_ref().expect("node readings");
    let per = n.node_cpu_us_per_request.expect("the node exports its CPU seconds");
    assert!(per > 0.0 && per.is_finite(), "{per}");
    assert!(n.core_busy.keys().any(|k| k.starts_with("redrain-core-")), "{:?}", n.core_busy);
    // About 1,000 warm-up requests were sent and none of them is in the histogram.
    assert!((900..=1100).contains(&s.requests.warmup_sent), "warm-up {}", s.requests.warmup_sent);
    assert_eq!(out.stats.request_latency_us.len(), s.requests.ok);
}

#[test]
fn a_paused_node_shows_up_as_a_one_second_tail() {
    let _serial = serial();
    let (_dir, node) = start_node();
    let cfg = ping_config(&node, 2000.0, Duration::from_secs(4));
    let (pid, admin) = (node.pid(), node.admin);
    let pauser = std::thread::spawn(move || {
        // Once all 10 sessions are in (the load starts 20 ms after the ramp),
        // wait out the 0.5 s warm-up and 1 s more, then pause the node for 1 s:
        // well inside the 4 s window however long the ramp took.
        let ramp_deadline = std::time::Instant::now() + Duration::from_secs(20);
        while redrain_loadgen::node_metrics::scrape(admin)
            .ok()
            .and_then(|m| m.sum(redrain_loadgen::node_metrics::SESSIONS_ACTIVE))
            .is_none_or(|s| s < 10.0)
        {
            assert!(std::time::Instant::now() < ramp_deadline, "the 10 sessions never came up");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(1500));
        // SAFETY: signals to our own child process by pid.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
        std::thread::sleep(Duration::from_secs(1));
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
    });
    let out = redrain_loadgen::run(cfg, PingScenario::new(16)).unwrap();
    pauser.join().unwrap();
    let s = &out.summary;
    assert_clean(s);
    // Requests intended during the pause waited for it: latency from the
    // intended send time, so the tail shows the full second.
    assert!(s.latency.max_ms >= 900.0, "max {:.1} ms", s.latency.max_ms);
    assert!(s.latency.p999_ms >= 800.0, "p99.9 {:.1} ms", s.latency.p999_ms);
    assert!(s.latency.p50_ms < 100.0, "p50 {:.1} ms", s.latency.p50_ms);
    assert_no_gross_limit(s);
}

#[test]
fn closed_loop_keeps_k_requests_in_flight_and_matches_every_answer() {
    let _serial = serial();
    let (_dir, node) = start_node();
    let mut cfg = ping_config(&node, 1.0, Duration::from_secs(1));
    cfg.mode = LoadMode::ClosedLoop { in_flight_per_connection: 8 };
    let out = redrain_loadgen::run(cfg, PingScenario::new(64)).unwrap();
    let s = &out.summary;
    assert_clean(s);
    assert_eq!(s.config.in_flight_per_connection, Some(8));
    assert!(s.requests.ok > 1000, "ok {}", s.requests.ok);
}

#[test]
fn connect_ramps_holds_and_reports_memory_per_session() {
    let _serial = serial();
    let (_dir, node) = start_node();
    let mut cfg = RunConfig::with_defaults(node.client, node.secret.clone());
    cfg.admin = Some(node.admin);
    cfg.connections = 300;
    cfg.connect_rate_per_s = Some(1500.0);
    cfg.threads = 2;
    cfg.source_ips = 3;
    cfg.duration = Duration::from_secs(1);
    cfg.warmup = Duration::from_millis(200);
    cfg.interval = RunConfig::interval_for(cfg.duration);
    cfg.mode = LoadMode::Heartbeat;
    let out = redrain_loadgen::run(cfg, ConnectScenario).unwrap();
    let s = &out.summary;
    assert_eq!(s.sessions.established, 300, "{:?}", s.sessions);
    assert_eq!(s.sessions.lost, 0);
    assert_eq!(s.session_latency.count, 300);
    assert_eq!(s.headline, "sessions");
    let n = s.node.as_ref().expect("node readings");
    assert!(n.sessions_held.unwrap() - n.sessions_before.unwrap() >= 300.0, "{n:?}");
    let per = n.memory_per_session_bytes.expect("rss and sessions were read");
    assert!(per.is_finite(), "{per}");
}

#[test]
fn binary_writes_json_hgrm_svg_and_compare_reads_them() {
    let _serial = serial();
    let (dir, node) = start_node();
    let exe = env!("CARGO_BIN_EXE_redrain-loadgen");
    let secret = node.data_dir.join("auth.secret");
    let mut summaries = Vec::new();
    for (name, rate) in [("a", "500"), ("b", "1000")] {
        let base = dir.path().join(name);
        let status = Command::new(exe)
            .args(["ping", "--target", &node.client.to_string(), "--admin", &node.admin.to_string()])
            .args(["--connections", "4", "--threads", "1", "--rate", rate, "--duration", "1s", "--warmup", "200ms"])
            .arg("--secret-file")
            .arg(&secret)
            .arg("--json")
            .arg(base.with_extension("json"))
            .arg("--hgrm")
            .arg(base.with_extension("hgrm"))
            .arg("--svg")
            .arg(base.with_extension("svg"))
            .output()
            .unwrap();
        assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
        assert!(String::from_utf8_lossy(&status.stdout).contains("redrain-loadgen ping"));
        // JSON: parses back into the summary type, and its counters add up.
        let s = compare::load(&base.with_extension("json")).unwrap();
        let raw: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(base.with_extension("json")).unwrap()).unwrap();
        for field in
            ["schema", "scenario", "config", "requests", "throughput_per_s", "latency", "errors_by_code", "generator"]
        {
            assert!(raw.get(field).is_some(), "JSON lacks {field}");
        }
        for field in ["p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"] {
            assert!(raw["latency"].get(field).is_some(), "latency lacks {field}");
        }
        assert!(raw["generator"].get("limited").is_some());
        assert_clean(&s);
        let r = &s.requests;
        assert_eq!(r.matched, r.ok + r.errors + r.check_failures + r.malformed);
        assert_eq!(s.intervals.iter().map(|i| i.ok).sum::<u64>(), r.ok);
        // .hgrm: the standard columns and footer, consistent with the JSON.
        let h = hgrm::parse(&std::fs::read_to_string(base.with_extension("hgrm")).unwrap()).unwrap();
        assert_eq!(h.total_count, r.ok);
        assert_eq!(h.rows.last().unwrap().total_count, r.ok);
        assert!((h.max - s.latency.max_ms).abs() < 0.01, "{} vs {}", h.max, s.latency.max_ms);
        let svg = std::fs::read_to_string(base.with_extension("svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("<polyline"));
        summaries.push(base.with_extension("json"));
    }
    let out = Command::new(exe).arg("compare").args(&summaries).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text.lines().find(|l| l.starts_with("sent_rate_per_s")).expect("sent rate row");
    let ratio: f64 = line.split_whitespace().last().unwrap().parse().unwrap();
    assert!((ratio - 2.0).abs() < 0.1, "1000/s over 500/s: {line}");
}

#[test]
fn glommio_runtime_pings_open_and_closed_loop_and_matches_every_answer() {
    let _serial = serial();
    let (dir, node) = start_node();
    let exe = env!("CARGO_BIN_EXE_redrain-loadgen");
    let secret = node.data_dir.join("auth.secret");
    // Open loop through the binary, connections spread over two source addresses.
    let json = dir.path().join("glommio.json");
    let out = Command::new(exe)
        .args(["ping", "--runtime", "glommio", "--target", &node.client.to_string()])
        .args(["--admin", &node.admin.to_string(), "--source-ips", "2"])
        .args(["--connections", "8", "--threads", "1", "--rate", "1000", "--duration", "1s", "--warmup", "200ms"])
        .arg("--secret-file")
        .arg(&secret)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = compare::load(&json).unwrap();
    assert_eq!(s.config.runtime, "glommio");
    assert_eq!(s.config.source_ips, 2);
    assert_clean(&s);
    assert!((s.sent_rate_per_s - 1000.0).abs() / 1000.0 < 0.05, "sent {:.1}/s", s.sent_rate_per_s);
    assert!(s.requests.ok > 900, "ok {}", s.requests.ok);
    // Closed loop with pipelining through the library.
    let mut cfg = ping_config(&node, 1.0, Duration::from_secs(1));
    cfg.runtime = Runtime::Glommio;
    cfg.mode = LoadMode::ClosedLoop { in_flight_per_connection: 8 };
    let out = redrain_loadgen::run(cfg, PingScenario::new(64)).unwrap();
    let s = &out.summary;
    assert_clean(s);
    assert_eq!(s.config.runtime, "glommio");
    assert!(s.requests.ok > 1000, "ok {}", s.requests.ok);
}

#[test]
fn two_processes_drive_one_run_and_merge_into_one_summary() {
    let _serial = serial();
    let (dir, node) = start_node();
    let exe = env!("CARGO_BIN_EXE_redrain-loadgen");
    let secret = node.data_dir.join("auth.secret");
    let json = dir.path().join("merged.json");
    let hgrm_path = dir.path().join("merged.hgrm");
    let out = Command::new(exe)
        .args(["ping", "--processes", "2", "--target", &node.client.to_string()])
        .args(["--admin", &node.admin.to_string(), "--connections", "6", "--rate", "1200"])
        .args(["--duration", "1s", "--warmup", "200ms"])
        .arg("--secret-file")
        .arg(&secret)
        .arg("--json")
        .arg(&json)
        .arg("--hgrm")
        .arg(&hgrm_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = compare::load(&json).unwrap();
    assert_eq!(s.config.connections, 6, "3 + 3 connections");
    assert_eq!(s.config.threads, 2, "one thread in each process");
    assert_eq!(s.config.offered_rate_per_s, Some(1200.0));
    assert_clean(&s);
    assert!((s.sent_rate_per_s - 1200.0).abs() / 1200.0 < 0.05, "sent {:.1}/s", s.sent_rate_per_s);
    let h = s.histograms.as_ref().expect("merged histograms");
    assert_eq!(h.request_latency_us.iter().map(|(_, c)| c).sum::<u64>(), s.requests.ok);
    let file = hgrm::parse(&std::fs::read_to_string(&hgrm_path).unwrap()).unwrap();
    assert_eq!(file.total_count, s.requests.ok);
    // The node saw one user per connection: 6 distinct sessions.
    let n = s.node.as_ref().expect("node readings");
    assert_eq!(n.sessions_held, Some(6.0), "{n:?}");
}

fn shake_node(extra: &[&str]) -> (tempfile::TempDir, NodeProcess) {
    let bin = find_node_binary().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start_with_args(&bin, dir.path(), 1, None, extra).unwrap_or_else(|e| panic!("{e}"));
    (dir, node)
}

fn shake_config(node: &NodeProcess, connections: u32) -> RunConfig {
    let mut cfg = RunConfig::with_defaults(node.client, node.secret.clone());
    cfg.admin = Some(node.admin);
    cfg.connections = connections;
    cfg.threads = 1;
    cfg.duration = Duration::from_secs(2);
    cfg.warmup = Duration::from_millis(300);
    cfg.interval = RunConfig::interval_for(cfg.duration);
    cfg.mode = LoadMode::ClosedLoop { in_flight_per_connection: 1 };
    cfg.drain_timeout = Duration::from_secs(5);
    cfg
}

#[test]
fn shake_opens_every_win_and_checks_every_answer() {
    let _serial = serial();
    let (_dir, node) = shake_node(&["--shake-interval-ms", "0"]);
    let out = redrain_loadgen::run(shake_config(&node, 20), ShakeScenario::new(true, true)).unwrap();
    let s = &out.summary;
    let c = |k: &str| s.scenario_counters[k];
    assert_eq!(s.sessions.established, 20);
    assert!(c("won") > 0 && c("lost") > 0, "{:?}", s.scenario_counters);
    // Counters cover the window: a win of its last moment is opened after it, a win of the
    // warm-up inside it (at most one per connection either way, one request in flight).
    assert!(c("opened") + 20 >= c("won") && c("opened") <= c("won") + 20, "{:?}", s.scenario_counters);
    assert!(c("amount_fen_opened") >= c("opened"), "every opened packet has an amount");
    for k in ["duplicate_packets", "open_errors", "wrong_response_type", "wrong_packet", "too_fast", "interval_waits"] {
        assert_eq!(c(k), 0, "{k}: {:?}", s.scenario_counters);
    }
    assert_eq!(s.requests.errors, 0, "{:?}", s.errors_by_code);
}

#[test]
fn shake_obeys_the_node_interval_unless_told_to_ignore_it() {
    let _serial = serial();
    let (_dir, node) = shake_node(&["--shake-interval-ms", "200"]);
    let out = redrain_loadgen::run(shake_config(&node, 4), ShakeScenario::new(true, true)).unwrap();
    let s = &out.summary;
    assert_eq!(s.scenario_counters["too_fast"], 0, "{:?}", s.scenario_counters);
    assert!(s.scenario_counters["interval_waits"] > 0, "{:?}", s.scenario_counters);
    let out = redrain_loadgen::run(shake_config(&node, 4), ShakeScenario::new(false, true)).unwrap();
    assert!(out.summary.scenario_counters["too_fast"] > 0, "{:?}", out.summary.scenario_counters);
}

/// A node with a TLS port (2 cores, so sessions move to their home core with
/// their TLS state) under a fresh self-signed "localhost" certificate; returns
/// the TLS address and the certificate file (the clients' CA).
fn tls_node(dir: &tempfile::TempDir) -> (NodeProcess, std::net::SocketAddr, std::path::PathBuf) {
    let bin = find_node_binary().unwrap_or_else(|e| panic!("{e}"));
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let tls = redrain_loadgen::node_process::free_port().unwrap();
    let tls_arg = tls.to_string();
    let extra = ["--tls-listen", &tls_arg, "--tls-cert", cert_path.to_str().unwrap(), "--tls-key"];
    let node =
        NodeProcess::start_with_args(&bin, dir.path(), 2, None, &[&extra[..], &[key_path.to_str().unwrap()]].concat())
            .unwrap_or_else(|e| panic!("{e}"));
    (node, tls, cert_path)
}

#[test]
fn ping_and_shake_speak_tls_on_both_runtimes_and_every_answer_matches() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (node, tls, ca) = tls_node(&dir);
    for runtime in [Runtime::TokioUring, Runtime::Glommio] {
        let mut cfg = ping_config(&node, 1000.0, Duration::from_secs(1));
        cfg.target = tls;
        cfg.runtime = runtime;
        cfg.tls = Some(TlsClientSetup::new(Some(&ca), false, "localhost", false).unwrap());
        let out = redrain_loadgen::run(cfg, PingScenario::new(100)).unwrap();
        let s = &out.summary;
        assert_clean(s);
        assert!(s.requests.ok > 500, "{runtime:?}: {:?}", s.requests);
        assert_eq!((s.sessions.tls_handshakes, s.sessions.tls_resumed), (10, 0), "{runtime:?}");
    }
    let mut cfg = ping_config(&node, 1000.0, Duration::from_secs(1));
    cfg.target = tls;
    cfg.mode = LoadMode::ClosedLoop { in_flight_per_connection: 16 };
    cfg.tls = Some(TlsClientSetup::new(None, true, "localhost", false).unwrap());
    let out = redrain_loadgen::run(cfg, PingScenario::new(16)).unwrap();
    assert_clean(&out.summary);
    assert!(out.summary.requests.ok > 100, "pipelined pings over TLS with --tls-insecure");
    let mut cfg = shake_config(&node, 10);
    cfg.target = tls;
    cfg.tls = Some(TlsClientSetup::new(Some(&ca), false, "localhost", false).unwrap());
    let out = redrain_loadgen::run(cfg, ShakeScenario::new(true, true)).unwrap();
    assert_eq!(out.summary.sessions.established, 10);
    assert_eq!(out.summary.correctness_violations(), 0, "{:?}", out.summary.requests);
    assert!(out.summary.requests.ok > 0);
}

#[test]
fn connect_over_tls_resumes_every_session_with_resume_and_reports_the_handshake_rate() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (node, tls, ca) = tls_node(&dir);
    for resume in [false, true] {
        let mut cfg = RunConfig::with_defaults(tls, node.secret.clone());
        cfg.admin = Some(node.admin);
        cfg.connections = 200;
        cfg.threads = 1;
        cfg.duration = Duration::from_secs(1);
        cfg.warmup = Duration::from_millis(200);
        cfg.interval = RunConfig::interval_for(cfg.duration);
        cfg.user_id_base = if resume { 50_000 } else { 40_000 };
        cfg.tls = Some(TlsClientSetup::new(Some(&ca), false, "localhost", resume).unwrap());
        let out = redrain_loadgen::run(cfg, ConnectScenario).unwrap();
        let se = &out.summary.sessions;
        assert_eq!(se.established, 200, "{se:?}");
        assert_eq!(se.tls_handshakes, 200);
        assert_eq!(se.tls_resumed, if resume { 200 } else { 0 }, "resume={resume}");
        assert!(se.established_per_s > 0.0 && se.ramp_s > 0.0, "{se:?}");
        let node_summary = out.summary.node.as_ref().expect("node readings");
        assert!(node_summary.cpu_us_per_session_ramp.is_some_and(|u| u > 0.0), "{node_summary:?}");
    }
}

#[test]
fn a_tls_run_against_a_node_with_an_untrusted_certificate_fails_its_sessions_as_tls() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (node, tls, _ca) = tls_node(&dir);
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let other_ca = dir.path().join("other.pem");
    std::fs::write(&other_ca, other.cert.pem()).unwrap();
    let mut cfg = ping_config(&node, 100.0, Duration::from_millis(300));
    cfg.target = tls;
    cfg.tls = Some(TlsClientSetup::new(Some(&other_ca), false, "localhost", false).unwrap());
    let out = redrain_loadgen::run(cfg, PingScenario::new(16)).unwrap();
    assert_eq!(out.summary.sessions.established, 0);
    assert_eq!(out.summary.sessions.failures.get("tls"), Some(&10), "{:?}", out.summary.sessions.failures);
}

/// A two-core node, so that messages cross cores (one-to-one deliveries and group fan-out).
/// It measures deliveries, not the per-user limiter: the rates it needs are set explicitly.
fn chat_run(params: ChatParams, connections: u32, rate_per_s: f64) -> RunSummary {
    let bin = find_node_binary().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let rates = ["--messages-per-user-per-s", "100000", "--syncs-per-user-per-s", "100000"];
    let node = NodeProcess::start_with_args(&bin, dir.path(), 2, None, &rates).unwrap_or_else(|e| panic!("{e}"));
    let mut cfg = ping_config(&node, rate_per_s, Duration::from_secs(2));
    cfg.connections = connections;
    cfg.warmup = Duration::from_millis(300);
    let groups = chat::create_groups(&cfg, &params).unwrap();
    let scenario = ChatScenario::new(&cfg, params, &groups).unwrap();
    redrain_loadgen::run(cfg, scenario).unwrap().summary
}

fn assert_every_delivery_checked(s: &RunSummary) {
    let c = |k: &str| s.scenario_counters[k];
    assert_eq!(s.sessions.established, u64::from(s.config.connections), "{:?}", s.sessions);
    assert!(c("sent") > 0 && c("acked") == c("sent"), "every send acknowledged: {:?}", s.scenario_counters);
    assert_eq!(c("missing"), 0, "{:?}", s.scenario_counters);
    assert_eq!(c("duplicated"), 0, "{:?}", s.scenario_counters);
    assert!(c("notifies") > 0 && c("syncs") > 0, "{:?}", s.scenario_counters);
    for k in ["send_errors", "sync_errors", "earlier_runs", "wrong_response_type"] {
        assert_eq!(c(k), 0, "{k}: {:?}", s.scenario_counters);
    }
    assert_eq!(s.requests.errors, 0, "{:?}", s.errors_by_code);
    assert!(s.scenario_latency["send>sync"].count > 0, "{:?}", s.scenario_latency);
    assert!(s.scenario_latency["send>notify"].count > 0, "{:?}", s.scenario_latency);
}

#[test]
fn chat_one_to_one_returns_every_acknowledged_message_once_to_sender_and_target() {
    let _serial = serial();
    let s = chat_run(ChatParams { groups: 0, group_size: 0, sync_every: 5 }, 20, 200.0);
    assert_every_delivery_checked(&s);
    let c = |k: &str| s.scenario_counters[k];
    // Each message lands in two inboxes: the sender's and the target's.
    assert_eq!(c("delivered"), 2 * c("acked"), "{:?}", s.scenario_counters);
}

#[test]
fn chat_group_messages_reach_every_member_once() {
    let _serial = serial();
    // Two groups of 8 and 4 connections outside any group (they send one-to-one).
    let s = chat_run(ChatParams { groups: 2, group_size: 8, sync_every: 0 }, 20, 200.0);
    assert_every_delivery_checked(&s);
    assert!(s.scenario_counters["delivered"] > 2 * s.scenario_counters["acked"], "{:?}", s.scenario_counters);
}

/// A node whose users may send 2 messages a second (burst 1): every send after the first
/// in a half second is refused RateLimited with the rest of the half second.
fn rate_limited_chat(obey: bool, node: &NodeProcess) -> RunSummary {
    let mut cfg = ping_config(node, 1.0, Duration::from_secs(2));
    cfg.connections = 4;
    cfg.warmup = Duration::from_millis(300);
    cfg.mode = LoadMode::ClosedLoop { in_flight_per_connection: 1 };
    let params = ChatParams { groups: 0, group_size: 0, sync_every: 0 };
    let scenario = ChatScenario::new(&cfg, params, &[]).unwrap().obey_backoff(obey);
    redrain_loadgen::run(cfg, scenario).unwrap().summary
}

#[test]
fn chat_under_a_low_message_rate_waits_out_each_retry_after_instead_of_spinning() {
    let _serial = serial();
    let bin = find_node_binary().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rates.toml");
    std::fs::write(
        &config,
        "messages_per_user_per_s = 2\nmessages_per_user_burst = 1\nsyncs_per_user_per_s = 100000\n\
         syncs_per_user_burst = 100000\n",
    )
    .unwrap();
    let node = NodeProcess::start_with_args(&bin, dir.path(), 2, None, &["--config", config.to_str().unwrap()])
        .unwrap_or_else(|e| panic!("{e}"));
    let s = rate_limited_chat(true, &node);
    let c = |k: &str| s.scenario_counters[k];
    assert!(c("rate_limited") > 0, "the limit was reached: {:?}", s.scenario_counters);
    assert_eq!(c("missing") + c("duplicated"), 0, "{:?}", s.scenario_counters);
    // Sends happen within warm-up + run (2.3 s). A connection that waits out each
    // retry-after (<= 500 ms) is refused at most about once per token, 2 per second:
    // 4 connections x (2.3 s x 2 + 1) refusals, doubled for timing slack.
    let bound = 4 * (2.3f64 * 2.0 + 1.0).ceil() as u64 * 2;
    assert!(c("rate_limited") <= bound, "refusals bounded by time / retry-after: {:?}", s.scenario_counters);
    assert!(c("acked") <= 4 * (2.3f64 * 2.0 + 1.0).ceil() as u64, "the rate holds: {:?}", s.scenario_counters);
    // The same client ignoring the retry-after asks again at once: refused far more often.
    let abuse = rate_limited_chat(false, &node);
    let spun = abuse.scenario_counters["rate_limited"];
    eprintln!("obeying: {:?}\nignoring: {:?}", s.scenario_counters, abuse.scenario_counters);
    assert!(spun > 4 * bound, "a client that ignores the retry-after spins: {spun} vs bound {bound}");
}
