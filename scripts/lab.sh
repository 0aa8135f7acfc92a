#!/usr/bin/env bash
# `make lab`: build, then run only the network lab (tests/e2e/tests/netlab.rs) and print its
# report: every row's path, setup times and TURN CPU (also in test-output/netlab-report.md).
# LAB_ROWS=cone-cone,sym-sym runs only those rows (names in docs/networks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "make lab needs root (it creates network namespaces, veths and iptables rules)" >&2
  exit 1
fi
scripts/install-deps.sh
cargo build --workspace --locked
export HERMES_NETLAB_ROWS="${LAB_ROWS:-}"
[ -n "$HERMES_NETLAB_ROWS" ] || unset HERMES_NETLAB_ROWS
mkdir -p test-output
rm -f test-output/netlab-report.md
status=0
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run -p hermes-e2e --test netlab --locked --no-capture >test-output/netlab.log 2>&1 || status=$?
else
  cargo test -p hermes-e2e --test netlab --locked -- --nocapture >test-output/netlab.log 2>&1 || status=$?
fi
grep -E '^\[netlab\]|network lab skipped' test-output/netlab.log || true
if [ -f test-output/netlab-report.md ]; then
  echo
  cat test-output/netlab-report.md
fi
if [ "$status" != 0 ]; then
  echo
  echo "network lab FAILED (full output: test-output/netlab.log):"
  grep -E 'panicked|"ok":false' test-output/netlab.log | cut -c1-2000 || tail -40 test-output/netlab.log
fi
exit "$status"
