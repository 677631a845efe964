//! TLS port: a TLS client that is not ours (Python's ssl module) completes a
//! handshake, login, ping and pipelined pings against the real node, and
//! receives the last frames the node writes before it closes; sessions resume
//! from tickets until the ticket's key rotates out; a burst after idling arrives whole.

mod common;

use common::Node;
use std::process::Command;

/// Connects over TLS to argv[1] trusting argv[2], with argv[3] the hex login token;
/// `frame` builds a request, `recv_frame` returns (type, request id, body).
const PY_TLS_PRELUDE: &str = r#"
import socket, ssl, struct, sys, time
port, cafile, token = int(sys.argv[1]), sys.argv[2], bytes.fromhex(sys.argv[3])
ctx = ssl.create_default_context(cafile=cafile)
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost")
def frame(kind, rid, body=b""):
    return struct.pack(">IBBI", 6 + len(body), kind, 0, rid) + body
buf = b""
def recv_frame():
    global buf
    while True:
        if len(buf) >= 4:
            (n,) = struct.unpack(">I", buf[:4])
            if len(buf) >= 4 + n:
                f, buf = buf[:4 + n], buf[4 + n:]
                return f[4], struct.unpack(">I", f[6:10])[0], f[10:]
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit("closed")
        buf += chunk
"#;

const PY_CLIENT: &str = r#"
s.sendall(frame(0x01, 1, struct.pack(">HH", 1, 1)))
kind, rid, body = recv_frame(); assert (kind, rid) == (0x81, 1), (kind, rid)
s.sendall(frame(0x02, 2, token))
kind, rid, body = recv_frame(); assert (kind, rid) == (0x82, 2), (kind, rid, body)
user = struct.unpack(">Q", body[:8])[0]
s.sendall(b"".join(frame(0x03, 100 + i, b"tls%d" % i) for i in range(20)))
for i in range(20):
    kind, rid, body = recv_frame()
    assert (kind, rid, body) == (0x83, 100 + i, b"tls%d" % i), (kind, rid, body)
print("OK user=%d version=%s" % (user, s.version()))
"#;

/// Starts a node with a TLS port under a fresh self-signed "localhost"
/// certificate; returns the node and the certificate's path (the client's CA).
fn start_tls_node(cores: &str) -> (Node, std::path::PathBuf) {
    start_tls_node_with(cores, &[])
}

fn start_tls_node_with(cores: &str, extra: &[&str]) -> (Node, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let args = ["--cores", cores, "--tls-listen", "127.0.0.1:0", "--tls-cert", cert_path.to_str().unwrap()];
    let node = Node::start_in(dir, &[&args[..], &["--tls-key", key_path.to_str().unwrap()], extra].concat());
    (node, cert_path)
}

/// Sends one scenario's frames, reads until the node closes, and prints the
/// (type, request id, first two body bytes) of every frame received.
const PY_LAST_FRAMES: &str = r#"
import socket, ssl, struct, sys
port, cafile, version, case, token = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], bytes.fromhex(sys.argv[5])
ctx = ssl.create_default_context(cafile=cafile)
ctx.minimum_version = ctx.maximum_version = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[version]
def connect():
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost")
def frame(kind, rid, body=b""):
    return struct.pack(">IBBI", 6 + len(body), kind, 0, rid) + body
def frames_until_close(s, skip=0):
    buf, end = b"", "close_notify"
    while True:
        try:
            chunk = s.recv(65536)
        except (ssl.SSLEOFError, ConnectionResetError) as e:
            end = type(e).__name__
            break
        if not chunk:
            break
        buf += chunk
    out = []
    while len(buf) >= 4:
        (n,) = struct.unpack(">I", buf[:4])
        f, buf = buf[:4 + n], buf[4 + n:]
        out.append("%02x/%d/%s" % (f[4], struct.unpack(">I", f[6:10])[0], f[10:12].hex()))
    return out[skip:], end
hello = frame(0x01, 1, struct.pack(">HH", 1, 1))
s = connect()
skip = 0
if case == "logout":
    s.sendall(hello + frame(0x02, 2, token) + frame(0x04, 3))
