#!/usr/bin/env bash
# Web client unit tests (pure modules and the signaling session) with Node's built-in runner,
# including the hermes-proto golden fixtures; plus a guard that index.html has no inline
# scripts or styles (the page must run under a CSP without 'unsafe-inline').
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v node >/dev/null || { echo "node is required (apt: nodejs)" >&2; exit 1; }

if grep -nE '<script(\s[^>]*)?>[^<]|<style|\sstyle=|\son[a-z]+=' web/index.html; then
  echo "web/index.html has inline script/style/handlers (forbidden by the CSP)" >&2
  exit 1
fi
node --test --test-timeout=20000 web/test/
