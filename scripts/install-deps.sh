#!/usr/bin/env bash
# Install what `make run` / `make test` need: Debian packages from scripts/apt-packages.txt,
# and a Python venv at .venv for the PyPI tools the checks use. Idempotent and quiet when
# everything is present.
set -euo pipefail
cd "$(dirname "$0")/.."

wanted=$(grep -v '^\s*#' scripts/apt-packages.txt | awk 'NF{print $1}')
missing=()
for pkg in $wanted; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "==> installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian starts the packaged redis/coturn/caddy services; Hermes runs its own instances.
    for svc in redis-server coturn caddy; do
      systemctl disable --now "$svc" >/dev/null 2>&1 || service "$svc" stop >/dev/null 2>&1 || true
    done
  else
    echo "missing packages: ${missing[*]}" >&2
    echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

if [ "${HERMES_NEED_VENV:-1}" = 1 ] && [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip >/dev/null
fi
