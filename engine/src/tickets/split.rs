//! Random packet amounts that sum exactly to a budget, generated as a stream in O(n) time and
//! O(block) memory.
//!
//! A merchant's `n` packets form a sequence `0..n`. Every amount is `min + excess`, with the
//! excess in `0..=w` (`w = max - min`) and the excesses summing to `E = budget - n * min`.
//! The scheme rests on one prefix function:
//!
//! ```text
//! prefix_excess(i) = floor(E * i / n)        (exact, in u128)
//! ```
//!
//! Any contiguous range `a..b` of the sequence is given the excess
//! `prefix_excess(b) - prefix_excess(a)`. That value always lies in `0..=(b - a) * w` (since
//! `E <= n * w`), the ranges of a partition telescope to exactly `E`, and each range's share
//! is known without generating anything before it. So the budget can be cut into slots, then
//! files, then blocks of [`SPLIT_BLOCK_PACKETS`] packets, all independently and in parallel,
//! and every cut is exact to the fen.
//!
//! Inside a block the excesses are drawn independently from a power distribution on `0..=w`
//! whose mean is the merchant's mean excess `m * w` (`m = E / (n * w)`):
//! - if `m <= 1/2`: `x = w * u^k` with `k = (1 - m) / m`, `u` uniform in `[0, 1)`. This is a
//!   Beta(1/k, 1) shape: most packets near the minimum, a long tail up to the maximum, which
//!   is what red-packet rain wants (many small packets, some large ones);
//! - if `m > 1/2`: the mirror image, `x = w - w * u^k` with `k = m / (1 - m)`.
//!
//! `u^k` is read from a table of [`POWER_TABLE_STEPS`] + 1 points with linear interpolation
//! (one table per stream, built once; a `powf` per packet cost more than the encryption).
//! The interpolation error is below one fen on the steep end for the shapes of real budgets
//! and the correction below absorbs it in the sum.
//!
//! The draws are then corrected to the block's exact excess: a shortfall `d` is spread over
//! the packets in proportion to their headroom (`w - x`), an excess in proportion to `x`, and
//! the rounding remainder (fewer than one fen per packet) goes one fen at a time from a random
//! start. The correction moves each amount by about `sigma / sqrt(block)` on average, so
//! the shape is kept, bounds hold by construction, and the block sums exactly.

use rand::{Rng, RngCore};
use rand_chacha::ChaCha8Rng;

/// Packets per block: the unit of exact correction and the memory bound of a stream
/// (4 KiB x 4 bytes = 16 KiB per merchant stream).
pub const SPLIT_BLOCK_PACKETS: usize = 4096;

/// Linear pieces of the tabulated `u^k`.
pub const POWER_TABLE_STEPS: usize = 4096;

/// The tabulated `u -> u^k` of a split's shape (empty for flat shapes).
#[derive(Clone, Debug)]
pub struct PowerTable {
    points: Vec<f64>,
}

impl PowerTable {
    fn new(exponent: Option<f64>) -> PowerTable {
        let points = match exponent {
            Some(exponent) => {
                (0..=POWER_TABLE_STEPS).map(|step| (step as f64 / POWER_TABLE_STEPS as f64).powf(exponent)).collect()
            }
            None => Vec::new(),
        };
        PowerTable { points }
    }

    /// `u^k` for `u = random / 2^32`, interpolated.
    #[inline]
    fn at(&self, random: u32) -> f64 {
        let position = random as usize >> (32 - POWER_TABLE_STEPS.trailing_zeros());
        let fraction = f64::from(random & ((1 << (32 - POWER_TABLE_STEPS.trailing_zeros())) - 1))
            / f64::from(1u32 << (32 - POWER_TABLE_STEPS.trailing_zeros()));
        let low = self.points[position];
        low + (self.points[position + 1] - low) * fraction
    }
}

/// A split that cannot be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// No packets.
    #[error("packet count must be positive")]
    NoPackets,
    /// `min > max`.
    #[error("min {min_fen} is above max {max_fen}")]
    MinAboveMax {
        /// Minimum amount.
        min_fen: u32,
        /// Maximum amount.
        max_fen: u32,
    },
    /// The budget cannot be met within the bounds.
    #[error("budget {budget_fen} fen is outside packets x [min, max]")]
    Infeasible {
        /// The budget.
        budget_fen: u64,
    },
}

/// How one merchant's budget is spread over its packet sequence.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AmountSplit {
    packets: u64,
    min_fen: u32,
    max_fen: u32,
    budget_fen: u64,
    /// `budget - packets * min`.
    excess_total_fen: u64,
    shape: Shape,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    /// All excesses equal to `width * fraction` after correction: `w == 0`, or the budget is
    /// at the minimum or the maximum.
    Flat,
    /// `x = w * u^k`.
    Low { exponent: f64 },
    /// `x = w - w * u^k`.
    High { exponent: f64 },
}

