//! Per-user rate limits (messages and syncs per second) as token buckets.
//!
//! One bucket per user homed on this core, created on first use, bounded in count: when
//! the table is full, buckets that have refilled completely (users idle for a burst's
//! time) are forgotten first; a new user beyond that is refused, never let through
//! unmetered.

use std::collections::HashMap;

/// A per-user rate: `per_s` sustained, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateConfig {
    pub per_s: u32,
    pub burst: u32,
    /// Users tracked at most.
    pub users_max: usize,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateRefusal {
    /// The user's bucket is empty: retry after this many ms.
    Exhausted { retry_after_ms: u32 },
    /// The table of users is full of active users.
    TableFull,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: u64,
}

/// Token buckets of one kind of request (one instance per rate), per core.
#[derive(Debug)]
pub struct UserRates {
    config: RateConfig,
    buckets: HashMap<u64, Bucket>,
}

impl UserRates {
    pub fn new(config: RateConfig) -> Self {
        Self { config, buckets: HashMap::new() }
    }

    fn refill(config: &RateConfig, b: &mut Bucket, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(b.at_ms) as f64;
        b.tokens = (b.tokens + elapsed * f64::from(config.per_s) / 1000.0).min(f64::from(config.burst));
        b.at_ms = now_ms;
    }

    /// Takes one token of `user` at `now_ms`.
    pub fn take(&mut self, user: u64, now_ms: u64) -> Result<(), RateRefusal> {
        let config = self.config;
        if !self.buckets.contains_key(&user) && self.buckets.len() >= config.users_max {
            self.buckets.retain(|_, b| {
                Self::refill(&config, b, now_ms);
                b.tokens < f64::from(config.burst)
            });
            if self.buckets.len() >= config.users_max {
                return Err(RateRefusal::TableFull);
            }
        }
        let b = self.buckets.entry(user).or_insert(Bucket { tokens: f64::from(config.burst), at_ms: now_ms });
        Self::refill(&config, b, now_ms);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - b.tokens;
            let retry_after_ms = (missing * 1000.0 / f64::from(config.per_s.max(1))).ceil() as u32;
            Err(RateRefusal::Exhausted { retry_after_ms })
        }
    }

    pub fn users(&self) -> usize {
        self.buckets.len()
    }

    pub fn config(&self) -> RateConfig {
        self.config
    }

    /// Changes the rate at run time (an operator's switch). Buckets are kept: a lower burst
    /// clamps them at their next take, a higher one fills them at the new rate.
    pub fn set_config(&mut self, config: RateConfig) {
        self.config = config;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_gets_the_burst_then_the_sustained_rate_and_a_retry_after() {
        let mut r = UserRates::new(RateConfig { per_s: 10, burst: 3, users_max: 10 });
        for _ in 0..3 {
            r.take(1, 0).unwrap();
        }
        assert_eq!(r.take(1, 0), Err(RateRefusal::Exhausted { retry_after_ms: 100 }));
        assert_eq!(r.take(1, 50), Err(RateRefusal::Exhausted { retry_after_ms: 50 }));
        r.take(1, 100).unwrap();
        r.take(2, 100).expect("another user has its own bucket");
    }

    #[test]
    fn the_user_table_is_bounded_and_forgets_idle_users_first() {
        let mut r = UserRates::new(RateConfig { per_s: 1, burst: 2, users_max: 2 });
        r.take(1, 0).unwrap();
        r.take(2, 0).unwrap();
        assert_eq!(r.take(3, 0), Err(RateRefusal::TableFull));
        // After a while user 1 and 2 are full again (idle): they are forgotten.
        r.take(3, 5_000).unwrap();
        assert!(r.users() <= 2);
    }

    #[test]
    fn a_lower_rate_set_at_run_time_clamps_a_full_bucket_to_the_new_burst() {
        let mut r = UserRates::new(RateConfig { per_s: 100, burst: 100, users_max: 10 });
        r.take(1, 0).unwrap();
        r.set_config(RateConfig { per_s: 1, burst: 2, users_max: 10 });
        // 99 tokens were left; the new burst holds 2 of them.
        r.take(1, 0).unwrap();
        r.take(1, 0).unwrap();
        assert_eq!(r.take(1, 0), Err(RateRefusal::Exhausted { retry_after_ms: 1_000 }));
    }
}
