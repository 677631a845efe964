//! Scenarios: what a logged-in connection asks and what counts as a right answer.
//!
//! A scenario is a small, self-contained addition: implement [`Scenario`] (its
//! name, its own counters, the load shape it wants) and [`ScenarioConnection`]
//! (the request generator and the response checker of one connection), then add
//! a subcommand in [`crate::cli`]. The driver does everything else: connecting,
//! handshake and login, scheduling, matching responses to requests by request id,
//! latency histograms, error codes, duplicate and unexpected responses.
//!
//! `shake` plays the red-packet rain (shake, open every win); `chat` sends one-to-one and
//! group messages and syncs every device's timeline.

pub mod chat;
pub mod connect;
pub mod ping;
pub mod shake;

use redrain_net::message::Request;
use redrain_net::Response;

/// Which histogram is the headline of a scenario (the `.hgrm` file and the
/// latency rows of the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Headline {
    /// Request latency (intended send to response).
    Requests,
    /// Session establishment latency (intended connect to `LoginOk`).
    Sessions,
}

/// The load shape a scenario applies after login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadShape {
    /// Requests as configured by `--rate` or `--in-flight`.
    Requests,
    /// Only keep-alive pings at the node's heartbeat interval.
    Heartbeat,
}

/// Verdict of a scenario on one non-error response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Ok,
    /// The response answered the request but its content is wrong; the
    /// scenario has incremented its own counter saying how.
    Failed,
}

/// A workload, shared by every connection of a run.
pub trait Scenario: Send + Sync + 'static {
    type Connection: ScenarioConnection;

    /// Name in tables, JSON and file names.
    fn name(&self) -> &'static str;
    /// Names of this scenario's own counters, in the order the connection's
    /// `counters` slice holds them.
    fn counter_names(&self) -> &'static [&'static str];
    fn load_shape(&self) -> LoadShape;
    fn headline(&self) -> Headline;
    /// State of connection `index` (0-based, unique within the run).
    fn connection(&self, index: u64) -> Self::Connection;
    /// Called once after every connection ended: a scenario that keeps run-wide books
    /// (deliveries checked across connections) writes its final counters over the summed
    /// per-connection ones and returns its own latency histograms (name, microseconds).
    fn finish(&self, _counters: &mut [u64]) -> Vec<(&'static str, hdrhistogram::Histogram<u64>)> {
        Vec::new()
    }
}

/// What a connection still wants once its schedule is over (see
/// [`ScenarioConnection::drain_want`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainWant {
    /// Send the next request now.
    Now,
    /// Nothing now; ask again shortly (other connections' work may still arrive).
    Later,
    /// Nothing more: the connection may end.
    Done,
}

/// The request generator and response checker of one connection.
pub trait ScenarioConnection: 'static {
    /// The request to send as number `sequence` (0, 1, 2, ... on this
    /// connection). The driver encodes it with the client codec and stores
    /// `sequence` with the request id.
    fn next_request(&mut self, sequence: u64) -> Request<'_>;
    /// Checks the non-error response to request number `sequence`.
    /// `counters` has one slot per [`Scenario::counter_names`] entry.
    fn check(&mut self, sequence: u64, response: &Response<'_>, counters: &mut [u64]) -> Check;
    /// Sees the `Error` answer to request number `sequence` (the driver counts it by
    /// code too). Scenarios with requests that depend on earlier answers use it.
    fn on_error(&mut self, _sequence: u64, _code: u16, _retry_after_ms: u32, _counters: &mut [u64]) {}
    /// Sees a push (request id 0) other than `Closing`; true when the scenario used it
    /// (otherwise the driver counts it in `other_pushes`).
    fn on_push(&mut self, _response: &Response<'_>, _counters: &mut [u64]) -> bool {
        false
    }
    /// Asked after the schedule ended, until the drain deadline (also while earlier
    /// requests are outstanding): whether to send one more request (a final sync).
    /// Scenarios that only answer what they asked say `Done`.
    fn drain_want(&mut self) -> DrainWant {
        DrainWant::Done
    }
    /// Whether to leave the next open-loop slot out (the node asked this client to back
    /// off); counted by the scenario in `counters`.
    fn skip(&mut self, _counters: &mut [u64]) -> bool {
        false
    }
    /// The node asked this connection to wait (a refusal's retry-after): no request before
    /// this instant. The closed loop sleeps until then instead of sending; the open loop
    /// asks [`skip`](Self::skip) per slot.
    fn hold_until(&mut self) -> Option<std::time::Instant> {
        None
    }
}
