//! Operator switches: what they are, how every core sees them, how they are kept.
//!
//! The admin thread changes the [`SwitchBoard`] (one lock, taken only by the admin thread
//! and by a core whose copy is stale); every core compares the board's version with its
//! own on each housekeeping tick (100 ms) and copies the switches when they changed, so a
//! change reaches every core within a tick and the request path reads a plain local copy.
//! Each core publishes the version it applied, so the admin API can answer only once every
//! core has the change. Core 0 writes the switches into a keyed table (`data_dir/switches`)
//! and publishes the version it persisted; at start the node reads them back.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use thiserror::Error;

/// Ticket keys an operator may blacklist at once.
pub const BLACKLIST_KEYS_MAX: usize = 4_096;

/// Every switch an operator can set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Switches {
    /// Shakes are answered `Paused` (opens go on).
    pub paused: bool,
    /// Node issuance quota per second (None: the configured one).
    pub quota_per_s: Option<u64>,
    /// The degrade level never goes below this.
    pub degrade_floor: u8,
    /// Ticket key ids refused at open (and not issued) on top of the keyring's blacklist.
    pub blacklist: BTreeSet<u16>,
    /// Key ids the keyring file blacklists (reloaded on SIGHUP).
    pub keyring_blacklist: BTreeSet<u16>,
    /// A failed peer whose files this node should issue (applies at the next start).
    pub adopt_node: Option<u16>,
    /// No new logins (Draining); /healthz answers 503 so the balancer moves users away.
    pub draining: bool,
    /// Messages per user per second, sustained (None: `messages_per_user_per_s`).
    pub messages_per_user_per_s: Option<u32>,
    /// Syncs per user per second, sustained (None: `syncs_per_user_per_s`).
    pub syncs_per_user_per_s: Option<u32>,
}

impl Switches {
    /// Whether tickets under `key_id` are refused.
    pub fn key_refused(&self, key_id: u16) -> bool {
        self.blacklist.contains(&key_id) || self.keyring_blacklist.contains(&key_id)
    }
}

/// One change an operator asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchChange {
    Pause,
    Resume,
    Quota(u64),
    Degrade(u8),
    Blacklist(u16),
    Whitelist(u16),
    Adopt(u16),
    Drain,
    /// Per-user message rate (Send, lucky packets, SyncAck), per second.
    MessageRate(u32),
    /// Per-user sync rate, per second.
    SyncRate(u32),
}

/// A change the board refuses.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SwitchError {
    #[error("degrade level {0} is above the top level {max}", max = crate::overload::backoff::LEVEL_MAX)]
    LevelTooHigh(u8),
    #[error("the operator blacklist already holds {BLACKLIST_KEYS_MAX} keys")]
    BlacklistFull,
    #[error("bad switch value: {0}")]
    BadValue(String),
}

impl SwitchChange {
    /// Parses an admin API path's last segment and value (`quota`, `"5000"`).
    pub fn parse(name: &str, value: Option<&str>) -> Result<SwitchChange, SwitchError> {
        fn number<T: std::str::FromStr>(name: &str, value: Option<&str>) -> Result<T, SwitchError> {
            let v = value.ok_or_else(|| SwitchError::BadValue(format!("{name} needs a value")))?;
            v.trim().parse().map_err(|_| SwitchError::BadValue(format!("{name}: {v:?} is not a valid number")))
        }
        Ok(match name {
            "pause" => SwitchChange::Pause,
            "resume" => SwitchChange::Resume,
            "drain" => SwitchChange::Drain,
            "quota" => SwitchChange::Quota(number(name, value)?),
            "degrade" => SwitchChange::Degrade(number(name, value)?),
            "blacklist" => SwitchChange::Blacklist(number(name, value)?),
            "whitelist" => SwitchChange::Whitelist(number(name, value)?),
            "adopt" => SwitchChange::Adopt(number(name, value)?),
            "messages_per_user_per_s" => SwitchChange::MessageRate(number(name, value)?),
            "syncs_per_user_per_s" => SwitchChange::SyncRate(number(name, value)?),
            other => return Err(SwitchError::BadValue(format!("unknown switch {other:?}"))),
        })
    }

