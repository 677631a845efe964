#!/usr/bin/env bash
# Short benchmark pass for CI (a few minutes on two cores):
#  1. every criterion bench of redrain-benches with a short warm-up and
#     measurement (absolute numbers are printed, never checked);
#  2. the end-to-end ping benchmark in quick mode, whose ratios are compared with
#     benches/baseline.json; it fails only when a ratio is worse than the
#     baseline by more than the baseline's factor (2x).
# Usage: benches/ci-bench.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/ci-bench/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out"

cargo bench -p redrain-benches --benches -- --warm-up-time 1 --measurement-time 2 --noplot

cpus=$(nproc)
if [ "$cpus" -lt 2 ]; then
  echo "ci-bench: the e2e benchmark needs two CPUs (node and generator on separate cores); skipped" >&2
  exit 0
fi
cargo run --release -p redrain-benches --bin e2e -- --quick --out "$out" --baseline benches/baseline.json
echo "ci-bench: results in $out"
