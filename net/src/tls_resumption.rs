//! Stateless TLS session resumption: session tickets sealed under keys that
//! rotate on a fixed schedule, one ticketer for every core of the node.
//!
//! The node keeps no per-session resumption state: rustls puts the resumption
//! secret into a ticket, this module seals it (AES-256-GCM, random nonce) under
//! the key of the current *epoch* (`unix time / rotation period`), and opens a
//! ticket only when its epoch is the current or the previous one. So a ticket
//! is honoured for at least one rotation period and at most two, and a key is
//! forgotten once its epoch is two behind, whether or not any handshake
//! happened in between (the epoch comes from the clock, not from traffic).
//!
//! Keys are random per process: a restarted node refuses older tickets and the
//! clients fall back to a full handshake. All cores share one
//! [`RotatingTicketer`] through the `Arc<rustls::ServerConfig>`; its lock is
//! held for a key lookup only, once per ticket issued or presented, never per
//! request.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;
use std::sync::{Arc, Mutex};

/// Bytes before the sealed part of a ticket: the epoch (u64, big-endian) and the nonce.
const TICKET_HEADER_BYTES: usize = 8 + NONCE_LEN;
/// Longest rotation period accepted (a ticket lifetime is a u32 of seconds, and
/// TLS 1.3 caps it at 7 days).
pub const ROTATION_PERIOD_S_MAX: u64 = 7 * 24 * 3600 / 2;

/// The clock a ticketer reads: seconds since the Unix epoch.
pub type UnixSecondsClock = Arc<dyn Fn() -> u64 + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum TicketerError {
    #[error("ticket key rotation period must be 1..={ROTATION_PERIOD_S_MAX} s, got {0}")]
    Period(u64),
}

/// Seals and opens session tickets; see the module documentation.
pub struct RotatingTicketer {
    period_s: u64,
    clock: UnixSecondsClock,
    keys: Mutex<EpochKeys>,
    random: SystemRandom,
}

#[derive(Default)]
struct EpochKeys {
    current: Option<(u64, LessSafeKey)>,
    previous: Option<(u64, LessSafeKey)>,
}

impl std::fmt::Debug for RotatingTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotatingTicketer").field("period_s", &self.period_s).finish_non_exhaustive()
    }
}

impl RotatingTicketer {
    /// A ticketer on the system clock whose keys rotate every `period_s` seconds.
    pub fn new(period_s: u64) -> Result<Self, TicketerError> {
        Self::with_clock(period_s, Arc::new(crate::token::now_unix_s))
    }

    /// A ticketer reading `clock` (tests move time by hand).
    pub fn with_clock(period_s: u64, clock: UnixSecondsClock) -> Result<Self, TicketerError> {
        if period_s == 0 || period_s > ROTATION_PERIOD_S_MAX {
            return Err(TicketerError::Period(period_s));
        }
        Ok(Self { period_s, clock, keys: Mutex::new(EpochKeys::default()), random: SystemRandom::new() })
    }

    fn epoch_now(&self) -> u64 {
        (self.clock)() / self.period_s
    }

    /// The keys as of `epoch`: a new current key when the epoch moved on, the
    /// old current kept as previous only when it is exactly one epoch behind.
    fn roll(&self, keys: &mut EpochKeys, epoch: u64) -> Option<()> {
        if keys.current.as_ref().is_some_and(|(e, _)| *e >= epoch) {
            return Some(());
        }
        let mut secret = [0u8; 32];
        self.random.fill(&mut secret).ok()?;
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &secret).ok()?);
        let old = keys.current.replace((epoch, key));
        keys.previous = old.filter(|(e, _)| e + 1 == epoch);
        Some(())
    }
}

impl ProducesTickets for RotatingTicketer {
    fn enabled(&self) -> bool {
        true
    }