elif case == "unsupported_version":
    s.sendall(frame(0x01, 5, struct.pack(">HH", 2, 3)))
elif case == "request_before_hello":
    s.sendall(frame(0x03, 6, b"x"))
elif case == "zero_length_frame":
    s.sendall(hello + frame(0x03, 2, b"p") + struct.pack(">I", 0))
elif case == "replaced":
    s.sendall(hello + frame(0x02, 2, token))
    got = b""
    while len(got) < 2 * (10 + 22):
        got += s.recv(65536)
    other = connect()
    other.sendall(hello + frame(0x02, 2, token))
print(s.version(), *frames_until_close(s))
"#;

#[test]
fn the_last_frames_before_a_close_reach_a_foreign_tls_client_on_tls_1_2_and_1_3() {
    // One core, and two (where the session moves to its home core with its TLS state).
    for cores in ["1", "2"] {
        last_frames_reach_python_ssl(cores);
    }
}

fn last_frames_reach_python_ssl(cores: &str) {
    let (node, cert_path) = start_tls_node(cores);
    let port = node.tls.expect("tls port").port().to_string();
    // (scenario, the frames the client must see before the node's close_notify)
    let cases = [
        ("logout", "['81/1/0001', '82/2/0000', '84/3/']"),
        ("unsupported_version", "['ff/5/0004']"),
        ("request_before_hello", "['ff/6/0005']"),
        ("zero_length_frame", "['81/1/0001', '83/2/70', 'ff/0/0001']"),
        ("replaced", "['e1/0/000e']"),
    ];
    for version in ["1.2", "1.3"] {
        for (case, frames) in cases {
            let out = Command::new("python3")
                .args(["-c", PY_LAST_FRAMES, &port, cert_path.to_str().unwrap(), version, case])
                .arg(hex::encode(node.token(42, 7)))
                .output()
                .expect("python3 must be installed");
            let stdout = String::from_utf8_lossy(&out.stdout);
            let want = format!("TLSv{version} {frames} close_notify");
            assert!(
                out.status.success() && stdout.trim() == want,
                "{case} over TLS {version}, {cores} cores: got {stdout:?}, want {want:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn python_ssl_client_logs_in_and_pings_over_tls() {
    let (node, cert_path) = start_tls_node("2");
    let tls = node.tls.expect("tls port");
    // Several users so that some sessions move to the other core with their TLS state:
    // the kernel spreads connections over the cores by their addresses, so each lands on
    // its user's home core by chance one time in two; with 12, all do once in 4,096 runs.
    for user in 101u64..=112 {
        let out = Command::new("python3")
            .args(["-c", &format!("{PY_TLS_PRELUDE}{PY_CLIENT}"), &tls.port().to_string(), cert_path.to_str().unwrap()])
            .arg(hex::encode(node.token(user, 1)))
            .output()
            .expect("python3 must be installed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.starts_with(&format!("OK user={user} version=TLSv1.3")),
            "python client failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    node.wait_metric("redrain_tls_handshakes_total", &[], 12.0);
    assert!(node.metric_sum("redrain_handoffs_sent_total", &[]) >= 1.0, "a TLS session moved cores");
}

#[test]
fn plaintext_on_the_tls_port_is_a_tls_error_and_the_node_keeps_serving() {
    let (node, _cert) = start_tls_node("1");
    // Plain protocol bytes on the TLS port: a TLS error, the connection closes.
    let mut s = std::net::TcpStream::connect(node.tls.unwrap()).unwrap();
    s.set_read_timeout(Some(common::TIMEOUT)).unwrap();
    let mut hello = Vec::new();
    redrain_net::message::Request::Hello { version_min: 1, version_max: 1 }.encode(1, &mut hello);
    std::io::Write::write_all(&mut s, &hello).unwrap();
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut rest);
    node.wait_metric("redrain_connections_closed_total", &["reason=\"tls_error\""], 1.0);
    // The node still serves plain clients.
    node.login(5, 0).call(&redrain_net::message::Request::Ping { payload: b"" }).unwrap();
}

/// Connects three times: fresh, resumed with the first connection's ticket,
/// and (after waiting two rotation periods) with the second's. Each time it
/// logs in and pings; prints whether the handshake was a resumption.
const PY_RESUME: &str = r#"
import socket, ssl, struct, sys, time
port, cafile, token, wait_s = int(sys.argv[1]), sys.argv[2], bytes.fromhex(sys.argv[3]), float(sys.argv[4])
ctx = ssl.create_default_context(cafile=cafile)
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
def frame(kind, rid, body=b""):
    return struct.pack(">IBBI", 6 + len(body), kind, 0, rid) + body
def session(previous):
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost", session=previous)
    s.sendall(frame(0x01, 1, struct.pack(">HH", 1, 1)) + frame(0x02, 2, token) + frame(0x03, 3, b"resume"))
    buf = b""
    while buf.count(b"resume") == 0:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit("closed")
        buf += chunk
    reused, ticket = s.session_reused, s.session
    s.close()
    return reused, ticket
first, t1 = session(None)
second, t2 = session(t1)
time.sleep(wait_s)
third, _ = session(t2)
print("reused:", first, second, third)
"#;

#[test]
fn a_session_resumes_from_its_ticket_and_is_refused_once_the_ticket_key_rotated_out() {
    // Keys rotate every second: a ticket is honoured for one to two seconds.
    let (node, cert_path) = start_tls_node_with("2", &["--tls-ticket-rotation-s", "1"]);
    let port = node.tls.expect("tls port").port().to_string();
    let out = Command::new("python3")
        .args(["-c", PY_RESUME, &port, cert_path.to_str().unwrap()])
        .args([&hex::encode(node.token(77, 1)), "2.2"])
        .output()
        .expect("python3 must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim() == "reused: False True False",
        "got {stdout:?}; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    node.wait_metric("redrain_tls_handshakes_total", &[], 3.0);
    assert_eq!(node.metric_sum("redrain_tls_handshakes_resumed_total", &[]), 1.0);
}

#[test]
fn resumption_is_off_when_the_rotation_period_is_zero() {
    let (node, cert_path) = start_tls_node_with("1", &["--tls-ticket-rotation-s", "0"]);
    let port = node.tls.expect("tls port").port().to_string();
    let out = Command::new("python3")
        .args(["-c", PY_RESUME, &port, cert_path.to_str().unwrap()])
        .args([&hex::encode(node.token(78, 1)), "0"])
        .output()
        .expect("python3 must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.trim(), "reused: False False False", "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(node.metric_sum("redrain_tls_handshakes_resumed_total", &[]), 0.0);
}

/// Logs in, idles, sends a burst of pipelined pings far larger than one TLS
/// record and the core's read buffer in one write, idles again, and repeats:
/// every answer must come back, in order and intact.
const PY_BURST: &str = r#"
s.sendall(frame(0x01, 1, struct.pack(">HH", 1, 1)) + frame(0x02, 2, token))
assert recv_frame()[0] == 0x81 and recv_frame()[0] == 0x82
rid = 10
for round in range(3):
    time.sleep(0.5)
    pings = [(rid + i, bytes([(rid + i) % 256]) * 200) for i in range(400)]
    s.sendall(b"".join(frame(0x03, r, body) for r, body in pings))
    for r, body in pings:
        got = recv_frame()
        assert got == (0x83, r, body), (round, r, got[:2])
    rid += 400
print("OK", rid - 10)
"#;

#[test]
fn a_tls_session_survives_bursts_after_idling_without_losing_bytes() {
    let (node, cert_path) = start_tls_node("2");
    let port = node.tls.expect("tls port").port().to_string();
    for user in [301u64, 302, 303, 304] {
        let out = Command::new("python3")
            .args(["-c", &format!("{PY_TLS_PRELUDE}{PY_BURST}"), &port, cert_path.to_str().unwrap()])
            .arg(hex::encode(node.token(user, 1)))
            .output()
            .expect("python3 must be installed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.trim() == "OK 1200",
            "user {user}: {stdout:?}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
