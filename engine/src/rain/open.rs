//! Open: checking a sealed ticket by local computation, and the set of opened packets
//! that makes an open happen exactly once.
//!
//! Checks, cheapest first: layout version, issuing node, bound user (all in the clear
//! header), then the seal (AES-GCM), the expiry, then the inner ticket under the event's
//! keyring (blacklist/whitelist, redundancy), its packet id against the header, and its
//! batch against the manifest. Each failure has its own error code and counter; none of
//! them records anything.
//!
//! Exactly once: a packet is *opened* when its open record is durable. The first open
//! appends the record and waits; opens of the same packet meanwhile wait for the same
//! record; later opens answer the same amount at once, flagged as a repeat. Every packet a
//! user can open is sealed to that user, and a user is served only on its home core, so one
//! core's set decides. Memory: a durable open costs one `u64` in a hash set (about 9 bytes
//! at full load, 18 just after a resize).

use super::event::Event;
use super::seal::{SealKey, UnsealError};
use crate::tickets::format::{Ticket, TicketError};
use redrain_net::message::SEALED_TICKET_BYTES;
use redrain_net::ErrorCode;
use std::collections::{HashMap, HashSet};

/// A sealed ticket that passed every check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub ticket: Ticket,
    pub issued_at_unix_s: u32,
}

/// Checks a sealed ticket presented by `user_id` at `now_unix_s`.
pub fn verify(
    seal: &SealKey,
    event: &Event,
    sealed: &[u8; SEALED_TICKET_BYTES],
    user_id: u64,
    now_unix_s: u64,
    ttl_s: u64,
) -> Result<Verified, ErrorCode> {
    let unsealed = seal.unseal(sealed, user_id).map_err(|e| match e {
        UnsealError::Version(_) => ErrorCode::TicketMalformed,
        UnsealError::OtherNode(_) => ErrorCode::TicketOtherNode,
        UnsealError::OtherUser => ErrorCode::TicketOtherUser,
        UnsealError::Tampered => ErrorCode::TicketTampered,
    })?;
    let issued = u64::from(unsealed.header.issued_at_unix_s);
    if now_unix_s > issued.saturating_add(ttl_s) {
        return Err(ErrorCode::TicketExpired);
    }
    let ticket = event.decryptor.decrypt(&unsealed.ciphertext, unsealed.key_id).map_err(|e| match e {
        TicketError::Blacklisted { .. } | TicketError::NotWhitelisted { .. } => ErrorCode::TicketKeyRefused,
        _ => ErrorCode::TicketForged,
    })?;
    if ticket.packet_id != unsealed.header.packet_id {
        return Err(ErrorCode::TicketForged);
    }
    if !event.batch_known(ticket.batch_id) {
        return Err(ErrorCode::TicketUnknownBatch);
    }
    Ok(Verified { ticket, issued_at_unix_s: unsealed.header.issued_at_unix_s })
}

/// Where a packet stands in this core's open set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenState {
    /// Never opened here.
    New,
    /// Its record is being made durable.
    InFlight,
    /// Opened (durably).
    Opened,
    /// Its record is durable here but not yet on a peer (replicated queue, peers away).
    Unconfirmed,
}

/// A request waiting for an open record to become durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenWaiter {
    pub conn: u64,
    pub request_id: u32,
    /// The waiter's slot in its connection's ordered output.
    pub slot: u64,
    /// Whether this waiter is a repeat (another open created the record).
    pub repeat: bool,
}

/// The opened packets of one core and the opens in flight.
#[derive(Debug, Default)]
pub struct OpenSet {
    opened: HashSet<u64>,
    in_flight: HashMap<u64, (Ticket, Vec<OpenWaiter>)>,
    /// Records in the queue, not yet on 2 of 3 copies: packet -> its LSN.
    unconfirmed: HashMap<u64, u64>,
}

impl OpenSet {
    pub fn state(&self, packet_id: u64) -> OpenState {
        if self.opened.contains(&packet_id) {
            OpenState::Opened
        } else if self.unconfirmed.contains_key(&packet_id) {
            OpenState::Unconfirmed
        } else if self.in_flight.contains_key(&packet_id) {
            OpenState::InFlight
        } else {
            OpenState::New
        }
    }