impl AmountSplit {
    /// Checks feasibility and fixes the distribution.
    pub fn new(packets: u64, min_fen: u32, max_fen: u32, budget_fen: u64) -> Result<AmountSplit, SplitError> {
        if packets == 0 {
            return Err(SplitError::NoPackets);
        }
        if min_fen > max_fen {
            return Err(SplitError::MinAboveMax { min_fen, max_fen });
        }
        let floor_fen = u128::from(packets) * u128::from(min_fen);
        let ceiling_fen = u128::from(packets) * u128::from(max_fen);
        let budget = u128::from(budget_fen);
        if budget < floor_fen || budget > ceiling_fen {
            return Err(SplitError::Infeasible { budget_fen });
        }
        let excess_total_fen = (budget - floor_fen) as u64;
        let width = u128::from(max_fen - min_fen);
        let shape = if width == 0 || excess_total_fen == 0 || budget == ceiling_fen {
            Shape::Flat
        } else {
            let mean_fraction = excess_total_fen as f64 / (packets as f64 * width as f64);
            if mean_fraction <= 0.5 {
                Shape::Low { exponent: (1.0 - mean_fraction) / mean_fraction }
            } else {
                Shape::High { exponent: mean_fraction / (1.0 - mean_fraction) }
            }
        };
        Ok(AmountSplit { packets, min_fen, max_fen, budget_fen, excess_total_fen, shape })
    }

    /// Number of packets.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Smallest amount.
    pub fn min_fen(&self) -> u32 {
        self.min_fen
    }

    /// Largest amount.
    pub fn max_fen(&self) -> u32 {
        self.max_fen
    }

    /// The budget.
    pub fn budget_fen(&self) -> u64 {
        self.budget_fen
    }

    fn prefix_excess_fen(&self, index: u64) -> u64 {
        debug_assert!(index <= self.packets);
        (u128::from(self.excess_total_fen) * u128::from(index) / u128::from(self.packets)) as u64
    }

    /// Sum of the amounts of packets `0..index`.
    pub fn prefix_fen(&self, index: u64) -> u64 {
        u64::from(self.min_fen) * index + self.prefix_excess_fen(index)
    }

    /// Sum of the amounts of packets `start..end`.
    pub fn range_fen(&self, start: u64, end: u64) -> u64 {
        self.prefix_fen(end) - self.prefix_fen(start)
    }

    /// The table [`AmountSplit::fill_block`] draws from.
    pub fn power_table(&self) -> PowerTable {
        PowerTable::new(match self.shape {
            Shape::Flat => None,
            Shape::Low { exponent } | Shape::High { exponent } => Some(exponent),
        })
    }

    /// Fills `amounts` (its length is the block size) with the amounts of packets
    /// `start..start + amounts.len()`: each in `[min, max]`, summing to `range_fen`.
    /// `table` is this split's [`AmountSplit::power_table`].
    pub fn fill_block(&self, start: u64, amounts: &mut [u32], rng: &mut ChaCha8Rng, table: &PowerTable) {
        let end = start + amounts.len() as u64;
        assert!(end <= self.packets, "block {start}..{end} beyond {} packets", self.packets);
        if amounts.is_empty() {
            return;
        }
        let width = u64::from(self.max_fen - self.min_fen);
        let target_excess = self.prefix_excess_fen(end) - self.prefix_excess_fen(start);
        debug_assert!(target_excess <= width * amounts.len() as u64);
        let mut drawn_excess: u64 = 0;
        match self.shape {
            Shape::Flat => {
                // Spread evenly: the correction below places the remainder.
                let each = target_excess / amounts.len() as u64;
                amounts.fill(each as u32);
                drawn_excess = each * amounts.len() as u64;
            }
            Shape::Low { .. } | Shape::High { .. } => {
                let width_f = width as f64;
                let high = matches!(self.shape, Shape::High { .. });
                for amount in amounts.iter_mut() {
                    let low_part = width_f * table.at(rng.next_u32());
                    let x = if high { width_f - low_part } else { low_part };
                    // Round to nearest and clamp: the float result may touch the edges.
                    let excess = ((x + 0.5) as u64).min(width);
                    *amount = excess as u32;
                    drawn_excess += excess;
                }
            }
        }
        correct_to_sum(amounts, width as u32, drawn_excess, target_excess, rng);
        let min = self.min_fen;
        for amount in amounts.iter_mut() {
            *amount += min;
        }
    }
}

