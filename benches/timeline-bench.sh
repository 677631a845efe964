#!/usr/bin/env bash
# Timeline figures on one node (durable on the local disk, not replicated): committed
# inbox entries/s one-to-one and to groups, syncs/s, send-to-notify latency, and memory per
# idle user with an inbox of ~50 entries. Every run is bounded (--duration, --drain-timeout)
# and the node it starts is stopped by its pid. See docs/performance.md, "Timelines".
#
#   cargo build --release -p redrain-engine --bin redrain && cargo build --release -p redrain-loadgen --bin redrain-loadgen
#   benches/timeline-bench.sh            # all runs; RUNS="one_to_one group100" for some
#   REPLICATED=1 benches/timeline-bench.sh   # the timeline log replicated to two
#       `redrain replica serve` peers on loopback (2 of 3 copies = committed), fresh each run
set -euo pipefail
BIN=${BIN:-target/release}
PORT=${PORT:-17140}
ADMIN=${ADMIN:-17141}
DUR=${DUR:-10s}
CORES=${CORES:-2}
RUNS=${RUNS:-"one_to_one group100 group500 memory"}
WORK=$(mktemp -d /tmp/redrain-timeline-bench.XXXXXX)
NODE=""
REPLICATED=${REPLICATED:-0}
REPLICA_PORTS=${REPLICA_PORTS:-"17150 17151"}
REPLICAS=""
PEER_ARGS=()
trap '[ -n "$NODE" ] && kill "$NODE" 2>/dev/null; for r in $REPLICAS; do kill "$r" 2>/dev/null; done; rm -rf "$WORK/data" "$WORK/park-"*' EXIT
# The benchmark measures throughput, not the per-user limiter: set the rates it needs.
printf 'messages_per_user_per_s = 1000000\nmessages_per_user_burst = 1000000\nsyncs_per_user_per_s = 1000000\nsyncs_per_user_burst = 1000000\n' > "$WORK/timeline.toml"
# Extra keys, e.g. retention: TIMELINE_EXTRA='[timeline]\nretention_bytes_max = 268435456\n'
printf '%b' "${TIMELINE_EXTRA:-}" >> "$WORK/timeline.toml"

metric() { # sum of a metric over its series
    curl -s "127.0.0.1:$ADMIN/metrics" | awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $2 } END { printf "%.0f\n", s }'
}

# Replicated runs: two fresh peer parks before each node start (a fresh node would
# otherwise catch up the previous run's records from them), stopped with the node.
start_replicas() {
    local peers=""
    for p in $REPLICA_PORTS; do
        rm -rf "$WORK/park-$p"
        "$BIN/redrain" replica serve --listen "127.0.0.1:$p" --data-dir "$WORK/park-$p" \
            > "$WORK/park-$p.out" 2> "$WORK/park-$p.log" &
        REPLICAS="$REPLICAS $!"
        peers="${peers:+$peers,}127.0.0.1:$p"
    done
    for p in $REPLICA_PORTS; do
        for _ in $(seq 100); do [ -s "$WORK/park-$p.out" ] && break; sleep 0.1; done
    done
    PEER_ARGS=(--opens-replica-peers "$peers")
}

stop_replicas() {
    [ -n "$REPLICAS" ] && echo "replicas hold: $(for p in $REPLICA_PORTS; do du -sm "$WORK/park-$p" | cut -f1; done | paste -sd/) MiB;" \
        "node log: $(grep -c 'catch-up\|peer' "$WORK/node.log" || true) peer lines"
    for r in $REPLICAS; do kill "$r" 2>/dev/null; wait "$r" 2>/dev/null || true; done; REPLICAS=""
}

start_node() {
    rm -rf "$WORK/data"
    [ "$REPLICATED" = 1 ] && start_replicas
    REDRAIN_DEMO_EVENT=false "$BIN/redrain" serve --cores "$CORES" --listen "127.0.0.1:$PORT" \
        --admin-listen "127.0.0.1:$ADMIN" --data-dir "$WORK/data" --config "$WORK/timeline.toml" \
        ${PEER_ARGS[@]+"${PEER_ARGS[@]}"} > "$WORK/node.out" 2> "$WORK/node.log" &
    NODE=$!
    for _ in $(seq 100); do grep -q "redrain ready" "$WORK/node.out" 2>/dev/null && return; sleep 0.1; done
    echo "node did not start"; cat "$WORK/node.log"; exit 1
}

