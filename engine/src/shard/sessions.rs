//! The sessions of one core, as the state machine keeps them: every connection on the core
//! (when it connected, when it last sent something, which (user, device) it logged in as)
//! and the one session per (user, device).
//!
//! Rules: a newer login of a (user, device) replaces the older session, which is closed
//! with `Replaced`; a logged-in session silent for `idle_ms` is closed with `IdleTimeout`; a
//! connection not logged in within `login_ms` of connecting is closed with `IdleTimeout`
//! too (pings before login do not extend it). Closes are outputs; the driver carries them
//! out. One sweep per second covers every connection, so no timer per connection exists.

use super::state::ConnId;
use redrain_net::ErrorCode;
use std::collections::HashMap;

/// Timeouts of the session rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimeouts {
    pub idle_ms: u64,
    pub login_ms: u64,
}

impl Default for SessionTimeouts {
    fn default() -> Self {
        Self { idle_ms: 90_000, login_ms: 10_000 }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    connected_at_ms: u64,
    last_activity_ms: u64,
    device: Option<(u64, u32)>,
}

/// Connections and sessions of one core.
#[derive(Debug, Default)]
pub struct Sessions {
    timeouts: SessionTimeouts,
    conns: HashMap<ConnId, Entry>,
    by_device: HashMap<(u64, u32), ConnId>,
    next_session_seq: u64,
}

impl Sessions {
    pub fn new(timeouts: SessionTimeouts) -> Self {
        Self { timeouts, next_session_seq: 1, ..Self::default() }
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    pub fn logged_in(&self) -> usize {
        self.by_device.len()
    }

    pub fn connected(&mut self, conn: ConnId, now_ms: u64) {
        self.conns.insert(conn, Entry { connected_at_ms: now_ms, last_activity_ms: now_ms, device: None });
    }

    /// Inbound bytes arrived on `conn`.
    pub fn activity(&mut self, conn: ConnId, now_ms: u64) {
        if let Some(e) = self.conns.get_mut(&conn) {
            e.last_activity_ms = now_ms;
        }
    }

    /// A verified login of (user, device) on `conn` (this is the user's home core). Returns
    /// the new session's sequence number and the connection it replaced, if any.
    pub fn login(&mut self, conn: ConnId, user_id: u64, device_id: u32) -> (u64, Option<ConnId>) {
        let device = (user_id, device_id);
        if let Some(e) = self.conns.get_mut(&conn) {
            e.device = Some(device);
        }
        let replaced = self.by_device.insert(device, conn).filter(|old| *old != conn);
        if let Some(old) = replaced {
            // The old connection stays until it closes, but no longer owns the device.
            if let Some(e) = self.conns.get_mut(&old) {
                e.device = None;
            }
        }
        let seq = self.next_session_seq;
        self.next_session_seq += 1;
        (seq, replaced)
    }

    /// `conn` closed. Returns whether it was a logged-in session.
    pub fn closed(&mut self, conn: ConnId) -> bool {
        let Some(e) = self.conns.remove(&conn) else { return false };
        match e.device {
            Some(device) if self.by_device.get(&device) == Some(&conn) => {
                self.by_device.remove(&device);
                true
            }
            _ => false,
        }
    }

    /// Connections the rules close now.
    pub fn expired(&self, now_ms: u64, out: &mut Vec<(ConnId, ErrorCode)>) {
        for (conn, e) in &self.conns {
            let expired = if e.device.is_some() {
                now_ms.saturating_sub(e.last_activity_ms) > self.timeouts.idle_ms
            } else {
                now_ms.saturating_sub(e.connected_at_ms) > self.timeouts.login_ms
            };
            if expired {
                out.push((*conn, ErrorCode::IdleTimeout));
            }
        }
    }

    /// Every connection (shutdown).
    pub fn all(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.conns.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_login_replaces_the_device_and_timeouts_close_silent_connections() {
        let mut s = Sessions::new(SessionTimeouts { idle_ms: 1_000, login_ms: 500 });
        s.connected(1, 0);
        s.connected(2, 0);
        s.connected(3, 0);
        assert_eq!(s.login(1, 7, 1), (1, None));
        assert_eq!(s.login(2, 7, 1), (2, Some(1)), "same (user, device): the older session is replaced");
        assert_eq!(s.login(3, 7, 2).1, None, "another device of the user is its own session");
        assert!(!s.closed(1), "the replaced connection no longer owns the device");
        assert_eq!(s.logged_in(), 2);
        s.connected(4, 0);
        s.activity(2, 900);
        let mut out = Vec::new();
        s.expired(1_200, &mut out);
        out.sort_by_key(|(conn, _)| *conn);
        assert_eq!(out, vec![(3, ErrorCode::IdleTimeout), (4, ErrorCode::IdleTimeout)]);
        assert!(s.closed(2));
        assert_eq!(s.connections(), 2);
    }
}
