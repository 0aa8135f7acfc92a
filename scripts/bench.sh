#!/usr/bin/env bash
# `make bench [BENCH=name]`: run scripts/bench/<name>.sh (all of them when no name is given).
# Each benchmark runs its reference side by side in the same run and prints a ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --workspace --release --locked
if [ -n "${1:-}" ]; then
  exec "scripts/bench/$1.sh"
fi
for b in scripts/bench/*.sh; do
  echo "==> $(basename "$b" .sh)"
  "$b"
done
