#!/usr/bin/env bash
# Connection sweep: node CPU per ping and p99 at a fixed rate for several connection counts.
#
#   benches/conn-sweep.sh [--rate 8000] [--duration 4s] [--conns "100 1000 10000 18000"]
#                         [--runtime tokio-uring|glommio] [--node-arg ARG]... [--out DIR]
#
# A release node on CPU 0 (one core), the load generator on CPU 1 (tokio-uring runtime with
# its precise timer by default: evenly spaced sends; one generator process per 9,000
# connections). The node is one process, so 20,000 descriptors bound it here: the sweep
# stops at 18,000 connections (docs/design.md, "The connection driver's cost"). Node CPU per ping comes from the node's /metrics (process CPU over the
# measured window divided by pings answered), as the generator reports it. Both run at nice -10
# so that builds sharing the machine (at nice >= 0) take little from them. Writes
# DIR/sweep.tsv and DIR/sweep.svg; prints the table. Every run is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
rate=8000
runtime=tokio-uring
duration=4s
warmup=2s
conns="100 1000 10000 18000"
out=target/conn-sweep
extra_node_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --rate) rate=$2; shift 2 ;;
        --runtime) runtime=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        --conns) conns=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --node-arg) extra_node_args+=("$2"); shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
mkdir -p "$out"
cargo build --release -q -p redrain-engine -p redrain-loadgen
bin=target/release
data=$(mktemp -d)
node_pid=
cleanup() {
    if [ -n "$node_pid" ]; then kill "$node_pid" 2>/dev/null || true; wait "$node_pid" 2>/dev/null || true; fi
    rm -rf "$data"
}
trap cleanup EXIT
printf 'connections\trate\tprocesses\tnode_cpu_us_per_ping\tp50_ms\tp99_ms\tsent\tok\terrors\tgenerator_limited\n' >"$out/sweep.tsv"
for c in $conns; do
    rm -rf "$data"/*
    sessions=$((c + 1000))
    nice -n -10 taskset -c 0 "$bin/redrain" serve --cores 1 --data-dir "$data" --demo-event false \
        --listen 127.0.0.1:7300 --admin-listen 127.0.0.1:7380 \
        --sessions-per-core-max "$sessions" --idle-timeout-ms 600000 --login-timeout-ms 600000 \
        "${extra_node_args[@]}" >"$out/node-$c.log" 2>&1 &
    node_pid=$!
    for _ in $(seq 100); do
        curl -fsS http://127.0.0.1:7380/healthz >/dev/null 2>&1 && break
        sleep 0.1
    done
    procs=$(( (c + 8999) / 9000 ))
    timeout 600 nice -n -10 taskset -c 1 "$bin/redrain-loadgen" ping --runtime "$runtime" --threads 1 \
        --target 127.0.0.1:7300 --admin 127.0.0.1:7380 --secret-file "$data/auth.secret" \
        --connections "$c" --rate "$rate" --duration "$duration" --warmup "$warmup" \
        --processes "$procs" --json "$out/ping-$c.json" >"$out/loadgen-$c.log" 2>&1 || {
        echo "loadgen failed at $c connections; see $out/loadgen-$c.log" >&2
    }
    kill "$node_pid"; wait "$node_pid" 2>/dev/null || true; node_pid=
    python3 - "$out/ping-$c.json" "$c" "$rate" "$procs" >>"$out/sweep.tsv" <<'PY'
import json, sys
path, c, rate, procs = sys.argv[1:]
try:
    j = json.load(open(path))
except Exception:
    print(f"{c}\t{rate}\t{procs}\tnan\tnan\tnan\t0\t0\t0\tfailed")
    sys.exit(0)
n = j.get("node") or {}
lat = j.get("request_latency") or {}
req = j.get("requests") or {}
cpu = n.get("node_cpu_us_per_request")
limited = (j.get("generator") or {}).get("limited")
fmt = lambda v: "nan" if v is None else f"{v:.2f}"
print(f"{c}\t{rate}\t{procs}\t{fmt(cpu)}\t{fmt(lat.get('p50_ms'))}\t{fmt(lat.get('p99_ms'))}\t"
      f"{req.get('sent', 0)}\t{req.get('ok', 0)}\t{req.get('errors', 0)}\t{'yes' if limited else 'no'}")
PY
done
python3 benches/sweep-svg.py "$out/sweep.svg" "$(basename "$out")=$out/sweep.tsv"
column -t -s "$(printf "\t")" "$out/sweep.tsv"
