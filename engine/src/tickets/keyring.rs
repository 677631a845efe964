//! The keyring: the AES-128 ticket keys of one generated event, with the whitelist and
//! blacklist of key ids, and the [`TicketDecryptor`] that decrypts and checks tickets with it.
//!
//! The keyring is a JSON file written with mode 0600 next to (never inside) the ticket
//! directory; no key material ever goes into ticket files or the manifest. Keys are derived
//! from the generation's master secret with HMAC-SHA256, one per key id, so a generation is
//! reproducible from its seed; whoever holds the seed of a run can re-derive its keys, which is
//! why production runs omit `--seed` and draw the master secret from the OS.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use aes::cipher::{generic_array::GenericArray, KeyInit};
use aes::Aes128;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::format::{check_record, record_ciphertext, record_key_id, Ticket, TicketError, RECORD_BYTES};

/// Format string of the keyring file.
pub const KEYRING_FORMAT: &str = "redrain-keyring/1";
/// Number of distinct key ids (the id is 16 bits).
pub const KEY_IDS_MAX: usize = 1 << 16;

/// Derives the AES-128 key of `key_id` from a generation's master secret.
pub fn derive_key(master_secret: &[u8; 32], key_id: u16) -> [u8; 16] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(master_secret).expect("HMAC takes keys of any length");
    mac.update(b"redrain/ticket-key/v1");
    mac.update(&key_id.to_le_bytes());
    let digest = mac.finalize().into_bytes();
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[0..16]);
    key
}

/// Builds the AES-128 cipher for a key.
pub fn cipher_for(key: &[u8; 16]) -> Aes128 {
    Aes128::new(&GenericArray::from(*key))
}

/// One key of the keyring with the coverage the generator gave it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEntry {
    /// Key id, as stored in records.
    pub key_id: u16,
    /// The AES-128 key, hex encoded in the file.
    #[serde(with = "hex_key")]
    pub key: [u8; 16],
    /// Tickets encrypted under this key.
    pub packets: u64,
    /// Sum of the amounts of those tickets; at most the event's coverage cap.
    pub coverage_fen: u64,
}

mod hex_key {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(key: &[u8; 16], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(key))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<[u8; 16], D::Error> {
        let text = String::deserialize(deserializer)?;
        let mut key = [0u8; 16];
        hex::decode_to_slice(&text, &mut key).map_err(serde::de::Error::custom)?;
        Ok(key)
    }
}

/// The keyring of one generated event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyring {
    /// Always [`KEYRING_FORMAT`].
    pub format: String,
    /// Event name from the budget.
    pub event_name: String,
    /// SHA-256 of the budget file the keys were generated for (hex).
    pub budget_sha256: String,
    /// Coverage cap per key (fen).
    pub key_coverage_cap_fen: u64,
    /// All keys, by increasing id.
    pub keys: Vec<KeyEntry>,
    /// When set, only these key ids are accepted.
    #[serde(default)]
    pub whitelist: Option<BTreeSet<u16>>,
    /// Key ids that are refused (a leaked key, a withdrawn batch).
    #[serde(default)]
    pub blacklist: BTreeSet<u16>,
}

