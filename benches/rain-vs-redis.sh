#!/usr/bin/env bash
# Shake vs ping on the node, and the node vs Redis running the usual flash-sale Lua stock
# script, in one run, each server pinned to the same core (CPU 0) and driven from CPU 1.
#
# The figure compared is server CPU per request (user + system time of the server process
# read from /proc around each run), because one generator core cannot saturate one server
# core on a 2-CPU box; throughput is printed too.
#
# Usage: benches/rain-vs-redis.sh [OUT_DIR] [SECONDS]
# Needs: redis-server and redis-benchmark (Debian: redis-server, redis-tools), a release
# build of redrain and redrain-loadgen (this script builds them).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/rain-vs-redis/$(date -u +%Y%m%dT%H%M%SZ)}"
secs="${2:-10}"
connections="${CONNECTIONS:-1000}"
mkdir -p "$out"
cargo build --release -q --bin redrain -p redrain-loadgen
node_bin=target/release/redrain
loadgen=target/release/redrain-loadgen
tick=$(getconf CLK_TCK)

cpu_s() { # user+system seconds of a pid
  awk -v t="$tick" '{ printf "%.4f", ($14 + $15) / t }' "/proc/$1/stat"
}

data="$out/node-data"
rm -rf "$data"
taskset -c 0 "$node_bin" serve --cores 1 --data-dir "$data" --listen 127.0.0.1:7300 --admin-listen 127.0.0.1:7380 \
  --shake-interval-ms 0 --issuance-quota-per-s 100000000 >"$out/node.out" 2>"$out/node.err" &
node_pid=$!
cleanup() { kill "$node_pid" 2>/dev/null || true; [ -n "${redis_pid:-}" ] && kill "$redis_pid" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 100); do grep -q "redrain ready" "$out/node.out" 2>/dev/null && break; sleep 0.1; done

# One node run: scenario, in-flight; prints "requests node_cpu_s".
node_run() {
  local scenario=$1 inflight=$2 name="$1-if$2"
  local before after
  before=$(cpu_s "$node_pid")
  taskset -c 1 "$loadgen" "$scenario" --target 127.0.0.1:7300 --admin 127.0.0.1:7380 \
    --secret-file "$data/auth.secret" --connections "$connections" --in-flight "$inflight" \
    --duration "${secs}s" --warmup 0s --connect-rate 5000 --json "$out/$name.json" >"$out/$name.txt" 2>&1
  after=$(cpu_s "$node_pid")
  local ok
  ok=$(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['requests']['ok'])" "$out/$name.json")
  echo "$ok $(python3 -c "print(round($after - $before, 4))")"
}

redis_run() { # pipeline; prints "requests redis_cpu_s"
  local pipeline=$1 n=$2
  local before after
  before=$(cpu_s "$redis_pid")
  taskset -c 1 redis-benchmark -p 7390 -c "$connections" -n "$n" -P "$pipeline" -q \
    EVALSHA "$sha" 1 sold 1000000000000 >"$out/redis-P$pipeline.txt" 2>&1
  after=$(cpu_s "$redis_pid")
  echo "$n $(python3 -c "print(round($after - $before, 4))")"
}

echo "node: ping and shake, $connections connections, ${secs}s each"
ping1=$(node_run ping 1); shake1=$(node_run shake 1)
ping16=$(node_run ping 16); shake16=$(node_run shake 16)
kill "$node_pid"; wait "$node_pid" 2>/dev/null || true

taskset -c 0 redis-server --port 7390 --save "" --appendonly no --daemonize no >"$out/redis.log" 2>&1 &
redis_pid=$!
for _ in $(seq 50); do redis-cli -p 7390 ping >/dev/null 2>&1 && break; sleep 0.1; done
# The usual flash-sale stock script: check the count against the stock, then increment.
sha=$(redis-cli -p 7390 SCRIPT LOAD "local sold = tonumber(redis.call('GET', KEYS[1]) or '0') if sold < tonumber(ARGV[1]) then redis.call('INCR', KEYS[1]) return 1 end return 0")
redis1=$(redis_run 1 300000); redis16=$(redis_run 16 2000000)

python3 - "$out" "$ping1" "$shake1" "$ping16" "$shake16" "$redis1" "$redis16" <<'EOF'
import json, sys
out = sys.argv[1]
def parse(s):
    n, cpu = s.split()
    return int(n), float(cpu)
runs = dict(zip(["ping1", "shake1", "ping16", "shake16", "redis1", "redis16"], map(parse, sys.argv[2:])))
rows = {}
for k, (n, cpu) in runs.items():
    rows[k] = {"requests": n, "server_cpu_s": cpu, "server_cpu_us_per_request": cpu * 1e6 / max(n, 1),
               "requests_per_server_cpu_s": n / cpu if cpu > 0 else None}
summary = {
    "runs": rows,
    "shake_over_ping_cpu_per_request_if1": rows["shake1"]["server_cpu_us_per_request"] / rows["ping1"]["server_cpu_us_per_request"],
    "shake_over_ping_cpu_per_request_if16": rows["shake16"]["server_cpu_us_per_request"] / rows["ping16"]["server_cpu_us_per_request"],
    "shakes_per_cpu_s_over_redis_if1": rows["shake1"]["requests_per_server_cpu_s"] / rows["redis1"]["requests_per_server_cpu_s"],
    "shakes_per_cpu_s_over_redis_if16": rows["shake16"]["requests_per_server_cpu_s"] / rows["redis16"]["requests_per_server_cpu_s"],
}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)
for k, r in rows.items():
    print(f"{k:8} {r['requests']:>9} requests  server CPU {r['server_cpu_s']:.3f} s  {r['server_cpu_us_per_request']:.2f} us/request  {r['requests_per_server_cpu_s'] or 0:,.0f} requests per CPU-s")
for k in ["shake_over_ping_cpu_per_request_if1", "shake_over_ping_cpu_per_request_if16", "shakes_per_cpu_s_over_redis_if1", "shakes_per_cpu_s_over_redis_if16"]:
    print(f"{k}: {summary[k]:.3f}")
EOF
echo "results in $out"
