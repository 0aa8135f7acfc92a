#!/usr/bin/env bash
# `make fuzz`: short cargo-fuzz runs of hermes-turn's parsers (not part of `make test`).
# FUZZ_SECONDS per target (default 30). Only the stable toolchain is installed, so
# RUSTC_BOOTSTRAP=1 lets cargo-fuzz use the nightly-only sanitizer flags.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${FUZZ_SECONDS:-30}"
if ! cargo fuzz --help >/dev/null 2>&1; then
  echo "installing cargo-fuzz (crates.io)"
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
cd fuzz
for target in wire_codec server_input signed_session; do
  echo "==> fuzz $target for ${SECS}s"
  mkdir -p "corpus/$target"
  cargo fuzz run "$target" "corpus/$target" -- -max_total_time="$SECS" -max_len=2048
done
echo "fuzz: no crashes"
