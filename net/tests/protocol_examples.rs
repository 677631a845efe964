//! Keeps the hex examples in docs/protocol.md honest.
//!
//! Every fenced block whose info string is `hex name=<name>` is one example. On
//! each line everything from `#` onwards is an annotation; the remaining hex
//! digits (whitespace ignored) are the bytes. Each example must equal what the
//! real codec produces for the documented message, must decode back to that
//! message, and every example in the doc must be checked here.

use hmac::{Hmac, Mac};
use redrain_net::code::{ErrorClass, ErrorCode};
use redrain_net::frame::{FrameDecoder, FRAME_BYTES_LIMIT};
use redrain_net::message::{
    Request, Response, SealedTicketHeader, OPEN_FLAG_INSTANT_CREDIT, SEALED_HEADER_BYTES, SEALED_TICKET_BYTES,
    TOKEN_BYTES,
};
use sha2::Sha256;
use std::collections::BTreeMap;

#[path = "protocol_examples_timeline/mod.rs"]
mod timeline_examples;

/// The documented example secret (docs/protocol.md, sections 7.1 and 14.3).
const EXAMPLE_SECRET: &[u8] = b"redrain-example-secret-v1";
const EXAMPLE_SECRET_HEX: &str = "7265647261696e2d6578616d706c652d7365637265742d7631";
const EXAMPLE_MAC_HEX: &str = "bedb3b56a9bc49ffff68b8351eea64391d4eb947b66235f7568be78900ed9eec";
const USER_ID: u64 = 42;
const DEVICE_ID: u32 = 7;
/// 2030-01-01T00:00:00Z.
const EXPIRES_AT_UNIX_S: u64 = 1_893_456_000;

/// The example sealed ticket of section 14.14: a real header, opaque sealed bytes.
fn example_sealed() -> [u8; SEALED_TICKET_BYTES] {
    let mut sealed = [0xa5; SEALED_TICKET_BYTES];
    let header = SealedTicketHeader {
        version: 1,
        node_id: 0,
        issued_at_unix_s: 1_767_225_600,
        user_id: USER_ID,
        packet_id: 1_234,
    };
    header.write((&mut sealed[..SEALED_HEADER_BYTES]).try_into().unwrap());
    sealed
}

fn doc_text() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// Every `hex name=...` block of the document, by name.
fn doc_examples(text: &str) -> BTreeMap<String, Vec<u8>> {
    let mut examples = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for (number, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        match current.take() {
            None => {
                if let Some(info) = trimmed.strip_prefix("```hex") {
                    let name = info
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("name="))
                        .unwrap_or_else(|| panic!("line {}: hex block without name=", number + 1));
                    current = Some((name.to_owned(), String::new()));
                }
            }
            Some((name, mut digits)) => {
                if trimmed.starts_with("```") {
                    let bytes = hex::decode(&digits).unwrap_or_else(|e| panic!("example {name}: bad hex: {e}"));
                    assert!(examples.insert(name.clone(), bytes).is_none(), "example {name} appears twice");
                } else {
                    let data = line.split('#').next().unwrap_or("");
                    digits.extend(data.chars().filter(|c| !c.is_whitespace()));
                    current = Some((name, digits));
                }
            }
        }
    }
    assert!(current.is_none(), "unterminated hex block");
    examples
}

/// The token of section 14.3, built by hand and signed with the example secret.
fn example_token() -> [u8; TOKEN_BYTES] {
    let mut token = [0u8; TOKEN_BYTES];
    token[0] = 1;
    token[1..9].copy_from_slice(&USER_ID.to_be_bytes());
    token[9..13].copy_from_slice(&DEVICE_ID.to_be_bytes());
    token[13..21].copy_from_slice(&EXPIRES_AT_UNIX_S.to_be_bytes());
    let mut mac = Hmac::<Sha256>::new_from_slice(EXAMPLE_SECRET).expect("any key length");
    mac.update(&token[..21]);
    token[21..].copy_from_slice(&mac.finalize().into_bytes());
    token
}

