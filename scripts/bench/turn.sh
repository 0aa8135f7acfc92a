#!/usr/bin/env bash
# `make bench BENCH=turn`: hermes-turn vs coturn's turnserver, side by side on loopback.
#
# Both servers get the same settings (loopback listener and relay address, REST secret,
# 1.25 MB/s per-session cap, no user/total quota so one uclient can open 100 allocations,
# default kernel socket buffers capped by net.core.rmem_max), the same echo peer
# (turnutils_peer) and the same paced ChannelData load from turnutils_uclient: 100
# allocations, each sending one message every Z ms (10k/25k/50k msg/s in total), 100 B and
# 1000 B, for a bounded number of messages. Reported per run:
#   loss      uclient's lost packets
#   rtt       uclient's average / max round trip in ms (it reports no percentiles): the median
#             of the runs' averages / the largest maximum
#   us/pkt    server CPU (utime+stime from /proc/<pid>/stat) per relayed packet, where a
#             relayed packet is one datagram forwarded in either direction (sent + received)
#   pkt/cpu-s relayed packets per server CPU-second; ratio = hermes / coturn (target >= 1.5)
#   KB/alloc  (peak RSS during the transport's first 100-allocation run - RSS before it) / 100
# Each row is run over every transport in TURN_BENCH_TRANSPORTS (default "udp tcp tls"): UDP,
# TCP (uclient -t) and TLS (uclient -t -S; both servers get the same self-signed P-256
# certificate). Over TCP/TLS the servers' CPU includes the 100 connection set-ups (and TLS
# handshakes) of each run, for both alike.
# hermes-turn runs twice, side by side: with one data-plane worker and with its default (one
# worker per core). Each row is run TURN_BENCH_REPEAT times (default 3) in rotating order, and
# the median CPU cost per packet is reported, because a shared VM's noise between two runs of
# the same server is often larger than 10 %.
# With TURN_BENCH_BASE_BIN set (e.g. a build of main), that binary runs beside the others in the
# same rotation, as base-1w and base-Nw, for before/after pairs measured in one run.
# Only 127.0.0.1 is used. Every run is bounded (count and `timeout`).
set -euo pipefail
cd "$(dirname "$0")/../.."

# One TURN benchmark at a time on a machine (this one or turn-idle.sh, from any checkout): two
# at once overload the load generators (one hermes run lost 49 % that way) and measure each
# other's CPU.
exec 9>"${TMPDIR:-/tmp}/hermes-bench-turn.lock"
if ! flock -n 9; then
  echo "another TURN benchmark is running on this machine; waiting for it (at most 1 h)" >&2
  flock -w 3600 9 || { echo "gave up waiting for the other TURN benchmark" >&2; exit 1; }
fi

SECONDS_PER_RUN="${TURN_BENCH_SECONDS:-5}"
REPEAT="${TURN_BENCH_REPEAT:-3}"
ALLOCS="${TURN_BENCH_ALLOCS:-100}"
RATES="${TURN_BENCH_RATES:-10000 25000 50000}"
SIZES="${TURN_BENCH_SIZES:-100 1000}"
TRANSPORTS="${TURN_BENCH_TRANSPORTS:-udp tcp tls}"
SECRET="bench-secret-$(date +%s)"
for p in turnserver turnutils_uclient turnutils_peer; do
  command -v "$p" >/dev/null || { echo "missing $p (apt-get install coturn)"; exit 1; }
done
BIN=${TURN_BENCH_BIN:-target/release/hermes-turn}
[ -x "$BIN" ] || cargo build --release -p hermes-turn
BASE_BIN=${TURN_BENCH_BASE_BIN:-}

WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket
for _ in range(100):
    t=socket.socket(); t.bind(("127.0.0.1",0)); p=t.getsockname()[1]
    u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1",p)); print(p); break
    except OSError: pass'; }

TICK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
rss_kb() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj /CN=bench.local -keyout "$WORK/key.pem" -out "$WORK/cert.pem" >/dev/null 2>&1

