#!/usr/bin/env bash
# The compose deployment for real (scripts/deploy/compose_test.py): our images built from
# deploy/docker/Dockerfile, docker-compose.yml started with podman-compose, two-browser calls
# through it (hermes-turn, then coturn), a signal replica killed mid-call, hardening inspected,
# `down -v` clean. `make deploy-test` runs it alone; `make test` through scripts/checks/70-compose.sh.
#
# Installs what it needs when missing: podman, runc, debootstrap (Debian packages; only this
# test needs them, so they are not in scripts/apt-packages.txt) and podman-compose from PyPI
# into .venv (Debian's 1.0.3 has no deploy.replicas / profiles support we rely on).
# Caches outside the repository: the debootstrap base image and the stand-in images in podman's
# storage, containers.conf and the lock in HERMES_DEPLOY_CACHE (default /var/tmp/hermes-deploy-test).
# Bounded: 20 minutes in all; everything it starts is removed at the end, also on failure.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONDONTWRITEBYTECODE=1 # keep scripts/deploy free of __pycache__

PODMAN_COMPOSE_VERSION=1.6.0
WEBSOCKETS_VERSION=17.4  # the same as scripts/checks/60-prodlike.sh (one .venv)
SECONDS=0

missing=()
for pkg in podman runc debootstrap; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "FAIL the deployment test needs root (rootful podman) and: apt-get install -y ${missing[*]}"; exit 1
  fi
  echo "installing: ${missing[*]}"
  timeout 900 apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null \
    || { timeout 600 apt-get update >/dev/null && timeout 900 apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
fi
[ "$(id -u)" -eq 0 ] || { echo "FAIL the deployment test needs root (rootful podman)"; exit 1; }

[ -x .venv/bin/python ] || python3 -m venv .venv
have=$(.venv/bin/python -m pip show podman-compose 2>/dev/null | awk '/^Version:/{print $2}' || true)
[ "$have" = "$PODMAN_COMPOSE_VERSION" ] || timeout 600 .venv/bin/python -m pip install -q "podman-compose==$PODMAN_COMPOSE_VERSION"
# websockets: the test seats participants through Caddy to see them spread over the replicas.
have=$(.venv/bin/python -m pip show websockets 2>/dev/null | awk '/^Version:/{print $2}' || true)
[ "$have" = "$WEBSOCKETS_VERSION" ] || timeout 600 .venv/bin/python -m pip install -q "websockets==$WEBSOCKETS_VERSION"

echo "-- tools (podman, runc, debootstrap, podman-compose) present: ${SECONDS}s"

# `make test` builds the workspace before the checks; run alone, build what is missing.
profile=${DEPLOY_TEST_PROFILE:-debug}
flag=(); [ "$profile" = release ] && flag=(--release)
for bin in hermes-api hermes-signal hermes-turn hermes-logger; do
  if [ ! -x "target/$profile/$bin" ]; then
    cargo build --locked -q "${flag[@]}" -p hermes-api -p hermes-signal -p hermes-turn -p hermes-logger
    break
  fi
done

# The Python side tears the stack down itself; this trap is the backstop should it be killed.
export HERMES_DT_PROJECT=hermes-dt$$
export CONTAINERS_CONF=${HERMES_DEPLOY_CACHE:-/var/tmp/hermes-deploy-test}/containers.conf
cleanup() {
  podman ps -aq --filter "label=io.podman.compose.project=$HERMES_DT_PROJECT" 2>/dev/null \
    | xargs -r podman rm -f -t 5 >/dev/null 2>&1 || true
  for kind in network volume; do
    podman "$kind" ls -q 2>/dev/null | grep "^${HERMES_DT_PROJECT}_" | xargs -r podman "$kind" rm -f >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT
timeout 1200 .venv/bin/python scripts/deploy/compose_test.py
