//! Shake and open through real node processes: end to end with reconciliation, every kind
//! of bad ticket, replays, concurrent opens, opens after the slot, and SIGKILL crashes.

mod common;

use common::{promtool_check, reconcile_demo, redrain, Node, Replica, TIMEOUT};
use redrain_engine::rain::seal::SealKey;
use redrain_engine::tickets::format::Ticket;
use redrain_engine::tickets::keyring::{cipher_for, Keyring};
use redrain_net::client::{BlockingClient, ClientError};
use redrain_net::message::{
    Request, Response, SealedTicketHeader, OPEN_FLAG_REPEAT, SEALED_HEADER_BYTES, SEALED_TICKET_BYTES,
};
use redrain_net::ErrorCode;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Sealed = [u8; SEALED_TICKET_BYTES];

const RAIN_ENV: &[(&str, &str)] = &[("REDRAIN_DEMO_EVENT", "true")];

fn start_rain(dir: tempfile::TempDir, extra: &[&str]) -> Node {
    let mut args = vec!["--cores", "2", "--shake-interval-ms", "0"];
    args.extend_from_slice(extra);
    Node::start_env(dir, &args, RAIN_ENV)
}

/// Shakes once: Ok(Some(ticket)) on a win, Ok(None) on a loss.
fn shake(c: &mut BlockingClient) -> Result<Option<Sealed>, ClientError> {
    let f = c.call(&Request::Shake)?;
    match f.parse().expect("valid ShakeOk") {
        Response::ShakeOk { sealed, .. } => Ok(sealed.copied()),
        other => panic!("unexpected {other:?}"),
    }
}

/// Opens: Ok((packet, amount, flags)).
fn open(c: &mut BlockingClient, sealed: &Sealed) -> Result<(u64, u32, u8), ClientError> {
    let f = c.call(&Request::Open { sealed })?;
    match f.parse().expect("valid OpenOk") {
        Response::OpenOk { packet_id, amount_fen, flags, .. } => Ok((packet_id, amount_fen, flags)),
        other => panic!("unexpected {other:?}"),
    }
}

fn server_code(r: Result<impl std::fmt::Debug, ClientError>) -> u16 {
    match r {
        Err(ClientError::Server { code, .. }) => code,
        other => panic!("expected a server error, got {other:?}"),
    }
}