/// Failure to load, check or save a keyring.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// Reading or writing the file failed.
    #[error("keyring {path}: {source}")]
    Io {
        /// The keyring path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a valid keyring document.
    #[error("keyring {path} is not valid JSON: {source}")]
    Parse {
        /// The keyring path.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// The document parsed but breaks a keyring rule.
    #[error("keyring {path}: {reason}")]
    Invalid {
        /// The keyring path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Largest keyring file accepted (65,536 keys take about 8 MB of JSON).
pub const KEYRING_BYTES_MAX: u64 = 64 << 20;

impl Keyring {
    /// Loads and checks a keyring file.
    pub fn load(path: &Path) -> Result<Keyring, KeyringError> {
        let io = |source| KeyringError::Io { path: path.to_path_buf(), source };
        let metadata = std::fs::metadata(path).map_err(io)?;
        if metadata.len() > KEYRING_BYTES_MAX {
            return Err(KeyringError::Invalid {
                path: path.to_path_buf(),
                reason: format!("file is {} bytes, limit {KEYRING_BYTES_MAX}", metadata.len()),
            });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        let keyring: Keyring = serde_json::from_slice(&bytes)
            .map_err(|source| KeyringError::Parse { path: path.to_path_buf(), source })?;
        keyring.check().map_err(|reason| KeyringError::Invalid { path: path.to_path_buf(), reason })?;
        Ok(keyring)
    }

    fn check(&self) -> Result<(), String> {
        if self.format != KEYRING_FORMAT {
            return Err(format!("format is {:?}, expected {KEYRING_FORMAT:?}", self.format));
        }
        let mut seen = BTreeSet::new();
        for entry in &self.keys {
            if !seen.insert(entry.key_id) {
                return Err(format!("key id {} appears twice", entry.key_id));
            }
            if entry.coverage_fen > self.key_coverage_cap_fen {
                return Err(format!(
                    "key {} covers {} fen, above the cap {}",
                    entry.key_id, entry.coverage_fen, self.key_coverage_cap_fen
                ));
            }
        }
        Ok(())
    }

    /// Writes the keyring with mode 0600: to a temporary file created with that mode, synced,
    /// then renamed over `path`, so the keys are never readable by others, even briefly.
    pub fn save(&self, path: &Path) -> Result<(), KeyringError> {
        let io = |source| KeyringError::Io { path: path.to_path_buf(), source };
        let mut json = serde_json::to_vec_pretty(self)
            .map_err(|source| KeyringError::Parse { path: path.to_path_buf(), source })?;
        json.push(b'\n');
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".tmp");
        let temporary = PathBuf::from(temporary);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&temporary).map_err(io)?;
        #[cfg(unix)]
        {
            // The mode given at creation is masked by the umask and ignored for an existing
            // file; set it explicitly.
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        }
        file.write_all(&json).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&temporary, path).map_err(io)?;
        Ok(())
    }

    /// Finds a key by id.
    pub fn key(&self, key_id: u16) -> Option<&KeyEntry> {
        self.keys.binary_search_by_key(&key_id, |entry| entry.key_id).ok().map(|index| &self.keys[index])
    }

    /// Builds the decryptor that decrypts tickets with these keys and applies the lists.
    pub fn decryptor(&self) -> TicketDecryptor {
        TicketDecryptor::new(self)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyStatus {
    Allowed,
    Blacklisted,
    NotWhitelisted,
}

/// Decrypts and checks tickets with a keyring, the whitelist and the blacklist applied.
///
/// Lookup is O(1): a table indexed by key id (65,536 entries) points at the expanded AES key.
///
/// ```
/// use redrain_engine::tickets::keyring::{Keyring, KeyEntry, KEYRING_FORMAT};
/// use redrain_engine::tickets::format::{Ticket, TicketError};
/// let keyring = Keyring {
///     format: KEYRING_FORMAT.into(),
///     event_name: "demo".into(),
///     budget_sha256: String::new(),
///     key_coverage_cap_fen: 30_000_000,
///     keys: vec![KeyEntry { key_id: 1, key: [9; 16], packets: 1, coverage_fen: 500 }],
///     whitelist: None,
///     blacklist: [1].into_iter().collect(),
/// };
/// let decryptor = keyring.decryptor();
/// let ticket = Ticket { packet_id: 1, amount_fen: 500, batch_id: 0, key_id: 1 };
/// let ciphertext = ticket.encrypt(&redrain_engine::tickets::keyring::cipher_for(&[9; 16]));
/// assert_eq!(decryptor.decrypt(&ciphertext, 1), Err(TicketError::Blacklisted { key_id: 1 }));
/// ```
pub struct TicketDecryptor {
    /// Index into `ciphers` per key id; `u32::MAX` when the key is unknown.
    cipher_index_by_key_id: Vec<u32>,
    ciphers: Vec<(Aes128, KeyStatus)>,
}

impl TicketDecryptor {
    fn new(keyring: &Keyring) -> TicketDecryptor {
        let mut cipher_index_by_key_id = vec![u32::MAX; KEY_IDS_MAX];
        let mut ciphers = Vec::with_capacity(keyring.keys.len());
        for entry in &keyring.keys {
            let status = if keyring.blacklist.contains(&entry.key_id) {
                KeyStatus::Blacklisted
            } else if keyring.whitelist.as_ref().is_some_and(|whitelist| !whitelist.contains(&entry.key_id)) {
                KeyStatus::NotWhitelisted
            } else {
                KeyStatus::Allowed
            };
            cipher_index_by_key_id[usize::from(entry.key_id)] = ciphers.len() as u32;
            ciphers.push((cipher_for(&entry.key), status));
        }
        TicketDecryptor { cipher_index_by_key_id, ciphers }
    }

    /// The cipher of an allowed key, or why the key is refused.
    pub fn cipher(&self, key_id: u16) -> Result<&Aes128, TicketError> {
        let index = self.cipher_index_by_key_id[usize::from(key_id)];
        let Some((cipher, status)) = self.ciphers.get(index as usize) else {
            return Err(TicketError::UnknownKey { key_id });
        };
        match status {
            KeyStatus::Allowed => Ok(cipher),
            KeyStatus::Blacklisted => Err(TicketError::Blacklisted { key_id }),
            KeyStatus::NotWhitelisted => Err(TicketError::NotWhitelisted { key_id }),
        }
    }

    /// Decrypts a ticket ciphertext stored with `key_id` and checks its redundancy.
    pub fn decrypt(&self, ciphertext: &[u8; 16], key_id: u16) -> Result<Ticket, TicketError> {
        Ticket::decrypt(ciphertext, key_id, self.cipher(key_id)?)
    }

    /// Checks a whole record read at `position` of a file with CRC seed `crc_seed` (see
    /// [`super::format::FileTag::crc_seed`]) and decrypts it.
    pub fn decrypt_record(
        &self,
        record: &[u8; RECORD_BYTES],
        position: u64,
        crc_seed: u32,
    ) -> Result<Ticket, TicketError> {
        check_record(record, position, crc_seed)?;
        self.decrypt(&record_ciphertext(record), record_key_id(record))
    }
}
