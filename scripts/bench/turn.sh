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
#   rtt       uclient's average / max round trip (it reports no percentiles)
#   us/pkt    server CPU (utime+stime from /proc/<pid>/stat) per relayed packet, where a
#             relayed packet is one datagram forwarded in either direction (sent + received)
#   pkt/cpu-s relayed packets per server CPU-second; ratio = hermes / coturn (target >= 1.5)
#   KB/alloc  (peak RSS during the first 100-allocation run - idle RSS) / 100
# Only 127.0.0.1 is used. Every run is bounded (count and `timeout`).
set -euo pipefail
cd "$(dirname "$0")/../.."

SECONDS_PER_RUN="${TURN_BENCH_SECONDS:-5}"
ALLOCS="${TURN_BENCH_ALLOCS:-100}"
RATES="${TURN_BENCH_RATES:-10000 25000 50000}"
SIZES="${TURN_BENCH_SIZES:-100 1000}"
SECRET="bench-secret-$(date +%s)"
for p in turnserver turnutils_uclient turnutils_peer; do
  command -v "$p" >/dev/null || { echo "missing $p (apt-get install coturn)"; exit 1; }
done
[ -x target/release/hermes-turn ] || cargo build --release -p hermes-turn
BIN=target/release/hermes-turn

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

PEER_PORT=$(free_port)
turnutils_peer -L 127.0.0.1 -p "$PEER_PORT" >/dev/null 2>&1 &
PIDS+=($!)

CT_PORT=$(free_port)
turnserver --listening-ip=127.0.0.1 --relay-ip=127.0.0.1 --listening-port="$CT_PORT" \
  --min-port=40000 --max-port=44999 --use-auth-secret --static-auth-secret="$SECRET" \
  --realm=bench.local --allow-loopback-peers --no-tls --no-dtls --no-cli --max-bps=1250000 \
  --user-quota=0 --total-quota=0 --fingerprint --no-software-attribute --log-file=stdout \
  --simple-log --pidfile="$WORK/turnserver.pid" >"$WORK/coturn.log" 2>&1 &
CT_PID=$!; PIDS+=($CT_PID)

HT_PORT=$(free_port); HT_METRICS=$(free_port)
HERMES_ENV=development REDIS_URL= TURN_SECRET="$SECRET" TURN_REALM=bench.local \
  TURN_LISTEN="127.0.0.1:$HT_PORT" TURN_METRICS_LISTEN="127.0.0.1:$HT_METRICS" \
  TURN_MIN_PORT=45000 TURN_MAX_PORT=49999 TURN_ALLOW_LOOPBACK_PEERS=true TURN_MAX_BPS=1250000 \
  TURN_USER_QUOTA=0 TURN_TOTAL_QUOTA=0 RUST_LOG=warn TURN_RELAY_SOCKET_BUFFER=${TURN_RELAY_SOCKET_BUFFER:-262144} "$BIN" >"$WORK/hermes.log" 2>&1 &
HT_PID=$!; PIDS+=($HT_PID)
sleep 1
kill -0 "$CT_PID" "$HT_PID"
declare -A IDLE_RSS=([coturn]=$(rss_kb "$CT_PID") [hermes]=$(rss_kb "$HT_PID"))
declare -A PEAK_RSS=([coturn]=0 [hermes]=0)

