#!/usr/bin/env bash
# `make run` works as the README promises, twice in a row: it prints the URL, the URL serves the
# app through Caddy, the API answers through Caddy, and Ctrl-C (SIGINT to the process group, as
# a terminal sends it) stops every process it started and frees every port, without reporting
# the stop as a crashed process.
set -euo pipefail
cd "$(dirname "$0")/../.."

pgid=""
on_exit() { [ -n "$pgid" ] && kill -KILL -- -"$pgid" 2>/dev/null || true; }
trap on_exit EXIT

attempt() {
  local n=$1 log url deadline page
  log=$(mktemp)
  # A background job of a script starts with SIGINT ignored (and a shell cannot trap a signal
  # ignored at its start): restore the default, so run.sh gets Ctrl-C as from a terminal.
  HERMES_HTTP_PORT=0 setsid env --default-signal=INT scripts/run.sh >"$log" 2>&1 < /dev/null &
  pgid=$!
  deadline=$((SECONDS + 180))
  until grep -q "Hermes is running" "$log"; do
    if [ $SECONDS -gt $deadline ] || ! kill -0 "$pgid" 2>/dev/null; then
      echo "make run #$n did not come up:"; cat "$log"; kill -KILL -- -"$pgid" 2>/dev/null || true; exit 1
    fi
    sleep 0.5
  done
  if grep -q "with warnings" "$log"; then
    echo "make run #$n reported warnings:"; cat "$log"; kill -INT -- -"$pgid"; exit 1
  fi
  url=$(grep -o 'http://[0-9.]*:[0-9]*/' "$log" | head -n1)
  page=$(curl -fsS "$url") || { echo "no page at $url"; cat "$log"; exit 1; }
  grep -qi "<html" <<<"$page" || { echo "no HTML at $url"; cat "$log"; exit 1; }
  code=$(curl -sS -o /dev/null -w '%{http_code}' -X POST -H 'content-type: application/json' -d '{}' "${url}api/call/create")
  [ "$code" = 201 ] || { echo "POST ${url}api/call/create via Caddy gave $code"; cat "$log"; exit 1; }

  # Ctrl-C.
  local pids
  pids=$(pgrep -g "$pgid" | tr '\n' ' ')
  kill -INT -- -"$pgid"
  deadline=$((SECONDS + 20))
  while pgrep -g "$pgid" >/dev/null; do
    if [ $SECONDS -gt $deadline ]; then
      echo "processes left after Ctrl-C:"; pgrep -a -g "$pgid"; kill -KILL -- -"$pgid"; exit 1
    fi
    sleep 0.2
  done
  grep -q "stopped." "$log" || { echo "no clean stop message"; cat "$log"; exit 1; }
  # Ctrl-C is not a crash: no "a Hermes process exited" pointing at logs (issue 17, defect 10).
  if grep -q "a Hermes process exited" "$log"; then echo "Ctrl-C reported as a crash:"; cat "$log"; exit 1; fi
  local port=${url##*:}; port=${port%/}
  if ss -ltn "sport = :$port" | grep -q LISTEN; then echo "port $port still listening"; exit 1; fi
  pgid=""
  echo "make run #$n: up at $url, API via Caddy 201, stopped cleanly (processes were: $pids)"
  rm -f "$log"
}

attempt 1
attempt 2