    /// Applies the change to `s`.
    pub fn apply(self, s: &mut Switches) -> Result<(), SwitchError> {
        match self {
            SwitchChange::Pause => s.paused = true,
            SwitchChange::Resume => s.paused = false,
            SwitchChange::Quota(n) => s.quota_per_s = Some(n),
            SwitchChange::Degrade(level) if level > crate::overload::backoff::LEVEL_MAX => {
                return Err(SwitchError::LevelTooHigh(level))
            }
            SwitchChange::Degrade(level) => s.degrade_floor = level,
            SwitchChange::Blacklist(_) if s.blacklist.len() >= BLACKLIST_KEYS_MAX => {
                return Err(SwitchError::BlacklistFull)
            }
            SwitchChange::Blacklist(key) => {
                s.blacklist.insert(key);
            }
            SwitchChange::Whitelist(key) => {
                s.blacklist.remove(&key);
            }
            SwitchChange::Adopt(node) => s.adopt_node = Some(node),
            SwitchChange::Drain => s.draining = true,
            SwitchChange::MessageRate(0) | SwitchChange::SyncRate(0) => {
                return Err(SwitchError::BadValue("a per-user rate must be at least 1 per second".into()))
            }
            SwitchChange::MessageRate(n) => s.messages_per_user_per_s = Some(n),
            SwitchChange::SyncRate(n) => s.syncs_per_user_per_s = Some(n),
        }
        Ok(())
    }
}

/// The persisted form: one table entry per switch (key, value), all text.
pub fn to_entries(s: &Switches) -> Vec<(&'static str, String)> {
    let list = |set: &BTreeSet<u16>| set.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    vec![
        ("paused", u8::from(s.paused).to_string()),
        ("quota_per_s", s.quota_per_s.map(|q| q.to_string()).unwrap_or_default()),
        ("degrade_floor", s.degrade_floor.to_string()),
        ("blacklist", list(&s.blacklist)),
        ("adopt_node", s.adopt_node.map(|n| n.to_string()).unwrap_or_default()),
        ("draining", u8::from(s.draining).to_string()),
        ("messages_per_user_per_s", s.messages_per_user_per_s.map(|n| n.to_string()).unwrap_or_default()),
        ("syncs_per_user_per_s", s.syncs_per_user_per_s.map(|n| n.to_string()).unwrap_or_default()),
    ]
}

/// Reads switches back from their entries (`get(key)`); a missing or unreadable entry
/// keeps its default and is reported.
pub fn from_entries(get: impl Fn(&str) -> Option<String>) -> (Switches, Vec<String>) {
    let mut s = Switches::default();
    let mut bad = Vec::new();
    let mut read = |key: &str, f: &mut dyn FnMut(&str) -> bool| {
        if let Some(v) = get(key) {
            if !f(&v) {
                bad.push(format!("{key}={v:?}"));
            }
        }
    };
    read("paused", &mut |v| v.parse::<u8>().map(|b| s.paused = b == 1).is_ok());
    read("quota_per_s", &mut |v| v.is_empty() || v.parse().map(|q| s.quota_per_s = Some(q)).is_ok());
    read("degrade_floor", &mut |v| {
        v.parse::<u8>()
            .ok()
            .filter(|l| *l <= crate::overload::backoff::LEVEL_MAX)
            .map(|l| s.degrade_floor = l)
            .is_some()
    });
    read("blacklist", &mut |v| {
        v.split(',')
            .filter(|k| !k.is_empty())
            .try_for_each(|k| {
                k.parse().map(|k| {
                    s.blacklist.insert(k);
                })
            })
            .is_ok()
    });
    read("adopt_node", &mut |v| v.is_empty() || v.parse().map(|n| s.adopt_node = Some(n)).is_ok());
    read("draining", &mut |v| v.parse::<u8>().map(|b| s.draining = b == 1).is_ok());
    read("messages_per_user_per_s", &mut |v| {
        v.is_empty() || v.parse().ok().filter(|n| *n > 0).map(|n| s.messages_per_user_per_s = Some(n)).is_some()
    });
    read("syncs_per_user_per_s", &mut |v| {
        v.is_empty() || v.parse().ok().filter(|n| *n > 0).map(|n| s.syncs_per_user_per_s = Some(n)).is_some()
    });
    (s, bad)
}

