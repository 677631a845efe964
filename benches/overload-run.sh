#!/bin/bash
# Overload runs (docs/performance.md, "Overload"): a release node on CPU 0 (1 core, demo
# event, clock 285 s into slot 0 so most shakes win), the generator on CPU 1. Every process
# ends by itself (timeout). With CAP_US set, the node starts inside the cgroup-v1 cpu
# group $CGROUP (default /sys/fs/cgroup/cpu/redrain-node; create it first, as root), capped to CAP_US of every
# 10 ms, so that one generator core can offer it several times its capacity.
# usage: [CAP_US=1000] [SHAKE_MS=5] [OFFSET_MS=285000] benches/overload-run.sh NAME [loadgen shake args...]
set -u
CGROUP=${CGROUP:-/sys/fs/cgroup/cpu/redrain-node}
R=${RELEASE_DIR:-target/release}
D=${OUT_DIR:-/tmp/redrain-overload}; mkdir -p $D
name=$1; shift
rm -rf $D/data-$name
CG=""
[ -n "${CAP_US:-}" ] && { echo $CAP_US > $CGROUP/cpu.cfs_quota_us; CG='echo $$ > $CGROUP/cgroup.procs;'; }
REDRAIN_DEMO_EVENT=true timeout 120 bash -c "$CG exec taskset -c 0 $R/redrain serve \"\$@\"" node --cores 1 --data-dir $D/data-$name \
  --listen 127.0.0.1:17000 --admin-listen 127.0.0.1:17080 --shake-interval-ms ${SHAKE_MS:-10} --clock-offset-ms ${OFFSET_MS:-0} \
  > $D/$name.node.out 2> $D/$name.node.err &
NODE=$!
for i in $(seq 1 100); do grep -q "redrain ready" $D/$name.node.out 2>/dev/null && break; sleep 0.1; done

timeout 100 taskset -c 1 $R/redrain-loadgen shake --target 127.0.0.1:17000 --admin 127.0.0.1:17080 \
  --secret-file $D/data-$name/auth.secret "$@" --json $D/$name.json > $D/$name.lg.out 2> $D/$name.lg.err
curl -s 127.0.0.1:17080/metrics > $D/$name.metrics
kill -TERM $NODE; wait $NODE
