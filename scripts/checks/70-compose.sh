#!/usr/bin/env bash
# The compose deployment for real: images built from deploy/docker/Dockerfile (podman),
# docker-compose.yml started, browser calls through it (hermes-turn, coturn, a signal replica
# killed mid-call), hardening inspected, `down -v` clean. scripts/deploy/compose-test.sh has the
# details; `make deploy-test` runs it alone.
set -euo pipefail
exec "$(dirname "$0")/../deploy/compose-test.sh"