/// Who changed what, when (kept in the log and the switches table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub version: u64,
    pub unix_ms: u64,
    /// Which admin token (`current`/`previous`), the peer address, and the operator's
    /// `X-Operator` header if sent.
    pub who: String,
    pub what: String,
}

/// The switches every core reads, versioned.
pub struct SwitchBoard {
    current: Mutex<(u64, Arc<Switches>)>,
    version: AtomicU64,
    applied: Vec<AtomicU64>,
    persisted: AtomicU64,
    restored: std::sync::atomic::AtomicBool,
    audit: Mutex<Vec<AuditEntry>>,
}

/// Audit entries kept in memory (the log and the table have them all).
pub const AUDIT_ENTRIES_MAX: usize = 256;

impl SwitchBoard {
    /// A board for `cores` cores starting from `initial` (version 1).
    pub fn new(cores: usize, initial: Switches) -> Self {
        Self {
            current: Mutex::new((1, Arc::new(initial))),
            version: AtomicU64::new(1),
            applied: (0..cores).map(|_| AtomicU64::new(0)).collect(),
            persisted: AtomicU64::new(1),
            restored: std::sync::atomic::AtomicBool::new(false),
            audit: Mutex::new(Vec::new()),
        }
    }

    /// Takes the switches read back from the table at start (they are durable already);
    /// the keyring's blacklist, loaded from the keyring file, is kept.
    pub fn restore(&self, mut switches: Switches) {
        let mut g = self.current.lock().unwrap_or_else(|p| p.into_inner());
        switches.keyring_blacklist = g.1.keyring_blacklist.clone();
        let version = g.0 + 1;
        *g = (version, Arc::new(switches));
        self.version.store(version, Ordering::Release);
        self.persisted.fetch_max(version, Ordering::AcqRel);
        self.restored.store(true, Ordering::Release);
    }

