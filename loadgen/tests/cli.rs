//! The binary's behaviour without a node: limits and bad input give clear errors.

use std::process::Command;

const SECRET: &str = "00112233445566778899aabbccddeeff";

#[test]
fn too_many_connections_for_the_fd_limit_names_the_process_count() {
    let out = Command::new(env!("CARGO_BIN_EXE_redrain-loadgen"))
        .args(["connect", "--connections", "1000000", "--secret-hex", SECRET, "--no-admin"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loadgen processes") && err.contains("RLIMIT_NOFILE"), "{err}");
}

#[test]
fn no_reachable_node_fails_with_the_reason_counted() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_redrain-loadgen"))
        .args(["ping", "--target", &port.to_string(), "--connections", "2", "--duration", "200ms", "--warmup", "0s"])
        .args(["--secret-hex", SECRET, "--no-admin", "--connect-timeout", "1s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("established 0/2") && text.contains("connect:refused=2"), "{text}");
}

#[test]
fn bad_secret_and_bad_durations_are_rejected() {
    let exe = env!("CARGO_BIN_EXE_redrain-loadgen");
    let out = Command::new(exe).args(["ping", "--secret-hex", "zz", "--no-admin"]).output().unwrap();
    assert!(!out.status.success());
    let out = Command::new(exe).args(["ping", "--duration", "ten", "--secret-hex", SECRET]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid duration"));
}

#[test]
fn floor_measures_against_its_own_echo_server_and_later_runs_print_it() {
    let exe = env!("CARGO_BIN_EXE_redrain-loadgen");
    let dir = tempfile::tempdir().unwrap();
    let floor_file = dir.path().join("floor.json");
    let out = Command::new(exe)
        .args(["floor", "--duration", "300ms", "--warmup", "100ms", "--rate", "500"])
        .arg("--floor-file")
        .arg(&floor_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("round trip (1 x 1)") && text.contains("send lag (500/s)"), "{text}");
    let file = redrain_loadgen::floor::load(&floor_file).unwrap();
    let f = &file["tokio-uring"];
    assert!(f.round_trip.count > 0 && f.round_trip.p50_ms > 0.0, "{f:?}");
    assert!(f.send_lag.count > 100, "{f:?}");
    // A run (here one that reaches no node) prints the floor under its table.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let out = Command::new(exe)
        .args(["ping", "--target", &port.to_string(), "--connections", "1", "--duration", "200ms"])
        .args(["--warmup", "0s", "--secret-hex", SECRET, "--no-admin", "--connect-timeout", "1s"])
        .arg("--floor-file")
        .arg(&floor_file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("floor rtt") && text.contains("floor lag"), "{text}");
}

#[test]
fn merge_refuses_a_file_that_is_not_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{}").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_redrain-loadgen")).arg("merge").arg(&bad).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loadgen JSON summary"));
}
