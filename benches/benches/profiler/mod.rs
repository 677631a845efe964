//! Shared criterion configuration: short runs stay short, and `--profile-time N`
//! writes a flamegraph per bench (target/criterion/<bench>/profile/flamegraph.svg).

use criterion::Criterion;
use pprof::criterion::{Output, PProfProfiler};

/// Samples per second taken by the profiler under `--profile-time`.
const PROFILE_FREQUENCY_HZ: i32 = 997;

pub fn criterion() -> Criterion {
    Criterion::default().with_profiler(PProfProfiler::new(PROFILE_FREQUENCY_HZ, Output::Flamegraph(None)))
}
