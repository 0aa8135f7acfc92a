#!/usr/bin/env bash
# Benchmark: hermes-logger against `redis-cli psubscribe 'logs:*'` receiving the same stream in
# the same run, in two phases on one private redis-server:
#
#  live     redis-benchmark PUBLISHes N log events (varying callIds) as fast as Redis takes them
#           while every subscriber follows; rate = N / (first PUBLISH → subscriber has all N).
#  backlog  the subscribers are frozen (SIGSTOP), N events are published and wait in Redis's
#           output buffers, then all subscribers resume at once (SIGCONT); rate = N / (resume →
#           subscriber has all N). This measures how fast each side can consume, not the
#           publisher.
#
# Subscribers: redis-cli (reference), hermes-logger to /dev/null (console defaults), and
# hermes-logger as the daemon runs (plain file with --detail, stdout to /dev/null).
# Knobs: LOGGER_BENCH_EVENTS (default 200000), LOGGER_BENCH_TIMEOUT seconds per phase
# (default 120). Bounded in count (N) and time (every wait has a deadline, every process is
# killed by pid at the end). Only 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."

N="${LOGGER_BENCH_EVENTS:-200000}"
LIMIT="${LOGGER_BENCH_TIMEOUT:-120}"
# LOGGER_BENCH_BIN: another hermes-logger build (say, the base of a change) to measure in its place.
bin=${LOGGER_BENCH_BIN:-target/release/hermes-logger}
if [ ! -x "$bin" ]; then
  cargo build --release -p hermes-logger --locked
fi
for p in redis-server redis-cli redis-benchmark python3 mkfifo; do
  command -v "$p" >/dev/null || { echo "logger bench: $p is missing (apt-get install redis-tools python3)" >&2; exit 1; }
done

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${LOGGER_BENCH_KEEP:-}" ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# Pub/sub output limit lifted: slow subscribers are measured, not disconnected.
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$work" --client-output-buffer-limit "pubsub 0 0 0" >"$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
url="redis://127.0.0.1:$port"
now_ns() { date +%s%N; }
payload='{"ts":1800000000123,"service":"api","level":"info","event":"call.created","callId":"c0ffee0c0ffee0__rand_int__","detail":{"participantId":"a1a1a1a1a1a1a1a1a1a1a1a1a1","role":"offerer"}}'

# Record when process $1 has exited into file $2 (10 ms resolution), or give up at the deadline.
watch_exit() {
  local pid=$1 out=$2 end=$(( $(date +%s) + LIMIT ))
  while kill -0 "$pid" 2>/dev/null; do
    [ "$(date +%s)" -lt "$end" ] || return 0
    sleep 0.01
  done
  now_ns >"$out"
}

phase() {
  local mode=$1 dir="$work/$1"
  mkdir -p "$dir"
  # Reference: redis-cli prints 3 lines for the subscription, then 4 per message.
  mkfifo "$dir/cli.fifo"
  redis-cli -p "$port" psubscribe 'logs:*' >"$dir/cli.fifo" &
  local cli=$!
  pids+=("$cli")
  ( head -n $((3 + 4 * N)) <"$dir/cli.fifo" >/dev/null && now_ns >"$dir/cli.done" ) &
  pids+=($!)
  "$bin" --redis-url "$url" --no-file --health-listen off --color never \
    --max-events "$N" >/dev/null 2>"$dir/null.err" &
  local null=$!
  pids+=("$null")
  "$bin" --redis-url "$url" --file "$dir/observer.log" --detail --health-listen off \
    --color never --max-events "$N" >/dev/null 2>"$dir/file.err" &
  local file=$!
  pids+=("$file")
  watch_exit "$null" "$dir/null.done" &
  pids+=($!)
  watch_exit "$file" "$dir/file.done" &
  pids+=($!)

  local subs=0
  for _ in $(seq 200); do
    subs=$(redis-cli -p "$port" client list type pubsub | grep -c 'psub=1' || true)
    [ "$subs" -ge 3 ] && break
    sleep 0.05
  done
  [ "$subs" -ge 3 ] || { echo "logger bench: subscribers did not subscribe" >&2; exit 1; }

  if [ "$mode" = backlog ]; then kill -STOP "$cli" "$null" "$file"; fi
  local t_pub0 t_pub1 t0
  t_pub0=$(now_ns)
  timeout "$LIMIT" redis-benchmark -p "$port" -n "$N" -c 4 -P 32 -r 1000000000000 -q \
    PUBLISH logs:api "$payload" >/dev/null 2>&1
  t_pub1=$(now_ns)
  t0=$t_pub0
  if [ "$mode" = backlog ]; then
    t0=$(now_ns)
    kill -CONT "$cli" "$null" "$file"
  fi
  local end=$(( $(date +%s) + LIMIT ))
  while [ "$(date +%s)" -lt "$end" ]; do
    [ -f "$dir/cli.done" ] && [ -f "$dir/null.done" ] && [ -f "$dir/file.done" ] && break
    sleep 0.05
  done
  kill "$cli" 2>/dev/null || true
  local events malformed skipped
  events=$(grep -c 'call.created' "$dir/observer.log" 2>/dev/null || true)
  malformed=$(grep -c 'malformed' "$dir/observer.log" 2>/dev/null || true)
  skipped=$(cat "$dir/null.err" "$dir/file.err" | grep -c 'fell behind' || true)
  echo "$mode $t_pub0 $t_pub1 $t0 ${events:-0} ${malformed:-0} ${skipped:-0}" >"$dir/summary"
}

phase live
phase backlog

python3 - "$N" "$work" <<'PY'
import os, sys
n, work = int(sys.argv[1]), sys.argv[2]
ok = True
print(f"hermes-logger benchmark: {n} events per phase (redis-benchmark -c 4 -P 32 PUBLISH), 2 CPUs shared by all processes")
print(f"| {'phase':<8} | {'subscriber':<44} | {'seconds':>8} | {'events/s':>10} | {'ratio':>6} |")
print(f"|{'-'*10}|{'-'*46}|{'-'*9}:|{'-'*11}:|{'-'*7}:|")
notes = []
for phase in ("live", "backlog"):
    d = os.path.join(work, phase)
    _, p0, p1, t0, events, malformed, skipped = open(os.path.join(d, "summary")).read().split()
    p0, p1, t0 = int(p0), int(p1), int(t0)
    def done(name):
        path = os.path.join(d, name + ".done")
        return int(open(path).read()) if os.path.exists(path) else None
    ref = done("cli")
    ref_rate = n / ((ref - t0) / 1e9) if ref else None
    for label, key in (("redis-cli psubscribe 'logs:*' (reference)", "cli"),
                       ("hermes-logger -> /dev/null", "null"),
                       ("hermes-logger --detail -> file (+ /dev/null)", "file")):
        t = done(key)
        if t is None:
            print(f"| {phase:<8} | {label:<44} | {'timeout':>8} | {'-':>10} | {'-':>6} |")
            ok = False
            continue
        secs = (t - t0) / 1e9
        rate = n / secs
        ratio = rate / ref_rate if ref_rate else 0
        if key != "cli" and ratio < 0.8:
            ok = False
        print(f"| {phase:<8} | {label:<44} | {secs:>8.3f} | {rate:>10,.0f} | {ratio:>6.2f} |")
    notes.append(f"{phase}: published at {n / ((p1 - p0) / 1e9):,.0f} events/s; events in the file {events} "
                 f"(expected {n}); malformed {malformed}; 'fell behind' notices {skipped}")
for note in notes:
    print(note)
print("target: ratio >= 0.8 in both phases" + ("" if ok else "  ** NOT MET **"))
PY
