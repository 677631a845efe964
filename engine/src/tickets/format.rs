//! The ticket and its 26-byte binary record: layout, encoding and the checks that do not
//! need a key (CRC, position).
//!
//! A ticket is 16 bytes of plaintext encrypted with AES-128 used as a block permutation
//! ("encode then encipher"): the plaintext carries 6 bytes of redundancy (a 4-byte magic and a
//! copy of the key id) that must come back intact on decryption. A record wraps the ciphertext
//! with the fields a reader needs before it can decrypt (the key id), the record's own index in
//! its file, and a CRC32C that also binds the record to its file.
//!
//! Plaintext (16 bytes, little endian):
//!
//! | bytes  | field        | range                              |
//! |--------|--------------|------------------------------------|
//! | 0..5   | `packet_id`  | 40 bits, dense over the event      |
//! | 5..8   | `amount_fen` | 24 bits, at most 16,777,215 fen    |
//! | 8..10  | `batch_id`   | 16 bits, meaning in the manifest   |
//! | 10..12 | `key_id`     | 16 bits, must equal the record's   |
//! | 12..16 | magic        | `b"RRT1"`                          |
//!
//! Record (26 bytes):
//!
//! | bytes  | field                                                            |
//! |--------|------------------------------------------------------------------|
//! | 0..16  | AES-128 ciphertext of the plaintext under key `key_id`           |
//! | 16..18 | `key_id` u16 LE (plaintext routing field: which key decrypts)    |
//! | 18..22 | `record_index` u32 LE (position of the record in its file)       |
//! | 22..26 | CRC32C u32 LE over the file tag (node, core, slot) then bytes 0..22 |
//!
//! The record at index `i` of a file starts at byte `26 * i`; files have no header.

use aes::cipher::{generic_array::GenericArray, BlockDecrypt, BlockEncrypt};
use aes::Aes128;

/// Size of one binary record in a ticket file.
pub const RECORD_BYTES: usize = 26;
/// Size of the encrypted ticket.
pub const CIPHERTEXT_BYTES: usize = 16;
/// Largest packet id a ticket can carry (40 bits).
pub const PACKET_ID_MAX: u64 = (1 << 40) - 1;
/// Largest amount a ticket can carry (24 bits, about 167,772 yuan).
pub const AMOUNT_FEN_MAX: u32 = (1 << 24) - 1;
/// Redundancy checked on decryption; also the format version of the plaintext.
pub const TICKET_MAGIC: [u8; 4] = *b"RRT1";

/// The decrypted content of one ticket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ticket {
    /// Globally unique, dense packet id.
    pub packet_id: u64,
    /// Amount of the packet in fen (0.01 yuan).
    pub amount_fen: u32,
    /// Batch id; the manifest maps it to merchant, slot and kind.
    pub batch_id: u16,
    /// Id of the key the ticket is encrypted under.
    pub key_id: u16,
}

impl Ticket {
    /// Encodes the plaintext block. Callers guarantee the field ranges (the generator checks
    /// them when it plans); out-of-range values are a bug, hence the debug assertions.
    pub fn encode_plaintext(&self) -> [u8; 16] {
        debug_assert!(self.packet_id <= PACKET_ID_MAX);
        debug_assert!(self.amount_fen <= AMOUNT_FEN_MAX);
        let mut block = [0u8; 16];
        block[0..5].copy_from_slice(&self.packet_id.to_le_bytes()[0..5]);
        block[5..8].copy_from_slice(&self.amount_fen.to_le_bytes()[0..3]);
        block[8..10].copy_from_slice(&self.batch_id.to_le_bytes());
        block[10..12].copy_from_slice(&self.key_id.to_le_bytes());
        block[12..16].copy_from_slice(&TICKET_MAGIC);
        block
    }

