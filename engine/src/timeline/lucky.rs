//! Group lucky packets ("ordinary" red packets): the amount of each share is drawn at
//! open time with the double-mean rule, and the shares sum exactly to the total.
//!
//! A packet lives on its group's home core only, so every open of one packet is
//! serialised there whichever core its member is homed on: no two opens can race.
//! A draw is reserved at once (taken from the remaining amount and count) and answered
//! when its record is durable. A failed record keeps its draw for that user: the record
//! may be durable after all (a replicated append that timed out waiting for a peer is on
//! the local disk and ships when a peer returns; a restart replays it), so the user's
//! retry writes the same share again, never a second, different one.

use rand::Rng;
use std::collections::HashMap;

/// Smallest share: one fen (0.01 yuan).
pub const SHARE_FEN_MIN: u32 = 1;

/// Draws one share of `remaining_fen` split over `remaining_count` shares: uniform in
/// [0.01, 2 x remaining mean], never leaving less than 0.01 for each share after it;
/// the last share takes the remainder. `remaining_fen >= remaining_count >= 1`.
pub fn draw_share(remaining_fen: u64, remaining_count: u32, rng: &mut impl Rng) -> u64 {
    assert!(remaining_count >= 1 && remaining_fen >= u64::from(remaining_count));
    if remaining_count == 1 {
        return remaining_fen;
    }
    let double_mean = remaining_fen * 2 / u64::from(remaining_count);
    let keep_for_others = u64::from(remaining_count - 1) * u64::from(SHARE_FEN_MIN);
    let high = double_mean.min(remaining_fen - keep_for_others).max(u64::from(SHARE_FEN_MIN));
    rng.gen_range(u64::from(SHARE_FEN_MIN)..=high)
}

/// One packet's state on its group's core.
#[derive(Debug)]
pub struct LuckyPacket {
    pub group: u64,
    pub total_fen: u32,
    pub count: u16,
    pub remaining_fen: u64,
    pub remaining_count: u32,
    /// Durable shares, by user.
    pub opened: HashMap<u64, u32>,
    /// Shares reserved whose record is not durable yet, by user.
    pub reserved: HashMap<u64, u32>,
    /// Shares whose record failed (maybe durable anyway), kept for the user's retry.
    pub unconfirmed: HashMap<u64, u32>,
    /// Its creation record is durable (a checkpoint carries only durable packets).
    pub durable: bool,
}

/// What an open of a packet gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    /// A fresh share was reserved; answer when its record is durable.
    Reserved(u32),
    /// This user already holds this share (durable).
    Repeat(u32),
    /// This user's share is being recorded; wait for it.
    InFlight,
    AllGone,
}

impl LuckyPacket {
    pub fn new(group: u64, total_fen: u32, count: u16) -> Self {
        Self {
            group,
            total_fen,
            count,
            remaining_fen: u64::from(total_fen),
            remaining_count: u32::from(count),
            opened: HashMap::new(),
            reserved: HashMap::new(),
            unconfirmed: HashMap::new(),
            durable: false,
        }
    }

    /// Whether (total, count) can be split with each share >= 0.01.
    pub fn valid(total_fen: u32, count: u16) -> bool {
        count >= 1 && u64::from(total_fen) >= u64::from(count) * u64::from(SHARE_FEN_MIN)
    }

    pub fn open(&mut self, user: u64, rng: &mut impl Rng) -> Share {
        if let Some(amount) = self.opened.get(&user) {
            return Share::Repeat(*amount);
        }
        if self.reserved.contains_key(&user) {
            return Share::InFlight;
        }
        if let Some(amount) = self.unconfirmed.remove(&user) {
            self.reserved.insert(user, amount);
            return Share::Reserved(amount);
        }
        if self.remaining_count == 0 {
            return Share::AllGone;
        }
        let amount = draw_share(self.remaining_fen, self.remaining_count, rng) as u32;
        self.remaining_fen -= u64::from(amount);
        self.remaining_count -= 1;
        self.reserved.insert(user, amount);
        Share::Reserved(amount)
    }

    /// The share's record is durable (`ok`) or failed (the draw stays this user's, for
    /// the retry: the failed record may be durable anyway).
    pub fn finish(&mut self, user: u64, ok: bool) -> Option<u32> {
        let amount = self.reserved.remove(&user)?;
        if ok {
            self.opened.insert(user, amount);
        } else {
            self.unconfirmed.insert(user, amount);
        }
        Some(amount)
    }

    /// A share recovered from the stream at start.
    pub fn recover_open(&mut self, user: u64, amount: u32) {
        if self.opened.contains_key(&user) {
            // A record written again after a failed (but durable) first one: same share.
            return;
        }
        if self.opened.insert(user, amount).is_none() {
            self.remaining_fen = self.remaining_fen.saturating_sub(u64::from(amount));
            self.remaining_count = self.remaining_count.saturating_sub(1);
        }
    }

    pub fn opened_count(&self) -> u16 {
        (u32::from(self.count) - self.remaining_count) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn shares_sum_exactly_to_the_total_and_each_is_within_the_double_mean_bounds() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for (total, count) in [(1u32, 1u16), (100, 100), (10_000, 7), (88_888, 500), (500, 499), (2, 2)] {
            let mut p = LuckyPacket::new(1, total, count);
            let mut sum = 0u64;
            for user in 0..u64::from(count) {
                let (rem, left) = (p.remaining_fen, p.remaining_count);
                let Share::Reserved(a) = p.open(user, &mut rng) else { panic!("share expected") };
                assert!(a >= 1, "every share is at least one fen");
                if left > 1 {
                    assert!(u64::from(a) <= rem * 2 / u64::from(left), "within 2 x remaining mean");
                } else {
                    assert_eq!(u64::from(a), rem, "the last share takes the remainder");
                }
                assert_eq!(p.finish(user, true), Some(a));
                sum += u64::from(a);
            }
            assert_eq!(sum, u64::from(total));
            assert_eq!(p.open(u64::MAX, &mut rng), Share::AllGone);
            assert_eq!(p.open(0, &mut rng), Share::Repeat(*p.opened.get(&0).unwrap()));
        }
    }

    #[test]
    fn a_failed_record_keeps_its_share_for_the_users_retry_and_the_sum_stays_exact() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut p = LuckyPacket::new(1, 1_000, 3);
        let Share::Reserved(first) = p.open(1, &mut rng) else { panic!() };
        assert_eq!(p.open(1, &mut rng), Share::InFlight);
        p.finish(1, false);
        assert_eq!(p.remaining_count, 2, "the failed share is not drawn again for someone else");
        let mut sum = 0;
        for user in [1, 2, 3] {
            let Share::Reserved(a) = p.open(user, &mut rng) else { panic!() };
            if user == 1 {
                assert_eq!(a, first, "the retry writes the same share again");
            }
            p.finish(user, true);
            sum += a;
        }
        assert_eq!(sum, 1_000);
        // The first (failed, yet durable) record and the retry's both replay: one share.
        let mut replayed = LuckyPacket::new(1, 1_000, 3);
        for (user, a) in [(1, first), (1, first), (2, p.opened[&2]), (3, p.opened[&3])] {
            replayed.recover_open(user, a);
        }
        assert_eq!((replayed.remaining_fen, replayed.remaining_count), (0, 0));
        assert!(!LuckyPacket::valid(2, 3));
        assert!(!LuckyPacket::valid(5, 0));
    }
}
