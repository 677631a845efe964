//! Hand-off of logged-in sessions to their home core: what travels (one kind of
//! [`super::mailbox::Mail`]) and which core is home.

use crate::auth::TokenClaims;
use std::os::fd::OwnedFd;

/// Everything a session needs to continue on another core.
pub struct Handoff {
    /// The client socket (a duplicate; the source core closed its own fd).
    pub fd: OwnedFd,
    /// TLS state, when the session arrived on the TLS port.
    pub tls: Option<Box<super::tls::TlsSession>>,
    /// The verified login that the home core must register and answer.
    pub claims: TokenClaims,
    pub login_request_id: u32,
    /// Plaintext received after the Login frame (pipelined requests).
    pub inbound: Vec<u8>,
    /// When the Login frame's bytes arrived (for its latency).
    pub received_at: std::time::Instant,
}

/// Maps a user to its home core. The user id is mixed first (splitmix64
/// finaliser) so that sequential or patterned ids spread evenly.
pub fn home_core(user_id: u64, cores: usize) -> usize {
    let mut z = user_id.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z % cores.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_core_is_stable_and_spreads_sequential_ids() {
        let mut counts = [0usize; 4];
        for u in 0..40_000u64 {
            let c = home_core(u, 4);
            assert_eq!(c, home_core(u, 4));
            counts[c] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
        assert_eq!(home_core(123, 1), 0);
    }
}
