#!/usr/bin/env bash
# Benchmark: hermes-api create+resolve+join under concurrent load against a bare axum handler
# doing one Redis round trip, measured in the same run on the same Redis, with the ratio of
# request throughput (target >= 0.5). Both servers are release builds in their own processes;
# one load generator (crates/api/examples/api_bench.rs) drives them one after the other.
#
# Knobs: API_BENCH_FLOWS (default 9000, split over 3 alternating rounds), API_BENCH_CONCURRENCY (32), API_BENCH_TIMEOUT
# seconds per phase (60). Bounded in count and time. Only 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."

FLOWS="${API_BENCH_FLOWS:-9000}"
CONC="${API_BENCH_CONCURRENCY:-32}"
LIMIT="${API_BENCH_TIMEOUT:-60}"
for p in redis-server redis-cli python3 curl timeout; do
  command -v "$p" >/dev/null || { echo "api bench: $p is missing" >&2; exit 1; }
done
cargo build --release --locked -p hermes-api --bin hermes-api --example api_bench
# API_BENCH_BIN: another hermes-api build (say, the base of a change) to measure in its place.
bin=${API_BENCH_BIN:-target/release/hermes-api}
bench=target/release/examples/api_bench

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
redis_port=$(free_port)
api_port=$(free_port)
bare_port=$(free_port)
total=$((LIMIT * 8 + 30))

timeout "$total" redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done
url="redis://127.0.0.1:$redis_port"

HERMES_ENV=development REDIS_URL="$url" API_LISTEN="127.0.0.1:$api_port" \
JWT_SECRET=bench-jwt-secret-0123456789abcdefghijklmn TURN_SECRET=bench-turn-secret-0123456789abcdefghijk \
API_RATE_LIMIT=100000000 API_RESOLVE_IP_LIMIT=100000000 API_RESOLVE_CODE_LIMIT=100000000 RUST_LOG=warn \
  timeout "$total" "$bin" >"$work/api.log" 2>&1 &
pids+=($!)
RUST_LOG=warn timeout "$total" "$bench" bare --listen "127.0.0.1:$bare_port" --redis-url "$url" \
  >"$work/bare.log" 2>&1 &
pids+=($!)
for port in "$api_port" "$bare_port"; do
  for _ in $(seq 200); do
    curl -s -o /dev/null "http://127.0.0.1:$port/" && break
    sleep 0.05
  done
done

timeout "$total" "$bench" load --api "http://127.0.0.1:$api_port" --bare "http://127.0.0.1:$bare_port" \
  --flows "$FLOWS" --concurrency "$CONC" --max-secs "$LIMIT"