    /// The lifetime clients are told: the shortest a ticket is honoured.
    fn lifetime(&self) -> u32 {
        self.period_s as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let epoch = self.epoch_now();
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut ticket = Vec::with_capacity(TICKET_HEADER_BYTES + plain.len() + AES_256_GCM.tag_len());
        ticket.extend_from_slice(&epoch.to_be_bytes());
        ticket.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        let mut keys = self.keys.lock().ok()?;
        self.roll(&mut keys, epoch)?;
        let (_, key) = keys.current.as_ref()?;
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(epoch.to_be_bytes()), &mut sealed)
            .ok()?;
        drop(keys);
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < TICKET_HEADER_BYTES + AES_256_GCM.tag_len() {
            return None;
        }
        let epoch = u64::from_be_bytes(cipher[..8].try_into().ok()?);
        let nonce = Nonce::try_assume_unique_for_key(&cipher[8..TICKET_HEADER_BYTES]).ok()?;
        let now = self.epoch_now();
        if epoch != now && epoch + 1 != now {
            return None;
        }
        let mut keys = self.keys.lock().ok()?;
        self.roll(&mut keys, now)?;
        let key = [&keys.current, &keys.previous].into_iter().flatten().find(|(e, _)| *e == epoch).map(|(_, k)| k)?;
        let mut opened = cipher[TICKET_HEADER_BYTES..].to_vec();
        let plain_len = key.open_in_place(nonce, Aad::from(epoch.to_be_bytes()), &mut opened).ok()?.len();
        opened.truncate(plain_len);
        Some(opened)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn ticketer_at(period_s: u64, start_s: u64) -> (RotatingTicketer, Arc<AtomicU64>) {
        let now = Arc::new(AtomicU64::new(start_s));
        let clock = now.clone();
        (RotatingTicketer::with_clock(period_s, Arc::new(move || clock.load(Ordering::Relaxed))).unwrap(), now)
    }

    #[test]
    fn a_ticket_opens_in_its_epoch_and_the_next_and_is_refused_once_its_key_rotated_out() {
        let (t, now) = ticketer_at(60, 6_000);
        let ticket = t.encrypt(b"resumption secret").unwrap();
        assert_eq!(t.decrypt(&ticket).as_deref(), Some(&b"resumption secret"[..]));
        now.store(6_059, Ordering::Relaxed);
        assert_eq!(t.decrypt(&ticket).as_deref(), Some(&b"resumption secret"[..]), "same epoch");
        now.store(6_060, Ordering::Relaxed);
        let newer = t.encrypt(b"newer").unwrap();
        assert_eq!(t.decrypt(&ticket).as_deref(), Some(&b"resumption secret"[..]), "previous epoch");
        now.store(6_120, Ordering::Relaxed);
        assert_eq!(t.decrypt(&ticket), None, "two epochs later the key is gone");
        assert_eq!(t.decrypt(&newer).as_deref(), Some(&b"newer"[..]));
    }

    #[test]
    fn a_key_is_forgotten_after_two_periods_even_without_any_handshake_in_between() {
        let (t, now) = ticketer_at(10, 100);
        let ticket = t.encrypt(b"x").unwrap();
        // No call at all during epoch 11; the next look is in epoch 12.
        now.store(125, Ordering::Relaxed);
        assert_eq!(t.decrypt(&ticket), None);
    }

    #[test]
    fn forged_truncated_and_foreign_tickets_are_refused() {
        let (t, _) = ticketer_at(60, 6_000);
        let (other, _) = ticketer_at(60, 6_000);
        let ticket = t.encrypt(b"secret").unwrap();
        assert_eq!(other.decrypt(&ticket), None, "another node's key");
        let mut flipped = ticket.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(t.decrypt(&flipped), None);
        let mut relabelled = ticket.clone();
        relabelled[7] ^= 1; // claims another epoch: authenticated as associated data
        assert_eq!(t.decrypt(&relabelled), None);
        for len in 0..TICKET_HEADER_BYTES + 16 {
            assert_eq!(t.decrypt(&ticket[..len.min(ticket.len())]), None);
        }
        assert_eq!(t.decrypt(&[]), None);
    }

    #[test]
    fn a_rotation_period_of_zero_or_beyond_the_ticket_lifetime_cap_is_refused() {
        assert!(matches!(RotatingTicketer::new(0), Err(TicketerError::Period(0))));
        assert!(RotatingTicketer::new(ROTATION_PERIOD_S_MAX + 1).is_err());
        assert_eq!(RotatingTicketer::new(3_600).unwrap().lifetime(), 3_600);
    }
}