PEER_PORT=$(free_port)
turnutils_peer -L 127.0.0.1 -p "$PEER_PORT" >/dev/null 2>&1 &
PIDS+=($!)

CT_PORT=$(free_port); CT_TLS_PORT=$(free_port)
turnserver --listening-ip=127.0.0.1 --relay-ip=127.0.0.1 --listening-port="$CT_PORT" \
  --tls-listening-port="$CT_TLS_PORT" --cert="$WORK/cert.pem" --pkey="$WORK/key.pem" \
  --min-port=10000 --max-port=12999 --use-auth-secret --static-auth-secret="$SECRET" \
  --realm=bench.local --allow-loopback-peers --no-dtls --no-cli --max-bps=1250000 \
  --user-quota=0 --total-quota=0 --fingerprint --no-software-attribute --log-file=stdout \
  --simple-log --pidfile="$WORK/turnserver.pid" >"$WORK/coturn.log" 2>&1 &
CT_PID=$!; PIDS+=($CT_PID)

start_hermes() { # NAME WORKERS MIN_PORT MAX_PORT [BIN] -> sets HT_PORT_<NAME>, HT_TLS_PORT_<NAME>, HT_PID_<NAME>
  local port tls metrics; port=$(free_port); tls=$(free_port); metrics=$(free_port)
  HERMES_ENV=development REDIS_URL= TURN_SECRET="$SECRET" TURN_REALM=bench.local \
    TURN_LISTEN="127.0.0.1:$port" TURN_METRICS_LISTEN="127.0.0.1:$metrics" \
    TURNS_LISTEN="127.0.0.1:$tls" TURN_TLS_CERT="$WORK/cert.pem" TURN_TLS_KEY="$WORK/key.pem" \
    TURN_MIN_PORT="$3" TURN_MAX_PORT="$4" TURN_ALLOW_LOOPBACK_PEERS=true TURN_MAX_BPS=1250000 \
    TURN_USER_QUOTA=0 TURN_TOTAL_QUOTA=0 TURN_WORKERS="$2" RUST_LOG=warn \
    TURN_RELAY_SOCKET_BUFFER=${TURN_RELAY_SOCKET_BUFFER:-262144} "${5:-$BIN}" >"$WORK/$1.log" 2>&1 &
  PIDS+=($!)
  printf -v "HT_PORT_$1" %s "$port"; printf -v "HT_TLS_PORT_$1" %s "$tls"; printf -v "HT_PID_$1" %s "$!"
}
# Relay port ranges: 10000-19999, below the kernel's ephemeral range (32768+, where the
# uclient's and the peer's own sockets live) and outside the 20000-29999 that the TURN tests
# draw theirs from (crates/turn-relay/tests/common), so `make bench` and the tests can run at
# once without an allocation finding its port taken. The base binaries of an A/B run go above
# the ephemeral range (61000-65499), checked below.
start_hermes h1 1 13000 16499
start_hermes hn 0 16500 19999
NAMES=(coturn h1 hn)
if [ -n "$BASE_BIN" ]; then
  EPHEMERAL_MAX=$(awk '{print $2}' /proc/sys/net/ipv4/ip_local_port_range)
  if [ "$EPHEMERAL_MAX" -ge 61000 ]; then
    echo "the ephemeral port range ends at $EPHEMERAL_MAX: no room above it for the base relays" >&2
    exit 1
  fi
  start_hermes b1 1 61000 63249 "$BASE_BIN"
  start_hermes bn 0 63250 65499 "$BASE_BIN"
  NAMES+=(b1 bn)
fi
WORKERS_N=$(nproc)
sleep 1
declare -A IDLE_RSS=([coturn]=$(rss_kb "$CT_PID"))
for name in "${NAMES[@]:1}"; do
  pid_var="HT_PID_$name"; kill -0 "${!pid_var}"; IDLE_RSS[$name]=$(rss_kb "${!pid_var}")
done
# Per server and transport: RSS before the transport's first run, and the peak during it.
declare -A BASE_RSS=() PEAK_RSS=()