/// Moves `excesses` (each in `0..=width`, summing to `drawn`) to sum to exactly `target`,
/// keeping each in `0..=width`. Requires `target <= width * len`.
fn correct_to_sum(excesses: &mut [u32], width: u32, drawn: u64, target: u64, rng: &mut ChaCha8Rng) {
    let length = excesses.len();
    if drawn == target {
        return;
    }
    let raise = target > drawn;
    let mut missing = target.abs_diff(drawn);
    // Room of a packet in the direction of the correction.
    let room = |excess: u32| -> u64 {
        if raise {
            u64::from(width - excess)
        } else {
            u64::from(excess)
        }
    };
    let room_total: u64 = excesses.iter().map(|&excess| room(excess)).sum();
    assert!(room_total >= missing, "correction needs {missing}, room {room_total}");
    // Proportional pass: products stay below 2^61 (missing <= 2^12 * 2^24, room <= 2^24),
    // so u64 arithmetic is exact.
    debug_assert!(length <= SPLIT_BLOCK_PACKETS);
    let mut moved: u64 = 0;
    for excess in excesses.iter_mut() {
        let share = missing * room(*excess) / room_total;
        if raise {
            *excess += share as u32;
        } else {
            *excess -= share as u32;
        }
        moved += share;
    }
    missing -= moved;
    // Remainder: fewer than `length` fen, one per packet with room, from a random start.
    let mut index = rng.gen_range(0..length);
    while missing > 0 {
        if room(excesses[index]) > 0 {
            if raise {
                excesses[index] += 1;
            } else {
                excesses[index] -= 1;
            }
            missing -= 1;
        }
        index += 1;
        if index == length {
            index = 0;
        }
    }
}

/// Streams the amounts of packets `start..end` of a split, one block in memory at a time.
pub struct AmountStream {
    split: AmountSplit,
    table: PowerTable,
    rng: ChaCha8Rng,
    /// Sequence index of `block[0]`.
    block_start: u64,
    block: Vec<u32>,
    block_position: usize,
    end: u64,
}

impl AmountStream {
    /// A stream over `start..end` (`end <= split.packets()`).
    pub fn new(split: AmountSplit, start: u64, end: u64, rng: ChaCha8Rng) -> AmountStream {
        assert!(start <= end && end <= split.packets(), "range {start}..{end} outside the split");
        AmountStream {
            split,
            table: split.power_table(),
            rng,
            block_start: start,
            block: Vec::with_capacity(SPLIT_BLOCK_PACKETS),
            block_position: 0,
            end,
        }
    }

    /// Sequence index of the next amount.
    pub fn next_index(&self) -> u64 {
        self.block_start + self.block_position as u64
    }

    /// Packets left.
    pub fn remaining(&self) -> u64 {
        self.end - self.next_index()
    }
}

impl Iterator for AmountStream {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        if self.block_position == self.block.len() {
            let start = self.block_start + self.block.len() as u64;
            if start == self.end {
                return None;
            }
            let length = (self.end - start).min(SPLIT_BLOCK_PACKETS as u64) as usize;
            self.block.clear();
            self.block.resize(length, 0);
            self.split.fill_block(start, &mut self.block, &mut self.rng, &self.table);
            self.block_start = start;
            self.block_position = 0;
        }
        let amount = self.block[self.block_position];
        self.block_position += 1;
        Some(amount)
    }
}

/// All amounts of a split in one vector (for tests and small tools; the generator streams).
pub fn split_amounts(split: AmountSplit, rng: ChaCha8Rng) -> Vec<u32> {
    AmountStream::new(split, 0, split.packets(), rng).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn sums_exactly_and_stays_in_bounds() {
        for &(packets, min, max, budget) in &[
            (10_000u64, 1u32, 20_000u32, 2_000_000u64),
            (10_000, 1, 20_000, 190_000_000),
            (7, 100, 100, 700),
            (5_000, 1, 1, 5_000),
            (9_999, 50, 90, 9_999 * 90),
            (9_999, 50, 90, 9_999 * 50),
            (1, 3, 9, 5),
        ] {
            let split = AmountSplit::new(packets, min, max, budget).unwrap();
            let amounts = split_amounts(split, ChaCha8Rng::seed_from_u64(1));
            assert_eq!(amounts.len() as u64, packets);
            assert_eq!(amounts.iter().map(|&a| u64::from(a)).sum::<u64>(), budget);
            assert!(amounts.iter().all(|&a| a >= min && a <= max));
        }
    }

    #[test]
    fn ranges_telescope() {
        let split = AmountSplit::new(1_000, 10, 500, 123_457).unwrap();
        assert_eq!(split.range_fen(0, 400) + split.range_fen(400, 1_000), 123_457);
    }

    #[test]
    fn infeasible_budgets_are_refused() {
        assert_eq!(AmountSplit::new(10, 5, 9, 49), Err(SplitError::Infeasible { budget_fen: 49 }));
        assert_eq!(AmountSplit::new(10, 5, 9, 91), Err(SplitError::Infeasible { budget_fen: 91 }));
        assert_eq!(AmountSplit::new(0, 5, 9, 0), Err(SplitError::NoPackets));
    }
}
