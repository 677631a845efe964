//! Login tokens: minted by the auth service (and by the load generator and
//! tests), verified locally by the node. Both sides live here so that every
//! user of tokens needs only the wire crate.
//!
//! Layout (53 bytes, big-endian), see docs/protocol.md:
//!
//! ```text
//! version:u8 = 1 | user_id:u64 | device_id:u32 | expires_at_unix_s:u64 | hmac_sha256:[u8;32]
//! ```
//!
//! The MAC is HMAC-SHA256 under a shared secret over the first 21 bytes. The node
//! accepts a current and a previous secret at once so the auth service can rotate
//! without a flag day. Verification is pure computation: no RPC, no allocation.

use crate::message::TOKEN_BYTES;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

/// Token format version byte.
pub const TOKEN_VERSION: u8 = 1;
const SIGNED_BYTES: usize = 21;
/// Minimum secret length accepted in configuration (bytes).
pub const SECRET_BYTES_MIN: usize = 16;

/// Identity proven by a valid token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenClaims {
    pub user_id: u64,
    pub device_id: u32,
    pub expires_at_unix_s: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TokenError {
    #[error("token version {0} is not supported")]
    Version(u8),
    #[error("token expired at {expires_at_unix_s} (now {now_unix_s})")]
    Expired { expires_at_unix_s: u64, now_unix_s: u64 },
    #[error("token signature does not verify under any accepted secret")]
    Signature,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SecretError {
    #[error("auth secret must be at least {SECRET_BYTES_MIN} bytes, got {0}")]
    TooShort(usize),
    #[error("auth secret is not valid hex: {0}")]
    NotHex(String),
}

/// The secrets a node accepts: the current one (also used to mint) and
/// optionally the previous one during rotation.
#[derive(Clone)]
pub struct TokenKeys {
    current: Hmac<Sha256>,
    previous: Option<Hmac<Sha256>>,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys").field("previous", &self.previous.is_some()).finish_non_exhaustive()
    }
}

/// Parses a hex secret as stored in config files and the data directory.
pub fn parse_secret_hex(text: &str) -> Result<Vec<u8>, SecretError> {
    let bytes = hex::decode(text.trim()).map_err(|e| SecretError::NotHex(e.to_string()))?;
    if bytes.len() < SECRET_BYTES_MIN {
        return Err(SecretError::TooShort(bytes.len()));
    }
    Ok(bytes)
}

impl TokenKeys {
    pub fn new(current: &[u8], previous: Option<&[u8]>) -> Result<Self, SecretError> {
        let mac = |s: &[u8]| {
            if s.len() < SECRET_BYTES_MIN {
                return Err(SecretError::TooShort(s.len()));
            }
            Ok(Hmac::<Sha256>::new_from_slice(s).expect("HMAC accepts any key length"))
        };
        Ok(Self { current: mac(current)?, previous: previous.map(mac).transpose()? })
    }

    /// Mints a token under the current secret.
    pub fn mint(&self, claims: TokenClaims) -> [u8; TOKEN_BYTES] {
        let mut token = [0u8; TOKEN_BYTES];
        token[0] = TOKEN_VERSION;
        token[1..9].copy_from_slice(&claims.user_id.to_be_bytes());
        token[9..13].copy_from_slice(&claims.device_id.to_be_bytes());
        token[13..21].copy_from_slice(&claims.expires_at_unix_s.to_be_bytes());
        let mut mac = self.current.clone();
        mac.update(&token[..SIGNED_BYTES]);
        token[SIGNED_BYTES..].copy_from_slice(&mac.finalize().into_bytes());
        token
    }

    /// Verifies a token at time `now_unix_s`. The signature is checked before
    /// the expiry so that a forged token never learns anything from the answer.
    pub fn verify(&self, token: &[u8; TOKEN_BYTES], now_unix_s: u64) -> Result<TokenClaims, TokenError> {
        if token[0] != TOKEN_VERSION {
            return Err(TokenError::Version(token[0]));
        }
        let check = |key: &Hmac<Sha256>| {
            let mut mac = key.clone();
            mac.update(&token[..SIGNED_BYTES]);
            mac.verify_slice(&token[SIGNED_BYTES..]).is_ok()
        };
        if !check(&self.current) && !self.previous.as_ref().is_some_and(check) {
            return Err(TokenError::Signature);
        }
        let claims = TokenClaims {
            user_id: u64::from_be_bytes(token[1..9].try_into().expect("8 bytes")),
            device_id: u32::from_be_bytes(token[9..13].try_into().expect("4 bytes")),
            expires_at_unix_s: u64::from_be_bytes(token[13..21].try_into().expect("8 bytes")),
        };
        if claims.expires_at_unix_s <= now_unix_s {
            return Err(TokenError::Expired { expires_at_unix_s: claims.expires_at_unix_s, now_unix_s });
        }
        Ok(claims)
    }
}

pub use crate::time::now_unix_s;

#[cfg(test)]
mod tests {
    use super::*;

    const A: &[u8] = b"0123456789abcdef-secret-a";
    const B: &[u8] = b"0123456789abcdef-secret-b";

    fn claims() -> TokenClaims {
        TokenClaims { user_id: 42, device_id: 7, expires_at_unix_s: 2_000 }
    }

    #[test]
    fn minted_token_verifies_and_carries_its_claims() {
        let keys = TokenKeys::new(A, None).unwrap();
        assert_eq!(keys.verify(&keys.mint(claims()), 1_000), Ok(claims()));
    }

    #[test]
    fn previous_secret_is_accepted_during_rotation_but_unknown_is_not() {
        let old = TokenKeys::new(B, None).unwrap();
        let rotated = TokenKeys::new(A, Some(B)).unwrap();
        assert_eq!(rotated.verify(&old.mint(claims()), 1_000), Ok(claims()));
        let unrelated = TokenKeys::new(b"another-secret-of-16+", None).unwrap();
        assert_eq!(unrelated.verify(&old.mint(claims()), 1_000), Err(TokenError::Signature));
    }

    #[test]
    fn expired_and_tampered_tokens_are_rejected() {
        let keys = TokenKeys::new(A, None).unwrap();
        let token = keys.mint(claims());
        assert!(matches!(keys.verify(&token, 2_000), Err(TokenError::Expired { .. })));
        for i in 0..TOKEN_BYTES {
            let mut t = token;
            t[i] ^= 0x01;
            assert!(keys.verify(&t, 1_000).is_err(), "flip in byte {i} accepted");
        }
    }

    #[test]
    fn short_secrets_are_refused() {
        assert_eq!(TokenKeys::new(b"short", None).unwrap_err(), SecretError::TooShort(5));
        assert!(parse_secret_hex("zz").is_err());
    }
}
