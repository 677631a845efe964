//! Holds 10,000 concurrent logged-in sessions in one node process and reports
//! the node's resident memory per idle session (the figure quoted in README).

mod common;

use common::{metric_sum, Node, TIMEOUT};
use redrain_net::client::ClientCodec;
use redrain_net::message::{Request, Response};
use redrain_net::ErrorCode;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

const SESSIONS: usize = 10_000;

#[test]
fn ten_thousand_idle_sessions_fit_in_one_node() {
    let node = Node::start(&["--cores", "2"]);
    // Warm up allocator arenas and per-core buffers with a few sessions first,
    // so the delta measures what each additional session costs.
    let warm: Vec<_> = (0..50u64).map(|u| node.login(1_000_000 + u, 0)).collect();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let rss_before = metric_sum(&node.metrics(), "redrain_process_resident_bytes", &[]);

    let started = Instant::now();
    let mut streams = Vec::with_capacity(SESSIONS);
    let mut batch = Vec::new();
    for user in 0..SESSIONS as u64 {
        let mut s = TcpStream::connect(node.client).expect("connect");
        batch.clear();
        Request::Hello { version_min: 1, version_max: 1 }.encode(1, &mut batch);
        Request::Login { token: &node.token(user, 0) }.encode(2, &mut batch);
        s.write_all(&batch).unwrap();
        streams.push(s);
    }
    let mut buf = [0u8; 256];
    // A login the overload gate sheds (it waited too long in a busy node's queue: these
    // 10,000 arrive at once, on a shared machine) is retried after its retry-after, as a
    // client does; each session must end logged in.
    let mut shed = 0u32;
    for (user, s) in streams.iter_mut().enumerate() {
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut codec = ClientCodec::new(1 << 16);
        let mut got = Vec::new();
        let mut login_id = 2;
        while !got.contains(&(login_id, true)) {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "session {user} closed early");
            codec.feed(&buf[..n]);
            let mut retry_after = None;
            codec
                .drain(|h, r| {
                    if let Ok(Response::Error { code, retry_after_ms, .. }) = &r {
                        let shed = *code == ErrorCode::Busy.as_u16();
                        assert!(shed && h.request_id == login_id, "session {user}: {r:?}");
                        retry_after = Some(*retry_after_ms);
                    }
                    got.push((h.request_id, matches!(r, Ok(Response::HelloOk { .. }) | Ok(Response::LoginOk { .. }))))
                })
                .unwrap();
            if let Some(ms) = retry_after {
                shed += 1;
                assert!(login_id < 22, "session {user}: 20 logins shed");
                std::thread::sleep(std::time::Duration::from_millis(u64::from(ms.clamp(1, 1_000))));
                login_id += 1;
                batch.clear();
                Request::Login { token: &node.token(user as u64, 0) }.encode(login_id, &mut batch);
                s.write_all(&batch).unwrap();
            }
        }
        assert_eq!(got.first(), Some(&(1, true)), "session {user}");
    }
    if shed > 0 {
        println!("capacity: {shed} logins shed by the overload gate and retried");
    }
    let login_secs = started.elapsed().as_secs_f64();
    node.wait_metric("redrain_sessions_active", &[], (SESSIONS + warm.len()) as f64);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let m = node.metrics();
    let rss_after = metric_sum(&m, "redrain_process_resident_bytes", &[]);
    let per_session = (rss_after - rss_before) / SESSIONS as f64;
    println!(
        "capacity: {SESSIONS} sessions logged in in {login_secs:.2} s; node RSS {:.1} MiB -> {:.1} MiB; {:.0} bytes of user-space memory per idle session; per core {:?}",
        rss_before / 1048576.0,
        rss_after / 1048576.0,
        per_session,
        (0..2).map(|c| metric_sum(&m, "redrain_sessions_active", &[&format!("core=\"{c}\"")])).collect::<Vec<_>>()
    );
    // A loose guard against per-session leaks; the goal (< 4 KiB) is reported, not asserted.
    assert!(per_session < 16.0 * 1024.0, "{per_session} bytes per session");
    // Every session is still served.
    for s in streams.iter_mut().step_by(997) {
        let mut out = Vec::new();
        Request::Ping { payload: b"still here" }.encode(3, &mut out);
        s.write_all(&out).unwrap();
        let n = s.read(&mut buf).unwrap();
        let mut codec = ClientCodec::new(1 << 16);
        codec.feed(&buf[..n]);
        let f = codec.next_frame().unwrap().unwrap();
        assert_eq!(f.parse().unwrap(), Response::Pong { payload: b"still here" });
    }
}
