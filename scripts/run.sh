#!/usr/bin/env bash
# `make run`: the whole of Hermes on this machine with no configuration.
#
# Builds the workspace, starts a private redis-server (free port, data in a temp dir), the four
# services and Caddy on loopback, with development secrets generated for this run and shared by
# all services, prints the URL to open and then the live call log (hermes-logger). Ctrl-C stops
# everything; nothing is left running or listening, so a second `make run` right after works.
#
# Knobs (all optional): HERMES_HTTP_PORT (default 8000, or a free port if taken),
# HERMES_PROFILE=release, HERMES_BIND (default 127.0.0.1; set your LAN address to call from a phone),
# ICE_TRANSPORT_POLICY=relay to force media through hermes-turn, HERMES_NO_BUILD=1 to skip the build.
#
# On loopback the page is plain HTTP (browsers treat localhost as a secure context). With a LAN
# address it is HTTPS (caddy/Caddyfile.https, `tls internal`: Caddy's local CA, kept in
# .run/caddy-lan so devices trust it once), as a page from a non-loopback HTTP origin gets no
# camera or microphone; TURN offers TLS too, with the same certificate. hermes-api and
# hermes-signal listen on loopback only, behind Caddy, and trust exactly that proxy address.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

HERMES_NEED_VENV=0 scripts/install-deps.sh

profile=${HERMES_PROFILE:-debug}
if [ "${HERMES_NO_BUILD:-0}" = 1 ]; then
  : # the binaries are built already (tests that start make run after `make test` built them)
elif [ "$profile" = release ]; then
  cargo build --workspace --release --locked
else
  cargo build --workspace --locked
fi
bin="$root/target/$profile"

run_dir=$(mktemp -d "${TMPDIR:-/tmp}/hermes-run.XXXXXX")
pids=()
stopping=0
cleanup() {
  trap - INT TERM EXIT
  stopping=1
  echo
  echo "stopping Hermes..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$run_dir"
  echo "stopped."
}
trap cleanup INT TERM EXIT

bind=${HERMES_BIND:-127.0.0.1}
case $bind in
  127.* | localhost | ::1) lan=0 ;;
  *) lan=1 ;;
esac
# free_port [preferred]: the preferred port if free (TCP and UDP), else any free one.
free_port() {
  python3 - "$bind" "${1:-0}" <<'PY'
import socket, sys
host, want = sys.argv[1], int(sys.argv[2])
def free(p):
    try:
        t = socket.socket(); t.bind((host, p)); port = t.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((host, port))
        t.close(); u.close(); return port
    except OSError:
        return None
print(want and free(want) or next(p for p in iter(lambda: free(0), None) if p))
PY
}

redis_port=$(free_port)
api_port=$(free_port)
signal_port=$(free_port)
turn_port=$(free_port 3478)
turns_port=$(free_port)
turn_metrics_port=$(free_port)
logger_health_port=$(free_port)
http_port=$(free_port "${HERMES_HTTP_PORT:-8000}")

# Development secrets for this run only, shared by every service.
export HERMES_ENV=development
export JWT_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n')
export TURN_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n')
export REDIS_URL="redis://127.0.0.1:$redis_port"
export SERVER_NAME=localhost
export RUST_LOG=${RUST_LOG:-info}
mkdir -p "$run_dir/logs" "$run_dir/redis" "$run_dir/caddy"

start() { # name command...
  local name=$1; shift
  "$@" >>"$run_dir/logs/$name.log" 2>&1 &
  pids+=($!)
}

start redis "$(command -v redis-server || echo /usr/bin/redis-server)" --port "$redis_port" --bind 127.0.0.1 \
  --save "" --appendonly no --dir "$run_dir/redis"

if [ $lan = 1 ]; then
  scheme=https
  origins="https://$bind:$http_port"
  # Caddy's local CA outlives the run, so a phone that trusted it once keeps trusting it.
  caddy_data="$root/.run/caddy-lan"
  mkdir -p "$caddy_data"
  ca="$caddy_data/caddy/pki/authorities/local/root.crt"
  local_http_port=$(free_port)
else
  scheme=http
  origins="http://$bind:$http_port,http://localhost:$http_port"
  caddy_data="$run_dir/caddy"
fi

# api and signal only behind Caddy, on loopback; the API believes X-Forwarded-For from exactly
# the address Caddy connects from.
API_LISTEN="127.0.0.1:$api_port" SIGNAL_PUBLIC_URL=/ws TURN_PUBLIC_HOST="$bind" TURN_PORT="$turn_port" \
  TURNS_PORT="$turns_port" TURN_TLS=$([ $lan = 1 ] && echo true || echo false) \
  ICE_TRANSPORT_POLICY="${ICE_TRANSPORT_POLICY:-all}" TRUSTED_PROXIES=127.0.0.1/32 \
  CORS_DEV_ORIGINS="$origins" \
  start api "$bin/hermes-api"
SIGNAL_LISTEN="127.0.0.1:$signal_port" SIGNAL_ALLOWED_ORIGINS="$origins" \
  start signal "$bin/hermes-signal"