fn encode_request(req: &Request<'_>, request_id: u32) -> Vec<u8> {
    let mut out = Vec::new();
    req.encode(request_id, &mut out);
    out
}

fn encode_response(resp: &Response<'_>, request_id: u32) -> Vec<u8> {
    let mut out = Vec::new();
    resp.encode(request_id, &mut out);
    out
}

fn show(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

#[test]
fn example_secret_and_mac_match_the_doc() {
    assert_eq!(hex::encode(EXAMPLE_SECRET), EXAMPLE_SECRET_HEX);
    assert!(EXAMPLE_SECRET.len() >= 16, "the node refuses secrets shorter than 16 bytes");
    let token = example_token();
    assert_eq!(hex::encode(&token[21..]), EXAMPLE_MAC_HEX);
    let text = doc_text();
    assert!(text.contains(EXAMPLE_SECRET_HEX), "doc must state the example secret in hex");
    assert!(text.contains(EXAMPLE_MAC_HEX), "doc must state the example MAC");
    assert!(text.contains("redrain-example-secret-v1"), "doc must state the example secret");
}

#[test]
fn every_doc_example_equals_the_codec_output() {
    let token = example_token();
    let mut expected: Vec<(&str, Vec<u8>)> = vec![
        ("hello", encode_request(&Request::Hello { version_min: 1, version_max: 1 }, 1)),
        (
            "hello_ok",
            encode_response(
                &Response::HelloOk {
                    version: 1,
                    frame_bytes_max: 65_536,
                    heartbeat_interval_ms: 30_000,
                    idle_timeout_ms: 90_000,
                    server_time_ms: 1_767_225_600_000,
                },
                1,
            ),
        ),
        ("token", token.to_vec()),
        ("login", encode_request(&Request::Login { token: &token }, 2)),
        (
            "login_ok",
            encode_response(
                &Response::LoginOk { user_id: USER_ID, device_id: DEVICE_ID, home_core: 1, session_id: (1 << 48) | 1 },
                2,
            ),
        ),
        ("ping", encode_request(&Request::Ping { payload: b"hi" }, 3)),
        ("pong", encode_response(&Response::Pong { payload: b"hi" }, 3)),
        ("logout", encode_request(&Request::Logout, 4)),
        ("logout_ok", encode_response(&Response::LogoutOk, 4)),
        ("error", encode_response(&Response::error(ErrorCode::Busy, 200, "home core hand-off queue full"), 2)),
        (
            "closing",
            encode_response(
                &Response::Closing {
                    code: ErrorCode::IdleTimeout.as_u16(),
                    message: "no frame within the idle timeout",
                },
                0,
            ),
        ),
        ("shake", encode_request(&Request::Shake, 5)),
        (
            "shake_ok_lost",
            encode_response(&Response::ShakeOk { shake_interval_ms: 1_000, page_id: 2, sealed: None }, 5),
        ),
        ("open", encode_request(&Request::Open { sealed: &example_sealed() }, 6)),
        (
            "open_ok",
            encode_response(
                &Response::OpenOk { packet_id: 1_234, amount_fen: 888, batch_id: 3, flags: OPEN_FLAG_INSTANT_CREDIT },
                6,
            ),
        ),
        (
            "error_too_fast",
            encode_response(&Response::error(ErrorCode::TooFast, 250, "shake interval not yet passed"), 7),
        ),
    ];
    expected.extend(timeline_examples::expected());

    let doc = doc_examples(&doc_text());
    let mut failures = Vec::new();
    for (name, bytes) in &expected {
        match doc.get(*name) {
            None => failures.push(format!("{name}: no ```hex name={name} block in docs/protocol.md")),
            Some(documented) if documented != bytes => {
                failures.push(format!("{name}:\n  doc:   {}\n  codec: {}", show(documented), show(bytes)))
            }
            Some(_) => {}
        }
    }
    for name in doc.keys() {
        if !expected.iter().any(|(n, _)| n == name) {
            failures.push(format!("{name}: example in the doc is not checked by this test"));
        }
    }
    assert!(failures.is_empty(), "docs/protocol.md examples disagree with the codec:\n{}", failures.join("\n"));
}

#[test]
fn every_doc_frame_decodes_to_the_documented_message() {
    let doc = doc_examples(&doc_text());
    let decoder = FrameDecoder::new(FRAME_BYTES_LIMIT);
    let token = example_token();
    let one = |name: &str| {
        let bytes = doc.get(name).unwrap_or_else(|| panic!("missing example {name}"));
        let (frame, used) = decoder.decode(bytes).unwrap().unwrap_or_else(|| panic!("{name} is incomplete"));
        assert_eq!(used, bytes.len(), "{name} holds more than one frame");
        assert_eq!(frame.header.flags, 0);
        frame
    };

    let f = one("hello");
    assert_eq!(
        (f.header.request_id, Request::parse(&f).unwrap()),
        (1, Request::Hello { version_min: 1, version_max: 1 })
    );
    let f = one("login");
    assert_eq!((f.header.request_id, Request::parse(&f).unwrap()), (2, Request::Login { token: &token }));
    let f = one("ping");
    assert_eq!((f.header.request_id, Request::parse(&f).unwrap()), (3, Request::Ping { payload: b"hi" }));
    let f = one("logout");
    assert_eq!((f.header.request_id, Request::parse(&f).unwrap()), (4, Request::Logout));

    let f = one("hello_ok");
    assert_eq!(
        (f.header.request_id, Response::parse(&f).unwrap()),
        (
            1,
            Response::HelloOk {
                version: 1,
                frame_bytes_max: 65_536,
                heartbeat_interval_ms: 30_000,
                idle_timeout_ms: 90_000,
                server_time_ms: 1_767_225_600_000
            }
        )
    );
    let f = one("login_ok");
    assert_eq!(
        (f.header.request_id, Response::parse(&f).unwrap()),
        (2, Response::LoginOk { user_id: 42, device_id: 7, home_core: 1, session_id: 0x0001_0000_0000_0001 })
    );
    let f = one("pong");
    assert_eq!((f.header.request_id, Response::parse(&f).unwrap()), (3, Response::Pong { payload: b"hi" }));
    let f = one("logout_ok");
    assert_eq!((f.header.request_id, Response::parse(&f).unwrap()), (4, Response::LogoutOk));
    let f = one("error");
    assert_eq!(
        (f.header.request_id, Response::parse(&f).unwrap()),
        (2, Response::Error { code: 12, retry_after_ms: 200, message: "home core hand-off queue full" })
    );
    let f = one("closing");
    assert_eq!(
        (f.header.request_id, Response::parse(&f).unwrap()),
        (0, Response::Closing { code: 15, message: "no frame within the idle timeout" })
    );
}

#[test]
fn doc_error_table_lists_every_code_with_its_name() {
    let text = doc_text();
    for code in ErrorCode::ALL {
        let row = format!("| {:<4} | `{}`", code.as_u16(), code.name());
        assert!(text.contains(&row), "docs/protocol.md error table lacks a row starting {row:?}");
        let closes = if code.closes_connection() { "yes" } else { "no" };
        let line = text.lines().find(|l| l.starts_with(&row)).unwrap();
        let cells: Vec<_> = line.split('|').map(str::trim).collect();
        assert!(cells[4].starts_with(closes), "{code}: doc says closes = {:?}, code says {closes}", cells[4]);
        let class = match code.class() {
            ErrorClass::ClientFault => "client",
            ErrorClass::Logical => "logical",
            ErrorClass::System => "system",
        };
        assert_eq!(cells[3], class, "{code}: class in the doc differs from the code");
    }
}

#[test]
fn doc_type_table_lists_every_message_type() {
    let text = doc_text();
    for kind in redrain_net::MessageType::ALL {
        let cell = format!("| `0x{:02X}` |", kind as u8);
        assert!(text.contains(&cell), "docs/protocol.md type table lacks {kind:?} ({cell})");
    }
}
