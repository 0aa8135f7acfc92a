#!/usr/bin/env bash
# `make test`: what CI runs. Installs what is missing, then: fmt check, clippy -D warnings,
# build, every cargo test (nextest), then each extra check in scripts/checks/ in order.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
step() { printf '\n\033[1m==> %s\033[0m (%ss)\n' "$*" "$(( $(date +%s) - start ))"; }

step "dependencies"
scripts/install-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo build --workspace"
cargo build --workspace --all-targets --locked
# What `make run` builds (no dev-dependencies, so other feature sets): built here so that the
# make-run check times the start-up, not a compile.
cargo build --workspace --locked

step "cargo nextest run --workspace"
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast --profile ci
else
  cargo test --workspace --locked --no-fail-fast
fi

for check in scripts/checks/*.sh; do
  [ -e "$check" ] || continue
  step "check: $(basename "$check")"
  "$check"
done

step "all tests passed"
