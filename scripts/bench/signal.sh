#!/usr/bin/env bash
# Signal relay benchmark: latency p50/p99 and msgs/s for 1000 concurrent calls, same-replica and
# cross-replica, beside a raw Redis PUBLISH→subscriber hop in the same run; RSS of 10 000 idle
# connections. Loopback only; bounded. Knobs: SIGNAL_BENCH_CALLS (1000), SIGNAL_BENCH_ROUNDS
# (20), SIGNAL_BENCH_CLOSED_TURNS (3: each closed loop runs that often, paths in turns), SIGNAL_BENCH_PACED_SECS (5: the open loop sends that long) or SIGNAL_BENCH_PACED_ROUNDS, SIGNAL_BENCH_INTERVAL_MS (default: half the measured
# cross-replica capacity), SIGNAL_BENCH_MIX_CALLS (= CALLS), SIGNAL_BENCH_HOLD_SECS (30),
# SIGNAL_BENCH_IDLE (10000; 0 skips), SIGNAL_BENCH_BIN (another hermes-signal build to compare),
# SIGNAL_BENCH_CLUSTER (1; 0 skips the Redis Cluster tables: 1 vs 3 primaries, capacity).
set -euo pipefail
cd "$(dirname "$0")/../.."
# 10 000 idle client sockets in the bench process and as many in the replica.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" -lt 12000 ]; then
  echo "ulimit -n is $(ulimit -n); need >= 12000 for 10 000 connections" >&2
  export SIGNAL_BENCH_IDLE="${SIGNAL_BENCH_IDLE:-$(( $(ulimit -n) - 2000 ))}"
fi
# Build, then run the bench executable directly (not through cargo, whose build lock other
# builds may hold), bounded in time.
exe="$(cargo bench -p hermes-signal --bench relay --no-run --message-format=json 2>/dev/null \
  | grep '"kind":\["bench"\]' | grep -o '"executable":"[^"]*"' | tail -n 1 | cut -d'"' -f4)"
if [ -z "$exe" ] || [ ! -x "$exe" ]; then
  echo "could not build the signal bench" >&2
  exit 1
fi
exec timeout 900 "$exe" --bench
