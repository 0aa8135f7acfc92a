#!/usr/bin/env bash
# Production-like run on loopback (scripts/deploy/prodlike.py): the four binaries started with
# the environment docker-compose.yml gives them (HERMES_ENV=production, strong random secrets),
# two api and two signal replicas behind Caddy (caddy/Caddyfile.local), one password-protected
# redis-server; API flow, TURN allocation with the api's credentials (hermes-turn and coturn
# with coturn-compat/turnserver.conf), signaling (through Caddy and across replicas), services
# started before Redis, example secrets refused, clean SIGTERM exits. Bounded to 5 minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONDONTWRITEBYTECODE=1 # keep scripts/deploy free of __pycache__

WEBSOCKETS_VERSION=17.4
CHECK_JSONSCHEMA_VERSION=0.39.0 # brings PyYAML

[ -x .venv/bin/python ] || python3 -m venv .venv
for spec in "websockets==$WEBSOCKETS_VERSION" "check-jsonschema==$CHECK_JSONSCHEMA_VERSION"; do
  have=$(.venv/bin/python -m pip show "${spec%%==*}" 2>/dev/null | awk '/^Version:/{print $2}' || true)
  [ "$have" = "${spec##*==}" ] || timeout 600 .venv/bin/python -m pip install -q "$spec"
done

# `make test` builds the workspace before the checks; run alone, build what is missing.
for bin in hermes-api hermes-signal hermes-turn hermes-logger; do
  if [ ! -x "target/debug/$bin" ]; then
    cargo build --locked -q -p hermes-api -p hermes-signal -p hermes-turn -p hermes-logger
    break
  fi
done

timeout 300 .venv/bin/python scripts/deploy/prodlike.py