    /// Whether the switches were restored (cores wait for it before accepting).
    pub fn is_restored(&self) -> bool {
        self.restored.load(Ordering::Acquire)
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The current switches and their version.
    pub fn snapshot(&self) -> (u64, Arc<Switches>) {
        let g = self.current.lock().unwrap_or_else(|p| p.into_inner());
        (g.0, g.1.clone())
    }

    /// Applies `change` (by `who`, at `unix_ms`); returns the new version.
    pub fn change(&self, change: SwitchChange, who: &str, unix_ms: u64) -> Result<u64, SwitchError> {
        self.replace(who, &format!("{change:?}"), unix_ms, |s| change.apply(s))
    }

    /// Replaces the keyring's blacklist (SIGHUP reload).
    pub fn set_keyring_blacklist(&self, keys: BTreeSet<u16>, unix_ms: u64) -> u64 {
        let what = format!("keyring blacklist {keys:?}");
        self.replace("sighup", &what, unix_ms, move |s| {
            s.keyring_blacklist = keys;
            Ok(())
        })
        .unwrap_or_else(|_| self.version())
    }

    fn replace(
        &self,
        who: &str,
        what: &str,
        unix_ms: u64,
        f: impl FnOnce(&mut Switches) -> Result<(), SwitchError>,
    ) -> Result<u64, SwitchError> {
        let mut g = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = (*g.1).clone();
        f(&mut next)?;
        let version = g.0 + 1;
        *g = (version, Arc::new(next));
        self.version.store(version, Ordering::Release);
        drop(g);
        log::info!("switch change v{version}: who={who} what={what} when_unix_ms={unix_ms}");
        let mut audit = self.audit.lock().unwrap_or_else(|p| p.into_inner());
        if audit.len() >= AUDIT_ENTRIES_MAX {
            audit.remove(0);
        }
        audit.push(AuditEntry { version, unix_ms, who: who.to_owned(), what: what.to_owned() });
        Ok(version)
    }

    /// Audit entries newer than `version`.
    pub fn audit_after(&self, version: u64) -> Vec<AuditEntry> {
        let audit = self.audit.lock().unwrap_or_else(|p| p.into_inner());
        audit.iter().filter(|e| e.version > version).cloned().collect()
    }

    /// Core `core` runs with switches of `version`.
    pub fn mark_applied(&self, core: usize, version: u64) {
        self.applied[core].store(version, Ordering::Release);
    }

    /// The version each core runs with.
    pub fn applied(&self) -> Vec<u64> {
        self.applied.iter().map(|a| a.load(Ordering::Acquire)).collect()
    }

    /// Whether every core runs with `version` or later.
    pub fn applied_everywhere(&self, version: u64) -> bool {
        self.applied.iter().all(|a| a.load(Ordering::Acquire) >= version)
    }

    pub fn mark_persisted(&self, version: u64) {
        self.persisted.fetch_max(version, Ordering::AcqRel);
    }

    pub fn persisted(&self) -> u64 {
        self.persisted.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_switch_round_trips_through_its_table_entries() {
        let mut s = Switches::default();
        for change in [
            SwitchChange::Pause,
            SwitchChange::Quota(5_000),
            SwitchChange::Degrade(3),
            SwitchChange::Blacklist(7),
            SwitchChange::Blacklist(9),
            SwitchChange::Whitelist(7),
            SwitchChange::Adopt(2),
            SwitchChange::Drain,
            SwitchChange::MessageRate(3),
            SwitchChange::SyncRate(12),
        ] {
            change.apply(&mut s).unwrap();
        }
        let entries: std::collections::HashMap<_, _> = to_entries(&s).into_iter().collect();
        let (back, bad) = from_entries(|k| entries.get(k).cloned());
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(back, s);
        assert_eq!(back.blacklist.iter().copied().collect::<Vec<_>>(), vec![9]);
        assert!(back.key_refused(9) && !back.key_refused(7));
        assert_eq!((back.messages_per_user_per_s, back.syncs_per_user_per_s), (Some(3), Some(12)));
    }

    #[test]
    fn bad_values_are_typed_errors_and_leave_the_board_unchanged() {
        let board = SwitchBoard::new(2, Switches::default());
        assert!(matches!(SwitchChange::parse("quota", Some("lots")), Err(SwitchError::BadValue(_))));
        assert!(matches!(SwitchChange::parse("quota", None), Err(SwitchError::BadValue(_))));
        assert!(matches!(SwitchChange::parse("explode", None), Err(SwitchError::BadValue(_))));
        let zero_rate = SwitchChange::parse("messages_per_user_per_s", Some("0")).unwrap();
        assert!(matches!(board.change(zero_rate, "test", 1), Err(SwitchError::BadValue(_))));
        assert!(matches!(SwitchChange::parse("syncs_per_user_per_s", Some("-1")), Err(SwitchError::BadValue(_))));
        assert_eq!(board.change(SwitchChange::Degrade(9), "test", 1), Err(SwitchError::LevelTooHigh(9)));
        assert_eq!(board.version(), 1);
        let (_, bad) = from_entries(|k| (k == "degrade_floor").then(|| "77".to_string()));
        assert_eq!(bad, vec!["degrade_floor=\"77\"".to_string()]);
    }

    #[test]
    fn a_change_is_versioned_audited_and_applied_everywhere_only_when_every_core_says_so() {
        let board = SwitchBoard::new(2, Switches::default());
        let v = board.change(SwitchChange::Pause, "token=current peer=127.0.0.1:1", 42).unwrap();
        assert_eq!(v, 2);
        assert!(board.snapshot().1.paused);
        assert!(!board.applied_everywhere(v));
        board.mark_applied(0, v);
        assert!(!board.applied_everywhere(v));
        board.mark_applied(1, v);
        assert!(board.applied_everywhere(v));
        let audit = board.audit_after(1);
        assert_eq!(audit.len(), 1);
        assert_eq!((audit[0].unix_ms, audit[0].what.as_str()), (42, "Pause"));
    }
}