# run NAME PID PORT SIZE RATE TRANSPORT -> prints one result line
run() {
  local name=$1 pid=$2 port=$3 size=$4 rate=$5 transport=$6
  local z=$(( ALLOCS * 1000 / rate )); [ "$z" -ge 1 ] || z=1
  local n=$(( SECONDS_PER_RUN * 1000 / z ))
  local flags=()
  case $transport in tcp) flags=(-t) ;; tls) flags=(-t -S) ;; esac
  local key="$name:$transport" first=0
  if [ -z "${BASE_RSS[$key]:-}" ]; then BASE_RSS[$key]=$(rss_kb "$pid"); PEAK_RSS[$key]=0; first=1; fi
  local before; before=$(cpu_ticks "$pid")
  timeout $(( SECONDS_PER_RUN * 4 + 30 )) turnutils_uclient "${flags[@]}" -p "$port" -e 127.0.0.1 -r "$PEER_PORT" \
    -W "$SECRET" -u bench -c -m "$ALLOCS" -n "$n" -l "$size" -z "$z" 127.0.0.1 \
    >"$WORK/uclient.out" 2>&1 &
  local up=$!
  while kill -0 "$up" 2>/dev/null; do
    if [ "$first" = 1 ]; then
      local r; r=$(rss_kb "$pid"); [ "$r" -gt "${PEAK_RSS[$key]}" ] && PEAK_RSS[$key]=$r
    fi
    sleep 0.2
  done
  wait "$up" || true
  local after; after=$(cpu_ticks "$pid")
  local sent recv lost loss rtt rttmax
  # A run whose uclient failed has none of these lines: it is reported (100 % loss, and its
  # last output lines on stderr), not allowed to end the whole benchmark through `set -e`.
  sent=$(grep -o 'tot_send_msgs=[0-9]*' "$WORK/uclient.out" | tail -1 | cut -d= -f2 || true)
  recv=$(grep -o 'tot_recv_msgs=[0-9]*' "$WORK/uclient.out" | tail -1 | cut -d= -f2 || true)
  lost=$(grep -o 'Total lost packets [0-9]* ([0-9.]*%)' "$WORK/uclient.out" | tail -1 | sed 's/.*(\(.*\)%)/\1/' || true)
  if [ -z "$sent" ]; then
    echo "run $name $transport ${size}B ${rate}msg/s: uclient reported nothing; its last lines:" >&2
    tail -n 5 "$WORK/uclient.out" >&2
  fi
  rtt=$(grep -o 'Average round trip delay [0-9.]* ms; min = [0-9]* ms, max = [0-9]* ms' "$WORK/uclient.out" | tail -1 |
        awk '{printf "%.2f/%s", $5, $13}' || true)
  sent=${sent:-0}; recv=${recv:-0}; lost=${lost:-100}
  awk -v name="$name" -v tr="$transport" -v size="$size" -v rate="$rate" -v sent="$sent" -v recv="$recv" -v loss="$lost" \
      -v rtt="${rtt:-?}" -v ticks=$(( after - before )) -v hz="$TICK" 'BEGIN{
    pk = sent + recv; cpu = ticks / hz;
    us = pk > 0 ? cpu * 1e6 / pk : 0; pps = cpu > 0 ? pk / cpu : 0;
    printf "%s %s %s %s %s %.3f %s %.2f %.0f %d\n", name, tr, size, rate, pk, loss, rtt, us, pps, sent }'
}

RESULTS="$WORK/results"
: >"$RESULTS"
for transport in $TRANSPORTS; do
for size in $SIZES; do
  for rate in $RATES; do
    for r in $(seq 1 "$REPEAT"); do
      # Rotate the order so no server always runs first (or last) in a row.
      order=()
      for i in "${!NAMES[@]}"; do order+=("${NAMES[$(( (i + r - 1) % ${#NAMES[@]} ))]}"); done
      for name in "${order[@]}"; do
        if [ "$name" = coturn ]; then
          port=$CT_PORT; [ "$transport" = tls ] && port=$CT_TLS_PORT
          run coturn "$CT_PID" "$port" "$size" "$rate" "$transport" >>"$RESULTS"
        else
          port_var="HT_PORT_$name"; tls_var="HT_TLS_PORT_$name"; pid_var="HT_PID_$name"
          port=${!port_var}; [ "$transport" = tls ] && port=${!tls_var}
          run "$name" "${!pid_var}" "$port" "$size" "$rate" "$transport" >>"$RESULTS"
        fi
      done
    done
  done
