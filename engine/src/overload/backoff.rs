//! The degrade level of one core and the advice clients get from it.
//!
//! Each housekeeping tick the driver passes in what it measured since the last tick: the
//! worst queueing delay (how late the core's own timer fired: a busy core runs its tasks
//! late, every request waits as long), the share of the interval the core's thread was on
//! a CPU, and how full the open queue's pending table is. The level is the highest any of
//! them asks for, and at least the operator's floor (`redrain admin degrade L`).
//!
//! The level rises at once and falls by one step per [`STEP_DOWN_MS`] of calm, so a
//! client told to slow down is not told to speed up again within the same second.
//!
//! Advice at level L: shake at most every `shake_interval_ms << L`, retry a rejected
//! request after `retry_after_ms << L`. Clients see it on every `ShakeOk` and `Busy`, and
//! in a `Backoff` push when the level changes.

/// Highest degrade level (shake interval x16).
pub const LEVEL_MAX: u8 = 4;
/// The level falls by one after this long without a reason for the current one.
pub const STEP_DOWN_MS: u64 = 1_000;

/// What the core measured since the last tick.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LoadSample {
    /// How late the core's timer fired, us (counted only while the core is busy).
    pub queue_delay_us: u64,
    /// The wait one in ten requests of the tick reached between its bytes being read and
    /// its handling, us (always counted: it is the requests' own queue).
    pub request_delay_us: u64,
    /// Share of wall time the core's thread ran, 0.0..=1.0.
    pub cpu_busy: f64,
    /// Opens waiting for storage / their bound, 0.0..=1.0.
    pub opens_pending_fill: f64,
}

/// Bounds the level is computed against (from the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// The queueing delay bound of admission control; level 1 starts at a quarter of it.
    pub queue_delay_max_us: u64,
    /// The minimum shake interval at level 0.
    pub shake_interval_ms: u32,
    /// The retry-after of a rejected request at level 0.
    pub retry_after_ms: u32,
}

/// What clients are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advice {
    pub level: u8,
    pub shake_interval_ms: u32,
    pub retry_after_ms: u32,
}

/// One core's degrade level.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    level: u8,
    /// When the load last asked for the current level (or more).
    held_since_ms: u64,
    /// What the previous sample asked for (levels above [`LEVEL_AT_ONCE_MAX`] need two
    /// samples in a row: one late timer on a noisy host must not shed every shake).
    previous_wanted: u8,
}

/// The level may rise this far on one sample; higher levels need two in a row.
pub const LEVEL_AT_ONCE_MAX: u8 = 2;
/// Below this CPU share the core is not the cause of a late timer (the host is), so
/// timer lateness is not taken as queueing delay.
pub const CPU_BUSY_FOR_DELAY: f64 = 0.5;

impl Backoff {
    pub fn new(config: BackoffConfig) -> Self {
        Self { config, level: 0, held_since_ms: 0, previous_wanted: 0 }
    }

    /// The level the load alone asks for.
    pub fn level_for(&self, sample: &LoadSample) -> u8 {
        let bound = self.config.queue_delay_max_us.max(1);
        let by_wait = |d: u64| {
            if d * 4 < bound {
                0
            } else if d * 2 < bound {
                1
            } else if d < bound {
                2
            } else if d < bound * 2 {
                3
            } else {
                4
            }
        };
        // A late timer on a busy core says the core is behind, not that requests wait too
        // long: it slows clients (up to level 2) but never sheds logins by itself. The
        // requests' own waits can take the level to the top.
        let late = if sample.cpu_busy >= CPU_BUSY_FOR_DELAY { sample.queue_delay_us } else { 0 };
        let by_delay = by_wait(late).min(LEVEL_AT_ONCE_MAX).max(by_wait(sample.request_delay_us));
        // A saturated CPU by itself is the normal state of a busy core: it asks for level
        // 1 (longer shake intervals) so the queue does not build, no more.
        let by_cpu = u8::from(sample.cpu_busy >= 0.95);
        let by_opens = if sample.opens_pending_fill >= 0.9 {
            3
        } else if sample.opens_pending_fill >= 0.5 {
            2
        } else {
            0
        };
        by_delay.max(by_cpu).max(by_opens).min(LEVEL_MAX)
    }