    /// Packets opened (recovered at start and since).
    pub fn opened_len(&self) -> usize {
        self.opened.len()
    }

    pub fn in_flight_len(&self) -> usize {
        self.in_flight.len()
    }

    /// Marks a packet opened (recovery at start).
    pub fn recover(&mut self, packet_id: u64) {
        self.opened.insert(packet_id);
    }

    /// Starts the first open of a packet.
    pub fn begin(&mut self, ticket: Ticket, waiter: OpenWaiter) {
        debug_assert_eq!(self.state(ticket.packet_id), OpenState::New);
        self.in_flight.insert(ticket.packet_id, (ticket, vec![waiter]));
    }

    /// Another open of a packet whose record is in flight.
    pub fn join(&mut self, packet_id: u64, waiter: OpenWaiter) -> bool {
        match self.in_flight.get_mut(&packet_id) {
            Some((_, waiters)) => {
                waiters.push(waiter);
                true
            }
            None => false,
        }
    }

    /// The record of `packet_id` is in the queue (durable here) at `lsn`, but no peer
    /// confirmed it yet: it must never be appended again. Returns who waited.
    pub fn finish_unconfirmed(&mut self, packet_id: u64, lsn: u64) -> Option<(Ticket, Vec<OpenWaiter>)> {
        let done = self.in_flight.remove(&packet_id)?;
        self.unconfirmed.insert(packet_id, lsn);
        Some(done)
    }

    /// Records up to `commit_lsn` are on 2 of 3 copies: their packets are opened.
    pub fn confirm_up_to(&mut self, commit_lsn: u64) -> usize {
        let before = self.unconfirmed.len();
        let opened = &mut self.opened;
        self.unconfirmed.retain(|packet, lsn| {
            let confirmed = *lsn <= commit_lsn;
            if confirmed {
                opened.insert(*packet);
            }
            !confirmed
        });
        before - self.unconfirmed.len()
    }

    /// The record of `packet_id` is durable (`ok`) or failed: returns who waited.
    pub fn finish(&mut self, packet_id: u64, ok: bool) -> Option<(Ticket, Vec<OpenWaiter>)> {
        let done = self.in_flight.remove(&packet_id)?;
        if ok {
            self.opened.insert(packet_id);
        }
        Some(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter(conn: u64) -> OpenWaiter {
        OpenWaiter { conn, request_id: 1, slot: conn, repeat: false }
    }

    #[test]
    fn an_open_is_in_flight_until_durable_and_failures_record_nothing() {
        let ticket = Ticket { packet_id: 5, amount_fen: 100, batch_id: 0, key_id: 1 };
        let mut set = OpenSet::default();
        assert_eq!(set.state(5), OpenState::New);
        set.begin(ticket, waiter(1));
        assert_eq!(set.state(5), OpenState::InFlight);
        assert!(set.join(5, OpenWaiter { repeat: true, ..waiter(2) }));
        let (_, waiters) = set.finish(5, false).unwrap();
        assert_eq!(waiters.len(), 2);
        assert_eq!(set.state(5), OpenState::New, "a failed append leaves the packet unopened");
        set.begin(ticket, waiter(3));
        set.finish(5, true).unwrap();
        assert_eq!(set.state(5), OpenState::Opened);
        assert!(!set.join(5, waiter(4)));
    }

    #[test]
    fn an_unconfirmed_record_is_never_appended_again_and_opens_once_a_peer_has_it() {
        let ticket = Ticket { packet_id: 9, amount_fen: 100, batch_id: 0, key_id: 1 };
        let mut set = OpenSet::default();
        set.begin(ticket, waiter(1));
        set.finish_unconfirmed(9, 40).unwrap();
        assert_eq!(set.state(9), OpenState::Unconfirmed);
        assert_eq!(set.confirm_up_to(39), 0);
        assert_eq!(set.state(9), OpenState::Unconfirmed);
        assert_eq!(set.confirm_up_to(40), 1);
        assert_eq!(set.state(9), OpenState::Opened);
    }
}
