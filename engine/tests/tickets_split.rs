//! The amount splitter: exact sums and bounds for any feasible (count, min, max, budget),
//! including when a merchant's sequence is cut into arbitrary ranges (slots, files).

use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use redrain_engine::tickets::split::{split_amounts, AmountSplit, AmountStream};

fn feasible() -> impl Strategy<Value = (u64, u32, u32, u64, u64)> {
    (1u64..20_000, 1u32..100_000, 0u32..200_000, 0.0f64..=1.0, any::<u64>()).prop_map(
        |(packets, min_fen, width_fen, fraction, seed)| {
            let max_fen = (min_fen + width_fen).min(16_777_215);
            let low = packets * u64::from(min_fen);
            let high = packets * u64::from(max_fen);
            let budget_fen = low + ((high - low) as f64 * fraction) as u64;
            (packets, min_fen, max_fen, budget_fen.min(high), seed)
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn sum_is_exact_and_bounds_hold((packets, min_fen, max_fen, budget_fen, seed) in feasible()) {
        let split = AmountSplit::new(packets, min_fen, max_fen, budget_fen).unwrap();
        let amounts = split_amounts(split, ChaCha8Rng::seed_from_u64(seed));
        prop_assert_eq!(amounts.len() as u64, packets);
        prop_assert_eq!(amounts.iter().map(|&a| u64::from(a)).sum::<u64>(), budget_fen);
        prop_assert!(amounts.iter().all(|&a| a >= min_fen && a <= max_fen));
    }

    #[test]
    fn any_cut_into_ranges_is_exact(
        (packets, min_fen, max_fen, budget_fen, seed) in feasible(),
        cuts in proptest::collection::vec(0.0f64..1.0, 0..6),
    ) {
        let split = AmountSplit::new(packets, min_fen, max_fen, budget_fen).unwrap();
        let mut bounds: Vec<u64> = cuts.iter().map(|c| (c * packets as f64) as u64).collect();
        bounds.push(0);
        bounds.push(packets);
        bounds.sort();
        let mut total = 0u64;
        for (index, range) in bounds.windows(2).enumerate() {
            let stream = AmountStream::new(split, range[0], range[1], ChaCha8Rng::seed_from_u64(seed ^ index as u64));
            let amounts: Vec<u32> = stream.collect();
            prop_assert_eq!(amounts.len() as u64, range[1] - range[0]);
            let sum: u64 = amounts.iter().map(|&a| u64::from(a)).sum();
            prop_assert_eq!(sum, split.range_fen(range[0], range[1]));
            prop_assert!(amounts.iter().all(|&a| a >= min_fen && a <= max_fen));
            total += sum;
        }
        prop_assert_eq!(total, budget_fen);
    }
}

#[test]
fn distribution_is_skewed_with_the_requested_mean_and_reaches_both_ends() {
    // Mean 2 yuan on [0.10, 88.88] yuan: mostly small packets, a long tail of large ones.
    let split = AmountSplit::new(300_000, 10, 8_888, 60_000_000).unwrap();
    let amounts = split_amounts(split, ChaCha8Rng::seed_from_u64(7));
    let mut sorted = amounts.clone();
    sorted.sort_unstable();
    let median = sorted[sorted.len() / 2];
    let p99 = sorted[sorted.len() * 99 / 100];
    assert!(median < 200, "median {median} fen should sit below the 200 fen mean");
    assert!(p99 > 1_500, "p99 {p99} fen: the tail should reach far above the mean");
    assert!(sorted[0] <= 12 && *sorted.last().unwrap() >= 8_000, "both ends reached");
}

#[test]
fn same_seed_same_amounts_other_seed_other_amounts() {
    let split = AmountSplit::new(50_000, 1, 10_000, 5_000_000).unwrap();
    let a = split_amounts(split, ChaCha8Rng::seed_from_u64(1));
    let b = split_amounts(split, ChaCha8Rng::seed_from_u64(1));
    let c = split_amounts(split, ChaCha8Rng::seed_from_u64(2));
    assert_eq!(a, b);
    assert_ne!(a, c);
}
