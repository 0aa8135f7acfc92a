#!/usr/bin/env bash
# `make bench BENCH=turn-idle`: many idle TURN-over-TLS clients, hermes-turn vs coturn.
#
# Each server in turn (same settings: loopback TLS listener, REST secret, no quotas, a relay
# port range wider than the client count) gets TURN_IDLE_CLIENTS (default 10 000) TLS clients
# from scripts/bench/turn_idle_clients.py, each with one UDP allocation, all left idle. Reported
# per server: clients allocated, set-up time, RSS at rest and (RSS at rest - RSS before) per
# client, and CPU at rest (utime+stime over TURN_IDLE_SECONDS, default 20, as a share of one
# core). The count is capped so that the server's two descriptors per client (TLS connection,
# relay socket) fit in this shell's open-file limit. Only 127.0.0.1 is used; every client
# count and wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/../.."

# One TURN benchmark at a time on a machine (this one or turn.sh, from any checkout): two
# at once overload the load generators (one hermes run lost 49 % that way) and measure each
# other's CPU.
exec 9>"${TMPDIR:-/tmp}/hermes-bench-turn.lock"
if ! flock -n 9; then
  echo "another TURN benchmark is running on this machine; waiting for it (at most 1 h)" >&2
  flock -w 3600 9 || { echo "gave up waiting for the other TURN benchmark" >&2; exit 1; }
fi

CLIENTS="${TURN_IDLE_CLIENTS:-10000}"
REST="${TURN_IDLE_SECONDS:-20}"
for p in turnserver openssl python3; do
  command -v "$p" >/dev/null || { echo "missing $p (apt-get install coturn openssl python3)"; exit 1; }
done
BIN=${TURN_BENCH_BIN:-target/release/hermes-turn}
[ -x "$BIN" ] || cargo build --release -p hermes-turn
NOFILE=$(ulimit -n)
MAX_CLIENTS=$(( (NOFILE - 200) / 2 ))
if [ "$CLIENTS" -gt "$MAX_CLIENTS" ]; then
  echo "open-file limit $NOFILE: $MAX_CLIENTS clients instead of $CLIENTS"
  CLIENTS=$MAX_CLIENTS
fi

WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
SECRET="idle-secret-$(date +%s)"
TICK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
rss_kb() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
free_port() { python3 -c 'import socket
t=socket.socket(); t.bind(("127.0.0.1",0)); print(t.getsockname()[1])'; }
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj /CN=bench.local -keyout "$WORK/key.pem" -out "$WORK/cert.pem" >/dev/null 2>&1

# measure NAME PID TLS_PORT -> one result line
measure() {
  local name=$1 pid=$2 port=$3 before
  before=$(rss_kb "$pid")
  mkfifo "$WORK/hold-$name"
  timeout $(( REST * 4 + 600 )) python3 scripts/bench/turn_idle_clients.py 127.0.0.1 "$port" \
    "$SECRET" "$CLIENTS" $(( REST * 4 + 300 )) <"$WORK/hold-$name" >"$WORK/gen-$name.out" 2>&1 &
  local gen=$!
  exec 3>"$WORK/hold-$name"
  while kill -0 "$gen" 2>/dev/null && ! grep -q '^ready' "$WORK/gen-$name.out"; do sleep 1; done
  local ready; ready=$(grep '^ready' "$WORK/gen-$name.out" || echo "ready 0 $CLIENTS ?")
  # Let the set-up settle, then measure a quiet window.
  sleep 3
  local t0 r0; t0=$(cpu_ticks "$pid"); sleep "$REST"; local t1; t1=$(cpu_ticks "$pid")
  r0=$(rss_kb "$pid")
  exec 3>&-
  wait "$gen" 2>/dev/null || true
  local ok failed secs; read -r _ ok failed secs <<<"$ready"
  awk -v name="$name" -v ok="$ok" -v failed="$failed" -v secs="$secs" -v before="$before" \
      -v rest="$r0" -v ticks=$(( t1 - t0 )) -v hz="$TICK" -v window="$REST" 'BEGIN{
    per = ok > 0 ? (rest - before) / ok : 0;
    printf "%-7s %8d %7d %9s %11.1f %10.2f %12.2f\n", name, ok, failed, secs, rest / 1024, per,
      ticks / hz / window * 100 }'
  grep -v '^ready' "$WORK/gen-$name.out" | head -3 >&2 || true
}

echo "idle TURN/TLS clients: $CLIENTS per server, ${REST}s at rest, loopback, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
printf "%-7s %8s %7s %9s %11s %10s %12s\n" server clients failed setup_s rss_MB KB/client cpu%_at_rest

CT_PORT=$(free_port); CT_TLS=$(free_port)
turnserver --listening-ip=127.0.0.1 --relay-ip=127.0.0.1 --listening-port="$CT_PORT" \
  --tls-listening-port="$CT_TLS" --cert="$WORK/cert.pem" --pkey="$WORK/key.pem" \
  --min-port=30000 --max-port=44999 --use-auth-secret --static-auth-secret="$SECRET" \
  --realm=bench.local --no-dtls --no-cli --user-quota=0 --total-quota=0 \
  --no-software-attribute --log-file=stdout --simple-log --pidfile="$WORK/turnserver.pid" \
  >"$WORK/coturn.log" 2>&1 &
CT_PID=$!; PIDS+=($CT_PID)
sleep 1
measure coturn "$CT_PID" "$CT_TLS"
kill "$CT_PID"; wait "$CT_PID" 2>/dev/null || true

HT_PORT=$(free_port); HT_TLS=$(free_port); HT_METRICS=$(free_port)
HERMES_ENV=development REDIS_URL= TURN_SECRET="$SECRET" TURN_REALM=bench.local \
  TURN_LISTEN="127.0.0.1:$HT_PORT" TURN_METRICS_LISTEN="127.0.0.1:$HT_METRICS" \
  TURNS_LISTEN="127.0.0.1:$HT_TLS" TURN_TLS_CERT="$WORK/cert.pem" TURN_TLS_KEY="$WORK/key.pem" \
  TURN_MIN_PORT=30000 TURN_MAX_PORT=44999 TURN_USER_QUOTA=0 TURN_TOTAL_QUOTA=0 \
  TURN_MAX_STREAM_CONNECTIONS=$(( CLIENTS + 100 )) RUST_LOG=warn "$BIN" >"$WORK/hermes.log" 2>&1 &
HT_PID=$!; PIDS+=($HT_PID)
sleep 1
measure hermes "$HT_PID" "$HT_TLS"