if [ $lan = 1 ]; then
  HERMES_HTTPS_ADDR="$bind:$http_port" HERMES_HTTPS_IP="$bind" HERMES_TLS=internal \
    HERMES_HTTP_ADDR="127.0.0.1:$local_http_port" HERMES_WEB_ROOT="$root/web" \
    API_UPSTREAMS="127.0.0.1:$api_port" SIGNAL_UPSTREAMS="127.0.0.1:$signal_port" \
    XDG_DATA_HOME="$caddy_data" XDG_CONFIG_HOME="$run_dir/caddy" \
    start caddy caddy run --config "$root/caddy/Caddyfile.https" --adapter caddyfile
  # TURN over TLS with the certificate Caddy just issued for the bind address.
  cert="$caddy_data/caddy/certificates/local/$bind/$bind.crt"
  for _ in $(seq 150); do [ -s "$cert" ] && break; sleep 0.1; done
  # Peers on this LAN are in a private range, which hermes-turn refuses unless allowed.
  lan_net=$(ip -o -4 addr show 2>/dev/null | awk -v b="$bind" '{split($4, a, "/"); if (a[1] == b) print $4}' | head -n1)
  lan_net=$(python3 -c 'import ipaddress, sys; print(ipaddress.ip_interface(sys.argv[1]).network)' "${lan_net:-$bind/32}")
  TURN_LISTEN="$bind:$turn_port" TURNS_LISTEN="$bind:$turns_port" TURN_REALM=localhost \
    TURN_RELAY_IP="$bind" TURN_METRICS_LISTEN="127.0.0.1:$turn_metrics_port" \
    TURN_TLS_CERT="$cert" TURN_TLS_KEY="${cert%.crt}.key" TURN_ALLOWED_PEER_IPS="$lan_net" \
    start turn "$bin/hermes-turn"
else
  TURN_LISTEN="$bind:$turn_port" TURNS_LISTEN="$bind:$turns_port" TURN_REALM=localhost \
    TURN_RELAY_IP="$bind" TURN_METRICS_LISTEN="127.0.0.1:$turn_metrics_port" TURN_ALLOW_LOOPBACK_PEERS=true \
    start turn "$bin/hermes-turn"
  HERMES_HTTP_ADDR="$bind:$http_port" HERMES_WEB_ROOT="$root/web" API_UPSTREAMS="127.0.0.1:$api_port" \
    SIGNAL_UPSTREAMS="127.0.0.1:$signal_port" XDG_DATA_HOME="$caddy_data" XDG_CONFIG_HOME="$run_dir/caddy" \
    start caddy caddy run --config "$root/caddy/Caddyfile.local" --adapter caddyfile
fi

wait_http() { # url name
  for _ in $(seq 150); do
    curl -fsS -o /dev/null ${ca:+--cacert "$ca"} "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "warning: $2 did not answer on $1; see $run_dir/logs/$2.log" >&2
  tail -n 20 "$run_dir/logs/$2.log" >&2 || true
  return 1
}
ok=1
wait_http "http://127.0.0.1:$api_port/healthz" api || ok=0
wait_http "http://127.0.0.1:$signal_port/healthz" signal || ok=0
wait_http "http://127.0.0.1:$turn_metrics_port/healthz" turn || ok=0
wait_http "$scheme://$bind:$http_port/" caddy || ok=0
# Caddy routes to an upstream only after its first active health check passed.
wait_http "$scheme://$bind:$http_port/api/openapi.json" "caddy" || ok=0

url="$scheme://$bind:$http_port/"
cat <<BANNER

  ┌──────────────────────────────────────────────────────────────┐
    Hermes is running$([ $ok = 1 ] || echo " (with warnings above)")
    Open  $url  in two browser tabs: "New call" in one,
    then join with the code in the other.

    api    http://127.0.0.1:$api_port    signal  ws://127.0.0.1:$signal_port/ws
    turn   $bind:$turn_port udp+tcp  metrics http://127.0.0.1:$turn_metrics_port/metrics
    redis  127.0.0.1:$redis_port     logs    $run_dir/logs/
    Ctrl-C stops everything.
  └──────────────────────────────────────────────────────────────┘

BANNER
if [ $lan = 1 ]; then
  cat <<LAN
  HTTPS with Caddy's local CA (a camera needs a secure page; http:// redirects here).
  Each device that joins must trust this CA once, or accept the browser's warning once:
    local CA: $ca
    - copy it to the phone and install it as a CA certificate (Android: Settings > Security >
      Encryption & credentials > Install a certificate > CA certificate; iPhone: open the file,
      install the profile, then Settings > General > About > Certificate Trust Settings);
    - or open the URL and choose "Advanced" > "Proceed" / "Show details" > "visit this website".
  TURN: also turns:$bind:$turns_port (TLS, same certificate).

LAN
fi

# The call console in the foreground of this terminal.
LOGGER_FILE="$run_dir/observer.log" LOGGER_HEALTH_LISTEN="127.0.0.1:$logger_health_port" \
  LOGGER_INCLUDE_DETAIL=true "$bin/hermes-logger" --color auto &
pids+=($!)
wait -n "${pids[@]}" || true
# Ctrl-C reaches the whole process group at once: a service may exit on it before this shell
# has run its INT trap, and `wait -n` then returns for that exit. A short interruptible wait
# lets a pending trap run first (a trapped signal ends `wait` at once), so a Ctrl-C is never
# taken for a crash.
sleep 0.5 &
wait $! 2>/dev/null || true
# Ctrl-C ran cleanup already (logs gone with the run dir): nothing to point at. A process that
# exited by itself: keep its logs somewhere that outlives the cleanup, and say where.
if [ "$stopping" = 0 ]; then
  kept=$(mktemp -d "${TMPDIR:-/tmp}/hermes-logs.XXXXXX")
  cp -r "$run_dir/logs/." "$kept/" 2>/dev/null || true
  echo "a Hermes process exited; its logs are kept in $kept/" >&2
fi
