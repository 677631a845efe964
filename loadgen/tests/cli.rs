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
