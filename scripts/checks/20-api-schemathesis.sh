#!/usr/bin/env bash
# schemathesis against hermes-api's own /api/openapi.json: a private redis-server and
# target/debug/hermes-api on free loopback ports, rate limits raised (hidden flags), a real
# join token passed so authorised endpoints are exercised too. Fails on any 5xx, any status,
# header, content type or body that the document does not describe, and on schema-invalid
# input that is accepted. Bounded: every process runs under `timeout`, schemathesis has a
# time budget.
#
# Knobs: API_SCHEMATHESIS_MAX_TIME (seconds of fuzzing, default 45).
set -euo pipefail
cd "$(dirname "$0")/../.."

SCHEMATHESIS_VERSION=4.32.5
MAX_TIME="${API_SCHEMATHESIS_MAX_TIME:-45}"
LIMIT=$((MAX_TIME + 60))

for p in redis-server redis-cli python3 curl timeout; do
  command -v "$p" >/dev/null || { echo "api schemathesis: $p is missing" >&2; exit 1; }
done
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! .venv/bin/schemathesis --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  .venv/bin/pip install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi
bin=target/debug/hermes-api
if [ ! -x "$bin" ]; then
  cargo build -p hermes-api --locked
fi

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

timeout "$LIMIT" redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done

HERMES_ENV=development \
REDIS_URL="redis://127.0.0.1:$redis_port" \
API_LISTEN="127.0.0.1:$api_port" \
JWT_SECRET=schemathesis-jwt-secret-0123456789abcdefghij \
TURN_SECRET=schemathesis-turn-secret-0123456789abcdefghij \
API_RATE_LIMIT=1000000 API_RESOLVE_IP_LIMIT=1000000 API_RESOLVE_CODE_LIMIT=1000000 \
RUST_LOG=warn \
  timeout "$LIMIT" "$bin" >"$work/api.log" 2>&1 &
pids+=($!)
base="http://127.0.0.1:$api_port"
for _ in $(seq 200); do curl -fsS "$base/healthz" >/dev/null 2>&1 && break; sleep 0.05; done
curl -fsS "$base/readyz" >/dev/null

# A real call, so join/status/end see a valid token (and schemathesis can still end it).
token=$(curl -fsS -X POST "$base/api/call/create" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')

status=0
timeout "$LIMIT" .venv/bin/schemathesis run "$base/api/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection \
  --phases examples,coverage,fuzzing \
  --max-time "$MAX_TIME" \
  --request-timeout 5 \
  --workers 2 \
  -H "Authorization: Bearer $token" \
  --no-color >"$work/schemathesis.out" 2>&1 || status=$?
tail -n 40 "$work/schemathesis.out"
if [ "$status" -ne 0 ]; then
  echo "api schemathesis: FAILED (exit $status); API log tail:" >&2
  tail -n 20 "$work/api.log" >&2
  exit 1
fi
# Belt and braces: the API's own counters must show no 5xx either.
if curl -fsS "$base/metrics" | grep -E '^hermes_api_requests_total\{[^}]*status="5[0-9][0-9]"' ; then
  echo "api schemathesis: the API answered 5xx (see the counters above)" >&2
  exit 1
fi
echo "api schemathesis: ok"