done
done

echo
echo "TURN relay benchmark: $ALLOCS allocations over $TRANSPORTS, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "(ChannelData, ~${SECONDS_PER_RUN}s per run, loopback, $(nproc) cores, median of $REPEAT runs)"
echo "hermes-1w: one data-plane worker; hermes-${WORKERS_N}w: one worker per core on ${TURN_WORKER_THREADS:-adaptive} threads (the default: adaptive)"
[ -n "$BASE_BIN" ] && echo "base-1w, base-${WORKERS_N}w: the same with $BASE_BIN"
python3 - "$RESULTS" "$WORKERS_N" "${NAMES[@]}" <<'PY'
import sys, statistics
rows = {}
order = []
for line in open(sys.argv[1]):
    name, tr, size, rate, pk, loss, rtt, us, pps, sent = line.split()
    key = (tr, int(size), int(rate))
    if key not in rows:
        rows[key] = {}
        order.append(key)
    rows[key].setdefault(name, []).append((float(us), float(loss), rtt, int(pk)))
failed = []
def cell(runs, name, key):
    # A failed run (uclient reported nothing, e.g. it gave up after a 437) is left out of the
    # figures and listed below the table instead.
    ok = [r for r in runs if r[3] > 0]
    failed.extend([(name, key)] * (len(runs) - len(ok)))
    ok = ok or runs
    us = statistics.median(r[0] for r in ok)
    loss = max(r[1] for r in ok)
    pps = 1e6 / us if us > 0 else 0
    # RTT: the median of the runs' averages / the largest maximum.
    avgs = [float(r[2].split("/")[0]) for r in ok if "/" in r[2]]
    maxs = [int(r[2].split("/")[1]) for r in ok if "/" in r[2]]
    rtt = f"{statistics.median(avgs):.2f}/{max(maxs)}" if avgs else "?"
    return us, loss, rtt, pps
n = sys.argv[2]
names = sys.argv[3:]
label = {"coturn": "coturn", "h1": "hermes-1w", "hn": f"hermes-{n}w", "b1": "base-1w", "bn": f"base-{n}w"}
print(f"{'':<4} {'B':<5} {'msg/s':<6} | " + " | ".join(f"{label[x]:<27}" for x in names)
      + " | pkt/cpu-s vs coturn")
print(f"{'':<4} {'':<5} {'total':<6} | " + " | ".join(f"{'loss%  rtt_ms  us/pkt':<27}" for _ in names)
      + " | " + "  ".join(f"{label[x]:<9}" for x in names[1:]))
for key in order:
    r = rows[key]
    cells = {x: cell(r[x], x, key) for x in names}
    c = cells["coturn"]
    fmt = lambda x: f"{x[1]:<6.3f} {x[2]:<7} {x[0]:<6.2f}"
    print(f"{key[0]:<4} {key[1]:<5} {key[2]:<6} | " + " | ".join(f"{fmt(cells[x]):<27}" for x in names)
          + " | " + "  ".join(f"{cells[x][3] / max(c[3], 1e-9):.2f}x".ljust(9) for x in names[1:]))
for name, key in failed:
    print(f"failed run left out: {name} {key[0]} {key[1]} B {key[2]} msg/s (uclient reported no totals; see above)")
PY
echo
for transport in $TRANSPORTS; do
  for name in "${NAMES[@]}"; do
    key="$name:$transport"
    kb=$(( (PEAK_RSS[$key] - BASE_RSS[$key]) * 1000 / ALLOCS ))
    printf 'memory per %s allocation (peak RSS - RSS before) / %s, %-6s: %s.%03d KB (idle RSS %s KB)\n' \
      "$transport" "$ALLOCS" "$name" $((kb/1000)) $((kb%1000)) "${IDLE_RSS[$name]}"
  done
done
