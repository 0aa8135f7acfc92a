#!/usr/bin/env bash
# One-off migration of a Hermes Redis to the hash-tagged key schema (crates/hermes-proto/src/keys.rs):
# renames every key of the old spelling `call:<id>…` / `rl:call:<id>:…` to `call:{<id>}…` /
# `rl:call:{<id>}:…`, keeping values and TTLs (RENAMENX; a key the new schema already wrote is
# left alone and reported). Codes, rate limits per IP/code and the log stream keep their names.
#
#   scripts/redis-hash-tag-keys.sh [redis-cli connection options]   e.g. -h 10.0.0.5 -p 6379
#   (password: REDISCLI_AUTH=... in the environment, not -a)
#
# Run it on the single Redis (not a cluster: it renames within one server) while no Hermes
# process runs, between stopping the old version and starting the new one: docs/operations.md
# ("Moving to the hash-tagged key schema") says why and what calls in progress see.
set -euo pipefail
command -v redis-cli >/dev/null || { echo "redis-cli not found (Debian: redis-tools)" >&2; exit 2; }
# Old-spelling keys (no brace), each with its new name; one RENAMENX per key, all sent through
# one redis-cli (a process per key would take minutes for a busy Redis).
plan=$( { redis-cli "$@" --scan --pattern 'call:*'; redis-cli "$@" --scan --pattern 'rl:call:*'; } |
  grep -v '[{]' | sed -nE 's/^((rl:)?call:)([^:]+)(.*)$/RENAMENX \1\3\4 \1{\3}\4/p' || true)
if [ -z "$plan" ]; then
  echo "renamed 0 keys to the hash-tagged schema (0 left because the new name existed)"
  exit 0
fi
replies=$(printf '%s\n' "$plan" | redis-cli "$@")
renamed=$(grep -c '^1$' <<<"$replies" || true)
kept=$(grep -c '^0$' <<<"$replies" || true)
[ "$kept" = 0 ] || echo "$kept keys left as they were: their new name existed already" >&2
echo "renamed $renamed keys to the hash-tagged schema ($kept left because the new name existed)"