    /// Decodes a decrypted block, checking the redundancy. `record_key_id` is the key id
    /// stored in clear in the record; the copy inside the ciphertext must match it.
    pub fn decode_plaintext(block: &[u8; 16], record_key_id: u16) -> Result<Ticket, TicketError> {
        let inner_key_id = u16::from_le_bytes([block[10], block[11]]);
        if block[12..16] != TICKET_MAGIC || inner_key_id != record_key_id {
            return Err(TicketError::Forged { key_id: record_key_id });
        }
        let mut packet_id = [0u8; 8];
        packet_id[0..5].copy_from_slice(&block[0..5]);
        let mut amount = [0u8; 4];
        amount[0..3].copy_from_slice(&block[5..8]);
        Ok(Ticket {
            packet_id: u64::from_le_bytes(packet_id),
            amount_fen: u32::from_le_bytes(amount),
            batch_id: u16::from_le_bytes([block[8], block[9]]),
            key_id: inner_key_id,
        })
    }

    /// Encrypts the ticket under `cipher` (which must be the key `self.key_id`).
    pub fn encrypt(&self, cipher: &Aes128) -> [u8; 16] {
        let mut block = GenericArray::from(self.encode_plaintext());
        cipher.encrypt_block(&mut block);
        block.into()
    }

    /// Decrypts and checks a ciphertext produced by [`Ticket::encrypt`].
    pub fn decrypt(ciphertext: &[u8; 16], record_key_id: u16, cipher: &Aes128) -> Result<Ticket, TicketError> {
        let mut block = GenericArray::from(*ciphertext);
        cipher.decrypt_block(&mut block);
        Ticket::decode_plaintext(&block.into(), record_key_id)
    }
}

/// Identity of a ticket file: which node, core and slot it belongs to. It seeds the record
/// CRC so that a valid record copied into another file is detected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileTag {
    /// Node index in the fleet.
    pub node: u16,
    /// Core index on the node.
    pub core: u16,
    /// Slot index in the event.
    pub slot: u16,
}

impl FileTag {
    /// CRC32C of the tag bytes; the starting value of every record CRC in the file.
    pub fn crc_seed(&self) -> u32 {
        let mut bytes = [0u8; 8];
        bytes[0..2].copy_from_slice(&self.node.to_le_bytes());
        bytes[2..4].copy_from_slice(&self.core.to_le_bytes());
        bytes[4..6].copy_from_slice(&self.slot.to_le_bytes());
        bytes[6..8].copy_from_slice(b"RR");
        redrain_storage::crc::crc32c_append(0, &bytes)
    }

    /// File name of this shard inside a ticket directory.
    pub fn file_name(&self) -> String {
        format!("n{:04}-c{:03}-s{:03}.tickets", self.node, self.core, self.slot)
    }
}

/// Why a record or ticket was refused. Every variant is a distinct, stable failure kind that
/// the node counts and verify/reconcile report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// The CRC does not match: the record was damaged or does not belong to this file.
    #[error("record CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Corrupt {
        /// CRC stored in the record.
        stored: u32,
        /// CRC computed over the record and file tag.
        computed: u32,
    },
    /// The record's stored index is not its position: records were moved or duplicated.
    #[error("record index {stored} found at position {position}")]
    Misplaced {
        /// Index stored in the record.
        stored: u32,
        /// Position the record was read from.
        position: u64,
    },
    /// The key id is not in the keyring.
    #[error("key {key_id} is not in the keyring")]
    UnknownKey {
        /// The key id from the record.
        key_id: u16,
    },
    /// The key id is blacklisted.
    #[error("key {key_id} is blacklisted")]
    Blacklisted {
        /// The key id from the record.
        key_id: u16,
    },
    /// A whitelist is set and does not contain the key id.
    #[error("key {key_id} is not whitelisted")]
    NotWhitelisted {
        /// The key id from the record.
        key_id: u16,
    },
    /// Decryption did not give back the redundancy: the ciphertext was not produced by the
    /// key it names (tampered or forged).
    #[error("ticket under key {key_id} fails the decryption check (forged or tampered)")]
    Forged {
        /// The key id from the record.
        key_id: u16,
    },
}

/// Builds a record from a ciphertext.
pub fn seal_record(ciphertext: &[u8; 16], key_id: u16, record_index: u32, crc_seed: u32) -> [u8; RECORD_BYTES] {
    let mut record = [0u8; RECORD_BYTES];
    seal_record_into(&mut record, ciphertext, key_id, record_index, crc_seed);
    record
}