# run NAME PID PORT SIZE RATE -> prints one result line
run() {
  local name=$1 pid=$2 port=$3 size=$4 rate=$5
  local z=$(( ALLOCS * 1000 / rate )); [ "$z" -ge 1 ] || z=1
  local n=$(( SECONDS_PER_RUN * 1000 / z ))
  local before; before=$(cpu_ticks "$pid")
  timeout $(( SECONDS_PER_RUN * 4 + 30 )) turnutils_uclient -p "$port" -e 127.0.0.1 -r "$PEER_PORT" \
    -W "$SECRET" -u bench -c -m "$ALLOCS" -n "$n" -l "$size" -z "$z" 127.0.0.1 \
    >"$WORK/uclient.out" 2>&1 &
  local up=$!
  while kill -0 "$up" 2>/dev/null; do
    local r; r=$(rss_kb "$pid"); [ "$r" -gt "${PEAK_RSS[$name]}" ] && PEAK_RSS[$name]=$r
    sleep 0.2
  done
  wait "$up" || true
  local after; after=$(cpu_ticks "$pid")
  local sent recv lost loss rtt rttmax
  sent=$(grep -o 'tot_send_msgs=[0-9]*' "$WORK/uclient.out" | tail -1 | cut -d= -f2)
  recv=$(grep -o 'tot_recv_msgs=[0-9]*' "$WORK/uclient.out" | tail -1 | cut -d= -f2)
  lost=$(grep -o 'Total lost packets [0-9]* ([0-9.]*%)' "$WORK/uclient.out" | tail -1 | sed 's/.*(\(.*\)%)/\1/')
  rtt=$(grep -o 'Average round trip delay [0-9.]* ms; min = [0-9]* ms, max = [0-9]* ms' "$WORK/uclient.out" | tail -1 |
        awk '{printf "%.2f/%s", $5, $13}')
  sent=${sent:-0}; recv=${recv:-0}; lost=${lost:-100}
  awk -v name="$name" -v size="$size" -v rate="$rate" -v sent="$sent" -v recv="$recv" -v loss="$lost" \
      -v rtt="${rtt:-?}" -v ticks=$(( after - before )) -v hz="$TICK" 'BEGIN{
    pk = sent + recv; cpu = ticks / hz;
    us = pk > 0 ? cpu * 1e6 / pk : 0; pps = cpu > 0 ? pk / cpu : 0;
    printf "%s %s %s %s %.3f %s %.2f %.0f %d\n", name, size, rate, pk, loss, rtt, us, pps, sent }'
}

RESULTS="$WORK/results"
: >"$RESULTS"
for size in $SIZES; do
  for rate in $RATES; do
    run coturn "$CT_PID" "$CT_PORT" "$size" "$rate" >>"$RESULTS"
    run hermes "$HT_PID" "$HT_PORT" "$size" "$rate" >>"$RESULTS"
  done
done

echo
echo "TURN relay benchmark: $ALLOCS allocations, ChannelData, ~${SECONDS_PER_RUN}s per run, loopback, $(nproc) cores"
printf '%-6s %-6s %-7s | %-7s %-9s %-8s %-11s | %-7s %-9s %-8s %-11s | %s\n' \
  size msg/s "" "coturn" "" "" "" "hermes" "" "" "" "pkt/cpu-s"
printf '%-6s %-6s %-7s | %-7s %-9s %-8s %-11s | %-7s %-9s %-8s %-11s | %s\n' \
  B total relayed loss% rtt_ms us/pkt pkt/cpu-s loss% rtt_ms us/pkt pkt/cpu-s "hermes/coturn"
awk '
  $1=="coturn" { c[$2" "$3]=$0 }
  $1=="hermes" { h[$2" "$3]=$0; order[++n]=$2" "$3 }
  END {
    for (i=1;i<=n;i++) { k=order[i]; split(c[k],a," "); split(h[k],b," ");
      ratio = a[8] > 0 ? b[8]/a[8] : 0;
      printf "%-6s %-6s %-7s | %-7s %-9s %-8s %-11s | %-7s %-9s %-8s %-11s | %.2fx\n",
        a[2], a[3], b[4], a[5], a[6], a[7], a[8], b[5], b[6], b[7], b[8], ratio }
  }' "$RESULTS"
c_kb=$(( (PEAK_RSS[coturn] - IDLE_RSS[coturn]) * 1000 / ALLOCS ))
h_kb=$(( (PEAK_RSS[hermes] - IDLE_RSS[hermes]) * 1000 / ALLOCS ))
echo
printf 'memory per allocation (peak RSS - idle RSS) / %s: coturn %s.%03d KB, hermes %s.%03d KB (idle RSS: coturn %s KB, hermes %s KB)\n' \
  "$ALLOCS" $((c_kb/1000)) $((c_kb%1000)) $((h_kb/1000)) $((h_kb%1000)) "${IDLE_RSS[coturn]}" "${IDLE_RSS[hermes]}"
awk -v c="$c_kb" -v h="$h_kb" 'BEGIN{ if (h > 0) printf "memory ratio coturn/hermes: %.1fx\n", c/h; else print "memory ratio: hermes added no measurable RSS" }'
