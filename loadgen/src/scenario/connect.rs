//! `connect`: ramp to N logged-in sessions at a connect rate, hold them with
//! heartbeat pings only, and report the node's resident memory per session
//! (RSS delta from `/metrics` divided by the sessions gained). The headline
//! histogram is session establishment: intended connect time to `LoginOk`.

use super::ping::PingConnection;
use super::{Check, Headline, LoadShape, Scenario, ScenarioConnection};
use redrain_net::message::Request;
use redrain_net::Response;

pub const CONNECT_COUNTERS: &[&str] = &["heartbeat_echo_mismatches", "heartbeat_wrong_response_type"];

#[derive(Debug, Clone, Default)]
pub struct ConnectScenario;

impl Scenario for ConnectScenario {
    type Connection = ConnectConnection;

    fn name(&self) -> &'static str {
        "connect"
    }
    fn counter_names(&self) -> &'static [&'static str] {
        CONNECT_COUNTERS
    }
    fn load_shape(&self) -> LoadShape {
        LoadShape::Heartbeat
    }
    fn headline(&self) -> Headline {
        Headline::Sessions
    }
    fn connection(&self, index: u64) -> ConnectConnection {
        use super::ping::PingScenario;
        ConnectConnection { heartbeat: PingScenario::new(8).connection(index) }
    }
}

/// Heartbeats are small pings checked like the ping scenario's.
#[derive(Debug)]
pub struct ConnectConnection {
    heartbeat: PingConnection,
}

impl ScenarioConnection for ConnectConnection {
    fn next_request(&mut self, sequence: u64) -> Request<'_> {
        self.heartbeat.next_request(sequence)
    }
    fn check(&mut self, sequence: u64, response: &Response<'_>, counters: &mut [u64]) -> Check {
        self.heartbeat.check(sequence, response, counters)
    }
}