/// Shakes until a win (bounded).
fn win(c: &mut BlockingClient) -> Sealed {
    let until = Instant::now() + TIMEOUT;
    loop {
        if let Some(s) = shake(c).expect("shake") {
            return s;
        }
        assert!(Instant::now() < until, "no win within {TIMEOUT:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Exports the open queue and reconciles it against the demo event; returns the report.
fn export_and_reconcile(data: &Path) -> serde_json::Value {
    let opened = data.join("opened.ndjson");
    let out =
        redrain(&["rain", "export-opened", "--data-dir", data.to_str().unwrap(), "--out", opened.to_str().unwrap()]);
    assert!(out.status.success(), "export: {}", String::from_utf8_lossy(&out.stderr));
    reconcile_demo(data, &opened)
}

fn verdict(report: &serde_json::Value, name: &str) -> u64 {
    report["verdicts"].get(name).map(|t| t["packets"].as_u64().unwrap()).unwrap_or(0)
}

#[test]
fn many_users_shake_and_open_concurrently_and_reconciliation_is_clean() {
    let mut node = start_rain(tempfile::tempdir().unwrap(), &[]);
    let node_ref = Arc::new(Mutex::new(()));
    let won: Arc<Mutex<Vec<u64>>> = Arc::default();
    let told: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let threads: Vec<_> = (0..12u64)
        .map(|i| {
            let mut c = node.login(1_000 + i, 1);
            let (won, told, _guard) = (won.clone(), told.clone(), node_ref.clone());
            std::thread::spawn(move || {
                let until = Instant::now() + Duration::from_millis(1_500);
                let mut first: Option<(Sealed, u32)> = None;
                while Instant::now() < until {
                    let Some(sealed) = shake(&mut c).expect("shake") else {
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    };
                    let header = SealedTicketHeader::parse(&sealed);
                    assert_eq!(header.user_id, 1_000 + i, "the ticket is bound to its winner");
                    won.lock().unwrap().push(header.packet_id);
                    let (packet, amount, flags) = open(&mut c, &sealed).expect("open");
                    assert_eq!(packet, header.packet_id);
                    assert_eq!(flags & OPEN_FLAG_REPEAT, 0, "a first open is not a repeat");
                    assert!(told.lock().unwrap().insert(packet, amount).is_none(), "packet {packet} opened twice");
                    first.get_or_insert((sealed, amount));
                }
                // A repeated open answers the same amount and records nothing new.
                if let Some((sealed, amount)) = first {
                    let (_, again, flags) = open(&mut c, &sealed).expect("repeat open");
                    assert_eq!((again, flags & OPEN_FLAG_REPEAT), (amount, OPEN_FLAG_REPEAT));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let won = won.lock().unwrap().clone();
    let unique: HashSet<_> = won.iter().collect();
    assert_eq!(unique.len(), won.len(), "a packet was won twice");
    assert!(won.len() >= 50, "only {} wins in 1.5 s", won.len());
    let told = told.lock().unwrap().clone();
    let told_total: u64 = told.values().map(|a| u64::from(*a)).sum();
    assert_eq!(node.metric_sum("redrain_rain_opens_recorded_total", &[]) as usize, told.len());
    node.stop();

    let report = export_and_reconcile(&node.data_dir());
    assert_eq!(report["opened_records"].as_u64(), Some(told.len() as u64), "{report}");
    for bad in ["duplicate", "unknown", "tampered", "mismatch", "malformed"] {
        assert_eq!(verdict(&report, bad), 0, "{bad}: {report}");
    }
    let credited = report["instant"]["amount_fen"].as_u64().unwrap()
        + report["after_reconciliation"]["amount_fen"].as_u64().unwrap();
    assert_eq!(credited, told_total, "{report}");
    assert_eq!(report["ok"], true, "{report}");
}

/// Builds sealed tickets the node must refuse, using its own seal key (as only a leak
/// or a bug could).
struct Forger {
    seal: SealKey,
    keyring: Keyring,
}

impl Forger {
    fn new(data: &Path) -> Forger {
        let text = std::fs::read_to_string(data.join("seal.key")).unwrap();
        let mut key = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut key).unwrap();
        Forger { seal: SealKey::new(&key, 0), keyring: Keyring::load(&data.join("demo-event.keyring.json")).unwrap() }
    }

    fn seal_ticket(&self, user: u64, ticket: Ticket, issued_at: u32) -> Sealed {
        let key = self.keyring.key(ticket.key_id).expect("key in keyring");
        let ciphertext = ticket.encrypt(&cipher_for(&key.key));
        self.seal.seal(user, ticket.packet_id, issued_at, &ciphertext, ticket.key_id)
    }
}

fn now_s() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as u32
}

#[test]
fn rain_metrics_of_every_core_are_a_valid_exposition() {
    let node = start_rain(tempfile::tempdir().unwrap(), &[]);
    let mut c = node.login(3, 1);
    let sealed = win(&mut c);
    open(&mut c, &sealed).unwrap();
    node.wait_metric("redrain_stream_records_total", &["stream=\"opens\""], 1.0);
    let m = node.metrics();
    for family in ["redrain_rain_shakes_won_total", "redrain_rain_opened_packets", "redrain_stream_durable_lsn"] {
        for core in ["0", "1"] {
            assert!(m.contains(&format!("{family}{{core=\"{core}\"")), "{family} of core {core} missing");
        }
    }
    promtool_check(&m);
}

#[test]
fn every_bad_ticket_kind_gets_its_own_code_and_nothing_is_recorded() {
    let node = start_rain(tempfile::tempdir().unwrap(), &[]);
    let mut alice = node.login(7, 1);
    let mut bob = node.login(8, 1);
    let sealed = win(&mut alice);
    let forger = Forger::new(&node.data_dir());
    let key_id = forger.keyring.keys[0].key_id;

    let code = |c: &mut BlockingClient, s: &Sealed| server_code(open(c, s));
    // Another user's ticket.
    assert_eq!(code(&mut bob, &sealed), ErrorCode::TicketOtherUser.as_u16());
    // Tampered: a bit of the sealed part, or of the header's issue time.
    for byte in [SEALED_HEADER_BYTES + 3, SEALED_TICKET_BYTES - 1, 4] {
        let mut bad = sealed;
        bad[byte] ^= 0x10;
        assert_eq!(code(&mut alice, &bad), ErrorCode::TicketTampered.as_u16(), "byte {byte}");
    }
    // Unknown version and another node's ticket.
    let mut bad = sealed;
    bad[0] = 9;
    assert_eq!(code(&mut alice, &bad), ErrorCode::TicketMalformed.as_u16());
    let other_node = SealKey::new(&[1; 32], 5).seal(7, 1, now_s(), &[0; 16], key_id);
    assert_eq!(code(&mut alice, &other_node), ErrorCode::TicketOtherNode.as_u16());
    // Forged: an authentic seal around a ticket that does not decrypt, or whose packet
    // differs from the header.
    let forged = forger.seal.seal(7, 123, now_s(), &[0x55; 16], key_id);
    assert_eq!(code(&mut alice, &forged), ErrorCode::TicketForged.as_u16());
    let t = Ticket { packet_id: 124, amount_fen: 100, batch_id: 0, key_id };
    let mut mismatched = forger.seal_ticket(7, t, now_s());
    mismatched[15..23].copy_from_slice(&125u64.to_be_bytes());
    let resealed = forger.seal.seal(7, 125, now_s(), &mismatched[23..39].try_into().unwrap(), key_id);
    assert_eq!(code(&mut alice, &resealed), ErrorCode::TicketForged.as_u16());
    // Expired, and a batch outside the event.
    let old = forger.seal_ticket(7, t, now_s() - 3 * 86_400);
    assert_eq!(code(&mut alice, &old), ErrorCode::TicketExpired.as_u16());
    let stray = forger.seal_ticket(7, Ticket { batch_id: 60_000, ..t }, now_s());
    assert_eq!(code(&mut alice, &stray), ErrorCode::TicketUnknownBatch.as_u16());
    // A malformed body is a protocol error, not a ticket error.
    let mut raw = Vec::new();
    redrain_net::frame::encode_frame(&mut raw, 0x11, 77, |b| b.extend_from_slice(&[0; 10]));
    alice.send_raw(&raw).unwrap();
    assert!(
        matches!(alice.recv().unwrap().parse().unwrap(), Response::Error { code, .. } if code == ErrorCode::MalformedBody.as_u16())
    );

    assert_eq!(node.metric_sum("redrain_rain_opens_recorded_total", &[]), 0.0, "nothing recorded");
    for code in [
        "ticket_other_user",
        "ticket_tampered",
        "ticket_malformed",
        "ticket_other_node",
        "ticket_forged",
        "ticket_expired",
        "ticket_unknown_batch",
    ] {
        assert!(node.metric_sum("redrain_rejected_frames_total", &[code]) >= 1.0, "{code} not counted");
    }
    // The real ticket still opens, once.
    let (_, amount, flags) = open(&mut alice, &sealed).unwrap();
    assert!(amount > 0 && flags & OPEN_FLAG_REPEAT == 0);
}

#[test]
fn replays_across_sessions_and_concurrent_devices_credit_once_with_the_same_amount() {
    let node = start_rain(tempfile::tempdir().unwrap(), &[]);
    let mut phone = node.login(42, 1);
    let mut tablet = node.login(42, 2);
    let sealed = win(&mut phone);
    // Both devices open the same packet at once (pipelined, before either answer).
    let a = phone.send(&Request::Open { sealed: &sealed }).unwrap();
    let b = tablet.send(&Request::Open { sealed: &sealed }).unwrap();
    let answer = |c: &mut BlockingClient, id: u32| {
        let f = c.recv().unwrap();
        assert_eq!(f.request_id, id);
        match f.parse().unwrap() {
            Response::OpenOk { amount_fen, flags, .. } => (amount_fen, flags & OPEN_FLAG_REPEAT),
            other => panic!("{other:?}"),
        }
    };
    let (amount_a, repeat_a) = answer(&mut phone, a);
    let (amount_b, repeat_b) = answer(&mut tablet, b);
    assert_eq!(amount_a, amount_b);
    assert_eq!(repeat_a + repeat_b, OPEN_FLAG_REPEAT, "exactly one of the two is the first open");
    // A new session of the same user replays it: same amount, a repeat.
    drop(phone);
    let mut again = node.login(42, 1);
    assert_eq!(open(&mut again, &sealed).unwrap().1, amount_a);
    // Another user cannot replay it.
    assert_eq!(server_code(open(&mut node.login(43, 1), &sealed)), ErrorCode::TicketOtherUser.as_u16());
    assert_eq!(node.metric_sum("redrain_rain_opens_recorded_total", &[]), 1.0);
}

#[test]
fn responses_keep_request_order_behind_a_deferred_open() {
    let node = start_rain(tempfile::tempdir().unwrap(), &[]);
    let mut c = node.login(77, 1);
    let sealed = win(&mut c);
    let ids = [
        c.queue(&Request::Open { sealed: &sealed }),
        c.queue(&Request::Ping { payload: b"after" }),
        c.queue(&Request::Open { sealed: &sealed }),
        c.queue(&Request::Ping { payload: b"last" }),
    ];
    c.flush().unwrap();
    let got: Vec<u32> = (0..4).map(|_| c.recv().unwrap().request_id).collect();
    assert_eq!(got, ids);
}

#[test]
fn a_restart_keeps_opens_and_cursors_and_a_ticket_opens_after_its_slot_ended() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = start_rain(dir, &[]);
    let mut c = node.login(9, 1);
    let mut wins = Vec::new();
    for _ in 0..20 {
        wins.push(win(&mut c));
    }
    let (packet, amount, _) = open(&mut c, &wins[0]).unwrap();
    drop(c);
    node.stop();
    // Restart 20 minutes later on the rain clock: every demo slot has ended.
    let node = start_rain(node.take_dir(), &["--clock-offset-ms", "1200000"]);
    let mut c = node.login(9, 1);
    assert!(shake(&mut c).unwrap().is_none(), "no slot is open");
    assert!(node.metric_sum("redrain_rain_shakes_no_slot_total", &[]) >= 1.0);
    // Opened before the restart: a repeat with the same amount.
    let (again, amount_again, flags) = open(&mut c, &wins[0]).unwrap();
    assert_eq!((again, amount_again, flags & OPEN_FLAG_REPEAT), (packet, amount, OPEN_FLAG_REPEAT));
    // Won before the restart, opened after its slot ended: still honoured (within the TTL).
    let (_, later, flags) = open(&mut c, &wins[1]).unwrap();
    assert!(later > 0 && flags & OPEN_FLAG_REPEAT == 0);
    node.wait_metric("redrain_rain_opened_packets", &[], 2.0);
}

#[test]
fn sigkill_under_load_never_issues_or_opens_twice_and_loses_no_acknowledged_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut dir = Some(dir);
    let mut won: HashSet<u64> = HashSet::new();
    let mut acked: HashMap<u64, u32> = HashMap::new();
    let kills = std::env::var("REDRAIN_CRASH_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let mut rng_state = 0x9e37_79b9_u64;
    for round in 0..kills {
        let node = start_rain(dir.take().unwrap(), &["--cursor-step", "64"]);
        let round_won: Arc<Mutex<Vec<u64>>> = Arc::default();
        let round_acked: Arc<Mutex<Vec<(u64, u32)>>> = Arc::default();
        let clients: Vec<_> = (0..4u64).map(|i| node.login(500 + i, 1)).collect();
        let threads: Vec<_> = clients
            .into_iter()
            .map(|mut c| {
                let (round_won, round_acked) = (round_won.clone(), round_acked.clone());
                std::thread::spawn(move || loop {
                    let sealed = match shake(&mut c) {
                        Ok(Some(s)) => s,
                        Ok(None) => continue,
                        Err(_) => return,
                    };
                    round_won.lock().unwrap().push(SealedTicketHeader::parse(&sealed).packet_id);
                    match open(&mut c, &sealed) {
                        Ok((packet, amount, _)) => round_acked.lock().unwrap().push((packet, amount)),
                        Err(_) => return,
                    }
                })
            })
            .collect();
        rng_state = rng_state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        std::thread::sleep(Duration::from_millis(50 + (rng_state >> 33) % 250));
        unsafe { libc::kill(node.pid(), libc::SIGKILL) };
        for t in threads {
            t.join().unwrap();
        }
        for p in round_won.lock().unwrap().iter() {
            assert!(won.insert(*p), "round {round}: packet {p} issued twice");
        }
        for (p, a) in round_acked.lock().unwrap().iter() {
            assert!(acked.insert(*p, *a).is_none(), "round {round}: packet {p} acknowledged twice as a first open");
        }
        let mut node = node;
        let _ = node.child.wait();
        dir = Some(node.take_dir());
    }
    let dir = dir.unwrap();
    let report = export_and_reconcile(&dir.path().join("data"));
    assert_eq!(verdict(&report, "duplicate"), 0, "{report}");
    assert_eq!(verdict(&report, "unknown"), 0, "{report}");
    let opened: HashMap<u64, u32> = std::fs::read_to_string(dir.path().join("data/opened.ndjson"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["packet_id"].as_u64().unwrap(), v["amount_fen"].as_u64().unwrap() as u32)
        })
        .collect();
    for (p, a) in &acked {
        assert_eq!(opened.get(p), Some(a), "acknowledged open of packet {p} missing after the crashes");
    }
    assert!(acked.len() >= kills, "only {} acknowledged opens over {kills} rounds", acked.len());
}

#[test]
fn the_node_serves_the_rain_from_a_relative_data_dir_as_on_embedded_defaults() {
    // `redrain serve` on defaults uses ./redrain-data; the logs must open under it.
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_redrain"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--shake-interval-ms", "0"])
        .current_dir(dir.path())
        .env("REDRAIN_DEMO_EVENT", "true")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let addr: std::net::SocketAddr =
        line.split_whitespace().find_map(|kv| kv.strip_prefix("client=")).unwrap().parse().unwrap();
    let secret = std::fs::read_to_string(dir.path().join("redrain-data/auth.secret")).unwrap();
    let keys = redrain_net::token::TokenKeys::new(&hex::decode(secret.trim()).unwrap(), None).unwrap();
    let token = keys.mint(redrain_net::token::TokenClaims {
        user_id: 5,
        device_id: 1,
        expires_at_unix_s: redrain_net::time::now_unix_s() + 60,
    });
    let mut c = BlockingClient::connect(addr, TIMEOUT).unwrap();
    c.login(&token).unwrap();
    let sealed = win(&mut c);
    assert!(open(&mut c, &sealed).unwrap().1 > 0);
    let _ = child.kill();
    let _ = child.wait();
}

/// Packet ids of the open records `replica` holds for (node 0, `core`).
fn opened_packets(replica: &Replica, core: u16) -> Vec<u64> {
    replica
        .records(0, core)
        .into_iter()
        .filter_map(|(_, kind, payload)| {
            redrain_engine::rain::records::OpenRecord::decode(kind, &payload).ok().map(|r| r.packet_id)
        })
        .collect()
}

#[test]
fn with_peers_an_open_is_answered_on_two_of_three_copies_and_waits_when_both_are_gone() {
    let root = tempfile::tempdir().unwrap();
    let mut a = Replica::start(&root.path().join("park-a"), "127.0.0.1:0");
    let b = Replica::start(&root.path().join("park-b"), "127.0.0.1:0");
    let peers = format!("{},{}", a.addr, b.addr);
    let node = start_rain(
        tempfile::tempdir().unwrap(),
        &["--opens-replica-peers", &peers, "--opens-replica-commit-timeout-ms", "1000"],
    );
    let mut c = node.login(21, 1);
    let first = win(&mut c);
    let (packet, amount, _) = open(&mut c, &first).unwrap();
    // The record is on both peers (each holds the stream of the user's home core).
    let core = redrain_engine::shard::handoff::home_core(21, 2) as u16;
    let until = Instant::now() + TIMEOUT;
    while !(opened_packets(&a, core).contains(&packet) && opened_packets(&b, core).contains(&packet)) {
        assert!(Instant::now() < until, "the open record did not reach both peers");
        std::thread::sleep(Duration::from_millis(100));
    }
    // One peer gone: local + the other = 2 of 3, opens still answered.
    let _ = a.child.kill();
    let _ = a.child.wait();
    let second = win(&mut c);
    assert!(open(&mut c, &second).unwrap().1 > 0);
    // Both gone: the record is durable here only; the open is answered Busy, and a retry
    // appends nothing (it waits for a peer's copy).
    drop(b);
    let third = win(&mut c);
    assert_eq!(server_code(open(&mut c, &third)), ErrorCode::Busy.as_u16());
    assert_eq!(server_code(open(&mut c, &third)), ErrorCode::Busy.as_u16());
    node.wait_metric("redrain_rain_opens_unconfirmed_total", &[], 1.0);
    // A peer returns (same address and data): the record ships, and the retry opens it.
    a = Replica::start(&root.path().join("park-a"), &a.addr.to_string());
    let until = Instant::now() + Duration::from_secs(20);
    let opened = loop {
        match open(&mut c, &third) {
            Ok(r) => break r,
            Err(ClientError::Server { code, .. }) if code == ErrorCode::Busy.as_u16() => {
                assert!(Instant::now() < until, "the open was not confirmed after a peer returned");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    assert!(opened.1 > 0);
    assert_eq!(open(&mut c, &first).unwrap().1, amount, "earlier opens stay opened");
    // Exactly one record per packet in the node's queue.
    drop(c);
    let mut node = node;
    node.stop();
    let report = export_and_reconcile(&node.data_dir());
    assert_eq!(verdict(&report, "duplicate"), 0, "{report}");
    assert_eq!(report["opened_records"].as_u64(), Some(3), "{report}");
    drop(a);
}
