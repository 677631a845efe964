//! `ping`: every request is a `Ping` with a payload derived from its sequence
//! number; the `Pong` must echo it byte for byte.

use super::{Check, Headline, LoadShape, Scenario, ScenarioConnection};
use redrain_net::message::{Request, PING_PAYLOAD_BYTES_MAX};
use redrain_net::Response;

/// Counter slots of the ping scenario.
pub const PING_COUNTERS: &[&str] = &["echo_mismatches", "wrong_response_type"];
const ECHO_MISMATCHES: usize = 0;
const WRONG_RESPONSE_TYPE: usize = 1;

#[derive(Debug, Clone)]
pub struct PingScenario {
    payload_bytes: usize,
}

impl PingScenario {
    /// `payload_bytes` is clamped to the protocol's maximum ping payload.
    pub fn new(payload_bytes: usize) -> Self {
        Self { payload_bytes: payload_bytes.min(PING_PAYLOAD_BYTES_MAX) }
    }
}

impl Scenario for PingScenario {
    type Connection = PingConnection;

    fn name(&self) -> &'static str {
        "ping"
    }
    fn counter_names(&self) -> &'static [&'static str] {
        PING_COUNTERS
    }
    fn load_shape(&self) -> LoadShape {
        LoadShape::Requests
    }
    fn headline(&self) -> Headline {
        Headline::Requests
    }
    fn connection(&self, index: u64) -> PingConnection {
        PingConnection { salt: index, payload: vec![0; self.payload_bytes] }
    }
}

/// One connection's ping state: a reusable payload buffer.
#[derive(Debug)]
pub struct PingConnection {
    salt: u64,
    payload: Vec<u8>,
}

/// Fills `out` with bytes that depend on (salt, sequence), so a swapped or
/// stale echo is detected.
pub fn fill_payload(salt: u64, sequence: u64, out: &mut [u8]) {
    let mut x = salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ sequence.wrapping_add(1);
    for chunk in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

impl ScenarioConnection for PingConnection {
    fn next_request(&mut self, sequence: u64) -> Request<'_> {
        fill_payload(self.salt, sequence, &mut self.payload);
        Request::Ping { payload: &self.payload }
    }

    fn check(&mut self, sequence: u64, response: &Response<'_>, counters: &mut [u64]) -> Check {
        match response {
            Response::Pong { payload } => {
                let mut expected = [0u8; PING_PAYLOAD_BYTES_MAX];
                let expected = &mut expected[..self.payload.len()];
                fill_payload(self.salt, sequence, expected);
                if *payload == &*expected {
                    Check::Ok
                } else {
                    counters[ECHO_MISMATCHES] += 1;
                    Check::Failed
                }
            }
            _ => {
                counters[WRONG_RESPONSE_TYPE] += 1;
                Check::Failed
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_of_the_right_payload_passes_and_any_other_fails() {
        let s = PingScenario::new(16);
        let mut c = s.connection(3);
        let mut counters = [0u64; 2];
        let sent = match c.next_request(5) {
            Request::Ping { payload } => payload.to_vec(),
            other => panic!("{other:?}"),
        };
        assert_eq!(sent.len(), 16);
        assert_eq!(c.check(5, &Response::Pong { payload: &sent }, &mut counters), Check::Ok);
        assert_eq!(c.check(6, &Response::Pong { payload: &sent }, &mut counters), Check::Failed);
        assert_eq!(c.check(5, &Response::Pong { payload: &sent[..15] }, &mut counters), Check::Failed);
        assert_eq!(c.check(5, &Response::LogoutOk, &mut counters), Check::Failed);
        assert_eq!(counters, [2, 1]);
    }

    #[test]
    fn payload_is_clamped_to_the_protocol_maximum() {
        let s = PingScenario::new(10_000);
        let mut c = s.connection(0);
        match c.next_request(0) {
            Request::Ping { payload } => assert_eq!(payload.len(), PING_PAYLOAD_BYTES_MAX),
            other => panic!("{other:?}"),
        }
    }
}