    /// Feeds one tick's sample; returns the new advice when the level changed.
    pub fn update(&mut self, sample: &LoadSample, floor: u8, now_ms: u64) -> Option<Advice> {
        let by_load = self.level_for(sample);
        let confirmed = by_load.min(self.previous_wanted.max(LEVEL_AT_ONCE_MAX));
        self.previous_wanted = by_load;
        let wanted = confirmed.max(floor.min(LEVEL_MAX));
        let before = self.level;
        if wanted >= self.level {
            self.level = wanted;
            self.held_since_ms = now_ms;
        } else if now_ms.saturating_sub(self.held_since_ms) >= STEP_DOWN_MS {
            self.level -= 1;
            self.held_since_ms = now_ms;
        }
        (self.level != before).then(|| self.advice())
    }

    pub fn level(&self) -> u8 {
        self.level
    }

    pub fn advice(&self) -> Advice {
        Advice {
            level: self.level,
            shake_interval_ms: self.config.shake_interval_ms.saturating_mul(1 << self.level),
            retry_after_ms: self.config.retry_after_ms.saturating_mul(1 << self.level),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: BackoffConfig =
        BackoffConfig { queue_delay_max_us: 4_000, shake_interval_ms: 1_000, retry_after_ms: 100 };

    #[test]
    fn the_level_rises_at_once_with_queueing_delay_and_falls_one_step_per_second() {
        let mut b = Backoff::new(CONFIG);
        assert_eq!(b.update(&LoadSample::default(), 0, 0), None);
        let hot = LoadSample { request_delay_us: 9_000, cpu_busy: 1.0, ..LoadSample::default() };
        assert_eq!(b.update(&hot, 0, 50).map(|a| a.level), Some(LEVEL_AT_ONCE_MAX), "one late tick: at most 2");
        let advice = b.update(&hot, 0, 100).expect("level changed");
        assert_eq!(advice, Advice { level: 4, shake_interval_ms: 16_000, retry_after_ms: 1_600 });
        let calm = LoadSample::default();
        assert_eq!(b.update(&calm, 0, 600), None, "held for a second");
        assert_eq!(b.update(&calm, 0, 1_100).map(|a| a.level), Some(3));
        assert_eq!(b.update(&calm, 0, 1_200), None);
        assert_eq!(b.update(&calm, 0, 2_100).map(|a| a.level), Some(2));
    }

    #[test]
    fn the_operator_floor_holds_the_level_up_and_is_capped_at_the_top_level() {
        let mut b = Backoff::new(CONFIG);
        assert_eq!(b.update(&LoadSample::default(), 2, 0).map(|a| a.shake_interval_ms), Some(4_000));
        for t in 1..10 {
            assert_eq!(b.update(&LoadSample::default(), 2, t * 1_000), None);
        }
        assert_eq!(b.update(&LoadSample::default(), 200, 20_000).map(|a| a.level), Some(LEVEL_MAX));
    }

    #[test]
    fn a_full_open_queue_and_a_saturated_cpu_each_raise_the_level() {
        let b = Backoff::new(CONFIG);
        assert_eq!(b.level_for(&LoadSample { opens_pending_fill: 0.95, ..LoadSample::default() }), 3);
        assert_eq!(b.level_for(&LoadSample { opens_pending_fill: 0.6, ..LoadSample::default() }), 2);
        assert_eq!(b.level_for(&LoadSample { cpu_busy: 1.0, ..LoadSample::default() }), 1);
        let busy = |queue_delay_us| LoadSample { queue_delay_us, cpu_busy: 0.8, ..LoadSample::default() };
        assert_eq!(b.level_for(&busy(999)), 0);
        assert_eq!(b.level_for(&busy(1_000)), 1);
        assert_eq!(b.level_for(&busy(50_000)), LEVEL_AT_ONCE_MAX, "a late timer alone never sheds logins");
        // A late timer on an idle core is the host's doing, not a queue.
        assert_eq!(b.level_for(&LoadSample { queue_delay_us: 50_000, ..LoadSample::default() }), 0);
        // The requests' own wait counts whatever the CPU share (a throttled or starved core).
        assert_eq!(b.level_for(&LoadSample { request_delay_us: 50_000, ..LoadSample::default() }), 4);
    }
}