/// Builds a record in place (the generator writes straight into its output buffer).
#[inline]
pub fn seal_record_into(
    record: &mut [u8; RECORD_BYTES],
    ciphertext: &[u8; 16],
    key_id: u16,
    record_index: u32,
    crc_seed: u32,
) {
    record[0..16].copy_from_slice(ciphertext);
    record[16..18].copy_from_slice(&key_id.to_le_bytes());
    record[18..22].copy_from_slice(&record_index.to_le_bytes());
    let crc = record_crc(crc_seed, record[0..22].try_into().expect("22 bytes"));
    record[22..26].copy_from_slice(&crc.to_le_bytes());
}

/// CRC32C of the 22 covered bytes of a record, continuing from `crc_seed`: the
/// node's one short-buffer CRC32C routine (`redrain_storage::crc`), a few CRC
/// instructions for the 22 bytes.
#[inline]
pub fn record_crc(crc_seed: u32, bytes: &[u8; 22]) -> u32 {
    redrain_storage::crc::crc32c_append(crc_seed, bytes)
}

/// The key id stored in clear in a record.
pub fn record_key_id(record: &[u8; RECORD_BYTES]) -> u16 {
    u16::from_le_bytes([record[16], record[17]])
}

/// The record index stored in a record.
pub fn record_index(record: &[u8; RECORD_BYTES]) -> u32 {
    u32::from_le_bytes([record[18], record[19], record[20], record[21]])
}

/// The ciphertext part of a record.
pub fn record_ciphertext(record: &[u8; RECORD_BYTES]) -> [u8; 16] {
    let mut ciphertext = [0u8; 16];
    ciphertext.copy_from_slice(&record[0..16]);
    ciphertext
}

/// Checks the keyless parts of a record read from `position` in a file whose tag has the
/// CRC seed `crc_seed`: the CRC, then the stored index.
pub fn check_record(record: &[u8; RECORD_BYTES], position: u64, crc_seed: u32) -> Result<(), TicketError> {
    let computed = record_crc(crc_seed, record[0..22].try_into().expect("22 bytes"));
    let stored = u32::from_le_bytes([record[22], record[23], record[24], record[25]]);
    if computed != stored {
        return Err(TicketError::Corrupt { stored, computed });
    }
    let stored_index = record_index(record);
    if u64::from(stored_index) != position {
        return Err(TicketError::Misplaced { stored: stored_index, position });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes::cipher::KeyInit;

    #[test]
    fn plaintext_round_trips_at_field_limits() {
        let ticket =
            Ticket { packet_id: PACKET_ID_MAX, amount_fen: AMOUNT_FEN_MAX, batch_id: u16::MAX, key_id: 65_000 };
        let block = ticket.encode_plaintext();
        assert_eq!(Ticket::decode_plaintext(&block, 65_000), Ok(ticket));
        assert!(Ticket::decode_plaintext(&block, 64_999).is_err());
    }

    #[test]
    fn record_checks_crc_and_position() {
        let cipher = Aes128::new(&GenericArray::from([7u8; 16]));
        let ticket = Ticket { packet_id: 42, amount_fen: 888, batch_id: 3, key_id: 9 };
        let tag = FileTag { node: 1, core: 2, slot: 3 };
        let record = seal_record(&ticket.encrypt(&cipher), 9, 5, tag.crc_seed());
        assert_eq!(check_record(&record, 5, tag.crc_seed()), Ok(()));
        assert!(matches!(check_record(&record, 6, tag.crc_seed()), Err(TicketError::Misplaced { .. })));
        let other = FileTag { node: 1, core: 2, slot: 4 };
        assert!(matches!(check_record(&record, 5, other.crc_seed()), Err(TicketError::Corrupt { .. })));
        let decrypted = Ticket::decrypt(&record_ciphertext(&record), record_key_id(&record), &cipher);
        assert_eq!(decrypted, Ok(ticket));
    }
}