stop_node() { kill "$NODE"; wait "$NODE" 2>/dev/null || true; NODE=""; stop_replicas; }

loadgen() {
    "$BIN/redrain-loadgen" chat --target "127.0.0.1:$PORT" --admin "127.0.0.1:$ADMIN" \
        --secret-file "$WORK/data/auth.secret" --threads 1 "$@"
}

# One measured run: the node's committed entries/s and syncs/s over 5 s in the middle of
# the window, and the generator's own table.
throughput() {
    local name=$1; shift
    start_node
    loadgen --duration "$DUR" --warmup 2s --json "$WORK/$name.json" "$@" > "$WORK/$name.txt" &
    local gen=$!
    sleep 4
    local e0 s0 n0 t0 e1 s1 n1 t1
    e0=$(metric redrain_timeline_entries_committed_total); s0=$(metric redrain_timeline_syncs_total)
    n0=$(metric redrain_timeline_sends_total); t0=$(date +%s.%N)
    sleep 5
    e1=$(metric redrain_timeline_entries_committed_total); s1=$(metric redrain_timeline_syncs_total)
    n1=$(metric redrain_timeline_sends_total); t1=$(date +%s.%N)
    wait "$gen" || true
    local retention
    retention="log bytes $(metric redrain_timeline_log_bytes), segments deleted $(metric redrain_timeline_segments_deleted_total), checkpoints $(metric redrain_timeline_checkpoints_total), checkpoint records $(metric redrain_timeline_checkpoint_records_total)"
    stop_node
    echo "== $name: $*"
    awk -v e=$((e1 - e0)) -v s=$((s1 - s0)) -v n=$((n1 - n0)) -v t0="$t0" -v t1="$t1" 'BEGIN {
        dt = t1 - t0; printf "node: %.0f sends/s committed, %.0f entries/s committed, %.0f syncs/s\n", n / dt, e / dt, s / dt }'
    grep -E "requests|throughput|chat |send>|node cpu|node " "$WORK/$name.txt" || true
    echo "timeline log: $retention"
}

for run in $RUNS; do
    case $run in
    one_to_one) throughput one_to_one --connections 2000 --in-flight 4 --sync-every 0 ;;
    group100) throughput group100 --connections 1000 --groups 10 --group-size 100 --in-flight 1 ;;
    group100x2) throughput group100x2 --connections 1000 --groups 10 --group-size 100 --in-flight 2 ;;
    group500) throughput group500 --connections 1000 --groups 2 --group-size 500 --in-flight 1 ;;
    memory)
        # 10,000 users in 1,000 groups of 10 (each member sends ~5 messages: ~50 entries per
        # inbox; the entries per inbox measured are printed). The baseline is the same 10,000 sessions held and closed without a message
        # (`connect`), so the allocator already holds what connections cost.
        start_node
        "$BIN/redrain-loadgen" connect --target "127.0.0.1:$PORT" --admin "127.0.0.1:$ADMIN" \
            --secret-file "$WORK/data/auth.secret" --threads 1 --connections 10000 --connect-rate 5000 \
            --duration 2s > "$WORK/memory-connect.txt" || true
        sleep 2
        r0=$(metric redrain_process_resident_bytes)
        loadgen --connections 10000 --groups 1000 --group-size 10 --rate ${MEMORY_RATE:-3000} --duration ${MEMORY_DURATION:-32s} --warmup 0s --drain-timeout 30s \
            --connect-rate 5000 > "$WORK/memory.txt" || true
        sleep 2
        r1=$(metric redrain_process_resident_bytes); inboxes=$(metric redrain_timeline_inboxes)
        recent=$(metric redrain_timeline_recent_bytes)
        entries=$(metric redrain_timeline_entries_committed_total); sessions=$(metric redrain_sessions_active)
        stop_node
        echo "== memory: RSS $r0 -> $r1 bytes, $inboxes inboxes, $entries entries, $sessions sessions left"
        # The newest entries of all inboxes share one arena per core, bounded by
        # timeline.recent_bytes_max: a fixed cost, not a per-user one.
        awk -v a="$r0" -v b="$r1" -v i="$inboxes" -v e="$entries" -v r="$recent" 'BEGIN {
            printf "memory per idle user: %.0f bytes (%.1f entries per inbox); recent-entry arenas %.1f MiB of it, so %.0f bytes per user beyond them\n",
                (b - a) / i, e / i, r / 1048576, (b - a - r) / i }'
        grep -E "chat " "$WORK/memory.txt" || true
        ;;
    esac
done
