//! Sealed tickets: a ticket bound to one user, readable only by the node that issued it.
//!
//! On a win the node wraps the 16-byte ticket ciphertext and its key id (18 bytes) in
//! AES-256-GCM under the node's seal key. The clear header (version, node, issue time,
//! user, packet id; [`SealedTicketHeader`]) is the associated data, so changing any of it -
//! in particular the user - breaks the seal. The nonce is the packet id (and node id): a
//! packet is issued at most once (the issuance invariant), so a nonce never repeats under
//! one key, and no nonce bytes travel on the wire.
//!
//! Layout (57 bytes): header (23, see docs/protocol.md) | AEAD ciphertext (18) | tag (16).

use redrain_net::message::{SealedTicketHeader, SEALED_HEADER_BYTES, SEALED_TICKET_BYTES, SEALED_TICKET_VERSION};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};

/// Bytes of a seal key (AES-256).
pub const SEAL_KEY_BYTES: usize = 32;
/// Bytes sealed: the ticket ciphertext (16) and its key id (2, big-endian).
pub const SEALED_INNER_BYTES: usize = 18;
const TAG_BYTES: usize = 16;
const _: () = assert!(SEALED_HEADER_BYTES + SEALED_INNER_BYTES + TAG_BYTES == SEALED_TICKET_BYTES);

/// Why a sealed ticket does not open. Each maps to its own wire error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UnsealError {
    #[error("sealed ticket version {0} is not supported")]
    Version(u8),
    #[error("sealed ticket was issued by node {0}")]
    OtherNode(u16),
    #[error("sealed ticket is bound to another user")]
    OtherUser,
    #[error("sealed ticket does not authenticate (altered or not sealed by this node)")]
    Tampered,
}

/// What a valid seal contained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsealed {
    pub header: SealedTicketHeader,
    pub ciphertext: [u8; 16],
    pub key_id: u16,
}

/// A node's seal key (shared, read-only, by every core).
pub struct SealKey {
    key: LessSafeKey,
    node_id: u16,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealKey").field("node_id", &self.node_id).finish_non_exhaustive()
    }
}

fn nonce(header: &SealedTicketHeader) -> Nonce {
    let mut bytes = [0u8; NONCE_LEN];
    bytes[0..8].copy_from_slice(&header.packet_id.to_be_bytes());
    bytes[8..10].copy_from_slice(&header.node_id.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

impl SealKey {
    pub fn new(secret: &[u8; SEAL_KEY_BYTES], node_id: u16) -> Self {
        let key = UnboundKey::new(&AES_256_GCM, secret).expect("AES-256 takes a 32-byte key");
        Self { key: LessSafeKey::new(key), node_id }
    }

    pub fn node_id(&self) -> u16 {
        self.node_id
    }

    /// Seals `ciphertext` (the ticket of `packet_id` under `key_id`) to `user_id`.
    pub fn seal(
        &self,
        user_id: u64,
        packet_id: u64,
        issued_at_unix_s: u32,
        ciphertext: &[u8; 16],
        key_id: u16,
    ) -> [u8; SEALED_TICKET_BYTES] {
        let header = SealedTicketHeader {
            version: SEALED_TICKET_VERSION,
            node_id: self.node_id,
            issued_at_unix_s,
            user_id,
            packet_id,
        };
        let mut out = [0u8; SEALED_TICKET_BYTES];
        let (head, rest) = out.split_at_mut(SEALED_HEADER_BYTES);
        header.write(head.try_into().expect("header length"));
        let (inner, tag_out) = rest.split_at_mut(SEALED_INNER_BYTES);
        inner[..16].copy_from_slice(ciphertext);
        inner[16..18].copy_from_slice(&key_id.to_be_bytes());
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(&header), Aad::from(&*head), inner)
            .expect("an 18-byte message is within AES-GCM's limits");
        tag_out.copy_from_slice(tag.as_ref());
        out
    }

    /// Checks a sealed ticket presented by `user_id` and returns what it holds.
    /// The checks run cheapest first; only an authentic seal reaches the caller.
    pub fn unseal(&self, sealed: &[u8; SEALED_TICKET_BYTES], user_id: u64) -> Result<Unsealed, UnsealError> {
        let header = SealedTicketHeader::parse(sealed);
        if header.version != SEALED_TICKET_VERSION {
            return Err(UnsealError::Version(header.version));
        }
        if header.node_id != self.node_id {
            return Err(UnsealError::OtherNode(header.node_id));
        }
        if header.user_id != user_id {
            return Err(UnsealError::OtherUser);
        }
        let mut inner = [0u8; SEALED_INNER_BYTES + TAG_BYTES];
        inner.copy_from_slice(&sealed[SEALED_HEADER_BYTES..]);
        let plain = self
            .key
            .open_in_place(nonce(&header), Aad::from(&sealed[..SEALED_HEADER_BYTES]), &mut inner)
            .map_err(|_| UnsealError::Tampered)?;
        let mut ciphertext = [0u8; 16];
        ciphertext.copy_from_slice(&plain[..16]);
        Ok(Unsealed { header, ciphertext, key_id: u16::from_be_bytes([plain[16], plain[17]]) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_ticket_opens_only_for_its_user_and_node_and_every_bit_counts() {
        let key = SealKey::new(&[7; 32], 3);
        let sealed = key.seal(42, 1_234, 1_700_000_000, &[9; 16], 77);
        let opened = key.unseal(&sealed, 42).unwrap();
        assert_eq!((opened.ciphertext, opened.key_id, opened.header.packet_id), ([9; 16], 77, 1_234));
        assert_eq!(key.unseal(&sealed, 43), Err(UnsealError::OtherUser));
        assert_eq!(SealKey::new(&[7; 32], 4).unseal(&sealed, 42), Err(UnsealError::OtherNode(3)));
        assert_eq!(SealKey::new(&[8; 32], 3).unseal(&sealed, 42), Err(UnsealError::Tampered));
        for byte in 0..SEALED_TICKET_BYTES {
            for bit in 0..8 {
                let mut bad = sealed;
                bad[byte] ^= 1 << bit;
                assert!(key.unseal(&bad, 42).is_err(), "flip of byte {byte} bit {bit} was accepted");
            }
        }
    }
}
