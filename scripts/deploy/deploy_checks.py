#!/usr/bin/env python3
"""Semantic checks of the deployment files that no schema catches.

Run by scripts/checks/50-deploy-static.sh with the repository's .venv Python (needs PyYAML,
which check-jsonschema brings). Subcommands:

  compose            docker-compose.yml: depends_on targets have health checks, build targets
                     exist in the Dockerfile, health probes hit the port the service listens on,
                     TURN runs in the host network, the coturn profile's config file exists.
                     deploy/compose/sentinel.yml merged over it (as `docker compose -f -f` does):
                     the same depends_on rules, a replica of `redis`, three health-checked
                     sentinels monitoring it, every Hermes service on a redis-sentinel:// URL
                     naming all three sentinels and the monitored service.
                     deploy/compose/cluster.yml merged over it: six cluster-enabled nodes with a
                     password for clients and replicas, a one-shot init joining all six with one
                     replica per primary, every Hermes service on a redis-cluster:// URL naming
                     three nodes and waiting for the init.
  env RENDERED.yaml  Every variable named in docker-compose.yml, .env.example and the rendered
                     Kubernetes manifests is one the receiving binary accepts (parsed from each
                     binary's `--help`), and every variable a binary accepts is documented in
                     .env.example. Catches drift between the code and the deployment files.
  k8s RENDERED.yaml  Kubernetes rules of this deployment: non-root, read-only root, ALL
                     capabilities dropped, probes and resources on every Hermes container, PDB and
                     HPA for api and signal, no session affinity on signal, hostNetwork TURN.
  k8s-drift RENDERED.yaml   The manifests match what the binaries accept and serve: each image
                     names a deploy/docker/Dockerfile target whose entrypoint is the container's
                     binary; each containerPort is a port the container listens on (its *_LISTEN
                     settings, or the binary's defaults from `--help`; Caddy: its Caddyfile);
                     each probe targets an HTTP listener of the container and a path its router
                     serves (`.route("/...")` in the crate, `handle /...` in the Caddyfile); each
                     Service's targetPort exists in the pods it selects.
  k8s-sentinel RENDERED.yaml   The Sentinel overlay (overlays/sentinel): two or more Redis pods,
                     three sentinels monitoring the service REDIS_URL names, REDIS_URL a
                     redis-sentinel:// URL naming every sentinel pod by its DNS name, the
                     Secret carrying the REDIS_PASSWORD the Redis pods read.
  k8s-cluster RENDERED.yaml   The Redis Cluster overlay (overlays/cluster): six cluster-enabled
                     Redis pods keeping nodes.conf on a volume claim, a Job joining them with one
                     replica per primary, the cluster bus open between the pods only, REDIS_URL a
                     redis-cluster:// URL naming three pods by DNS name with REDIS_PASSWORD.
  split RENDERED.yaml OUTDIR   One file per document (for kubernetes-validate's messages).

Exit status 0 when everything holds; otherwise every problem is printed and the status is 1.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]

# Compose service / Kubernetes container -> binary.
COMPOSE_BINARIES = {
    "api": "hermes-api",
    "signal": "hermes-signal",
    "turn-relay": "hermes-turn",
    "logger": "hermes-logger",
}
K8S_CONTAINER_BINARIES = {
    "api": "hermes-api",
    "signal": "hermes-signal",
    "turn": "hermes-turn",
    "logger": "hermes-logger",
}
# Variables only docker-compose.yml itself reads (interpolation), never a service.
COMPOSE_ONLY = {
    "COMPOSE_PROFILES",
    "HERMES_IMAGE_PREFIX",
    "HERMES_TAG",
    "API_REPLICAS",
    "SIGNAL_REPLICAS",
    "REDIS_PASSWORD",
    "REDIS_HOST_PORT",
    "REDIS_MAXMEMORY",
    "SSL_CERT_HOST_PATH",
    "SSL_KEY_HOST_PATH",
    "TLS_HOST_DIR",
    "HTTP_PUBLISH",
    "HTTPS_PUBLISH",
    "RUNTIME_BASE_IMAGE",
    "BINARIES_IMAGE",
    "CADDY_BASE_IMAGE",
    "REDIS_IMAGE",
    "COTURN_IMAGE",
}
# Read from the process environment by every binary (tracing's EnvFilter), not through clap.
PROCESS_ENV = {"RUST_LOG"}
# Helper variables in Kubernetes env used only for $(VAR) expansion inside other values.
K8S_HELPER_VARS = {"NODE_IP"}
# Binary -> crate directory (for the routes it serves) and its HTTP listener setting.
BINARY_CRATES = {
    "hermes-api": "crates/api",
    "hermes-signal": "crates/signal",
    "hermes-turn": "crates/turn-relay",
    "hermes-logger": "crates/logger",
}
HTTP_LISTEN = {
    "hermes-api": "API_LISTEN",
    "hermes-signal": "SIGNAL_LISTEN",
    "hermes-turn": "TURN_METRICS_LISTEN",
    "hermes-logger": "LOGGER_HEALTH_LISTEN",
}
# Environment of the non-Hermes containers in compose (checked separately, not against binaries).
CADDY_ENV = {"SERVER_NAME", "HERMES_WEB_ROOT", "API_UPSTREAMS", "SIGNAL_UPSTREAMS", "UPSTREAMS_FROM",
             "API_SERVICE", "API_PORT", "SIGNAL_SERVICE", "SIGNAL_PORT"}

errors: list[str] = []


def fail(msg: str) -> None:
    errors.append(msg)


def load_yaml_docs(path: Path) -> list[dict]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d]


# ---------------------------------------------------------------------------------------------
# Binaries' accepted environment variables.


def binary_env_vars(binary: str) -> set[str] | None:
    """Env var names from `<binary> --help` (`[env: NAME=...]`), or None if not built."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    path = target / "debug" / binary
    if not path.exists():
        return None
    # A clean environment, so the help shows no current values.
    out = subprocess.run(
        [str(path), "--help"],
        capture_output=True,
        text=True,
        timeout=20,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )
    text = out.stdout + out.stderr
    return set(re.findall(r"\[env: ([A-Z][A-Z0-9_]*)[=\]]", text))


def accepted_vars() -> dict[str, set[str]]:
    result = {}
    for binary in sorted(set(COMPOSE_BINARIES.values())):
        names = binary_env_vars(binary)
        if names is None:
            fail(f"{binary}: target/debug/{binary} is missing; run `cargo build --workspace` first")
            continue
        if not names:
            print(f"WARN {binary}: `--help` lists no environment variables (not implemented yet?); skipped")
            continue
        result[binary] = names | PROCESS_ENV
    return result


# ---------------------------------------------------------------------------------------------
# .env.example


def env_example_vars() -> dict[str, bool]:
    """NAME -> active (True) or commented out (False)."""
    found: dict[str, bool] = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        m = re.match(r"^(#?)([A-Z][A-Z0-9_]*)=(.*)$", line)
        if m:
            active = m.group(1) == ""
            name = m.group(2)
            if active and m.group(3).strip() == "":
                fail(f".env.example: {name}= is present but empty; services read that as \"\" (comment it out instead)")
            found[name] = found.get(name, False) or active
    return found


# ---------------------------------------------------------------------------------------------
# docker-compose.yml


def compose_env(service: dict) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, dict):
        return {k: (None if v is None else str(v)) for k, v in env.items()}
    out = {}
    for item in env:
        name, sep, value = str(item).partition("=")
        out[name] = value if sep else None
    return out


def compose_interpolations(text: str) -> set[str]:
    return set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", text))


def port_of(addr: str | None) -> str | None:
    if not addr:
        return None
    m = re.search(r":(\d+)\}?$", addr) or re.search(r":-[^}]*:(\d+)\}$", addr)
    return m.group(1) if m else None


def check_compose() -> None:
    compose_path = ROOT / "docker-compose.yml"
    compose = yaml.safe_load(compose_path.read_text())
    services = compose["services"]
    dockerfile = (ROOT / "deploy/docker/Dockerfile").read_text()
    stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile, flags=re.M | re.I))

    # Files the image build copies from the context and the compose file bind-mounts must exist.
    for src in re.findall(r"^COPY\s+(?!--from)(?:--\S+\s+)*(\S+)\s+\S+\s*$", dockerfile, flags=re.M):
        if src != "." and not (ROOT / src).exists():
            fail(f"deploy/docker/Dockerfile: COPY source {src} does not exist")
    for name, svc in services.items():
        for vol in svc.get("volumes") or []:
            src = str(vol).split(":", 1)[0]
            if src.startswith("./") and not (ROOT / src).exists():
                fail(f"compose {name}: bind-mount source {src} does not exist")

    for want in ["caddy", "api", "signal", "turn-relay", "logger", "redis", "coturn"]:
        if want not in services:
            fail(f"docker-compose.yml: service {want} is missing")

    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            fail(f"compose {name}: depends_on must use `condition: service_healthy`, not a list")
            deps = {}
        for dep, spec in deps.items():
            if dep not in services:
                fail(f"compose {name}: depends_on unknown service {dep}")
                continue
            if (spec or {}).get("condition") != "service_healthy":
                fail(f"compose {name}: depends_on {dep} without condition: service_healthy")
            if "healthcheck" not in services[dep]:
                fail(f"compose {name}: depends on {dep}, which has no healthcheck")
        build = svc.get("build")
        if isinstance(build, dict) and build.get("target") and build["target"] not in stages:
            fail(f"compose {name}: build target {build['target']} is not a stage of deploy/docker/Dockerfile")

    # Build arguments: each names an ARG of the Dockerfile, and compose's default for it (used
    # when .env leaves it unset) is the Dockerfile's own default, so `docker compose build` and
    # `docker build` produce the same images.
    arg_defaults = dict(re.findall(r"^ARG\s+([A-Z_]+)=(\S+)\s*$", dockerfile, flags=re.M))
    for name, svc in services.items():
        build = svc.get("build")
        if not isinstance(build, dict):
            continue
        for arg, value in (build.get("args") or {}).items():
            m = re.fullmatch(r"\$\{([A-Z_]+):-([^}]*)\}", str(value))
            if arg not in arg_defaults:
                fail(f"compose {name}: build arg {arg} is not an ARG with a default in deploy/docker/Dockerfile")
            elif not m or m.group(2) != arg_defaults[arg]:
                fail(f"compose {name}: build arg {arg}={value} does not default to the Dockerfile's {arg_defaults[arg]}")

    # Health probes must target the port the service is told to listen on.
    listen_var = {"api": "API_LISTEN", "signal": "SIGNAL_LISTEN", "turn-relay": "TURN_METRICS_LISTEN",
                  "logger": "LOGGER_HEALTH_LISTEN"}
    for name, var in listen_var.items():
        svc = services.get(name) or {}
        env = compose_env(svc)
        test = (svc.get("healthcheck") or {}).get("test") or []
        probe = " ".join(map(str, test))
        want = port_of(env.get(var))
        if not want:
            fail(f"compose {name}: {var} is not set explicitly")
        elif f":{want}" not in probe:
            fail(f"compose {name}: healthcheck `{probe}` does not probe port {want} of {var}")
        if "/healthz" not in probe:
            fail(f"compose {name}: healthcheck does not use /healthz")

    for name in ("turn-relay", "coturn"):
        svc = services.get(name) or {}
        if svc.get("network_mode") != "host":
            fail(f"compose {name}: must use network_mode: host (relay port range)")
        if "ports" in svc:
            fail(f"compose {name}: publishes ports; the host network needs none")
    if (services.get("turn-relay") or {}).get("profiles") != ["turn-relay"]:
        fail("compose turn-relay: expected profiles: [turn-relay] (exclusive with coturn)")
    if (services.get("coturn") or {}).get("profiles") != ["coturn"]:
        fail("compose coturn: expected profiles: [coturn]")

    conf = ROOT / "coturn-compat/turnserver.conf"
    mounts = " ".join(map(str, (services.get("coturn") or {}).get("volumes") or []))
    if "./coturn-compat/turnserver.conf:" not in mounts:
        fail("compose coturn: does not mount ./coturn-compat/turnserver.conf")
    if not conf.exists():
        fail("coturn-compat/turnserver.conf does not exist (the coturn profile mounts it)")

    for name in ("api", "signal"):
        svc = services.get(name) or {}
        if svc.get("ports"):
            fail(f"compose {name}: publishes host ports, which prevents scaling replicas")
        if "replicas" not in (svc.get("deploy") or {}):
            fail(f"compose {name}: no deploy.replicas")
    for name in ("api", "signal", "turn-relay", "logger"):
        svc = services.get(name) or {}
        if not svc.get("read_only"):
            fail(f"compose {name}: not read_only")
        if "ALL" not in (svc.get("cap_drop") or []):
            fail(f"compose {name}: does not drop ALL capabilities")

    vols = " ".join(map(str, (services.get("logger") or {}).get("volumes") or []))
    if ":/var/log/calls" not in vols:
        fail("compose logger: no volume on /var/log/calls")
    vols = " ".join(map(str, (services.get("caddy") or {}).get("volumes") or []))
    if ":/data" not in vols:
        fail("compose caddy: no volume for /data (certificates)")
    unknown = set(compose_env(services.get("caddy") or {})) - CADDY_ENV
    if unknown:
        fail(f"compose caddy: unexpected environment {sorted(unknown)}")

    check_compose_sentinel(compose)
    check_compose_cluster(compose)


def merge_compose(base: dict, override: dict) -> dict:
    """`docker compose -f base -f override`, for what the checks read: mappings merge key by
    key, `environment` merges by variable name (list or mapping form), other values replace."""
    def merge(a, b, key=None):
        if key == "environment":
            env = {k: v for k, v in compose_env({"environment": a}).items()}
            env.update(compose_env({"environment": b}))
            return env
        if isinstance(a, dict) and isinstance(b, dict):
            out = dict(a)
            for k, v in b.items():
                out[k] = merge(a[k], v, k) if k in a else v
            return out
        return b
    return merge(base, override)


SENTINEL_SERVICE = "hermes"
SENTINELS = ("sentinel-1", "sentinel-2", "sentinel-3")


def check_compose_sentinel(base: dict) -> None:
    path = ROOT / "deploy/compose/sentinel.yml"
    if not path.exists():
        fail("deploy/compose/sentinel.yml is missing (the Sentinel variant of docker-compose.yml)")
        return
    merged = merge_compose(base, yaml.safe_load(path.read_text()))
    services = merged["services"]
    where = "compose + sentinel.yml"
    for name, svc in services.items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            if dep not in services:
                fail(f"{where} {name}: depends_on unknown service {dep}")
            elif (spec or {}).get("condition") != "service_healthy":
                fail(f"{where} {name}: depends_on {dep} without condition: service_healthy")
            elif "healthcheck" not in services[dep]:
                fail(f"{where} {name}: depends on {dep}, which has no healthcheck")
    replica = " ".join(map(str, (services.get("redis-replica") or {}).get("command") or []))
    if "--replicaof redis 6379" not in replica:
        fail(f"{where}: no redis-replica service replicating redis (--replicaof redis 6379)")
    for name in ("redis", "redis-replica"):
        command = " ".join(map(str, (services.get(name) or {}).get("command") or []))
        if "--masterauth" not in command or "--requirepass" not in command:
            fail(f"{where} {name}: needs --requirepass and --masterauth (it can become a replica)")
    for name in SENTINELS:
        svc = services.get(name)
        if not svc:
            fail(f"{where}: sentinel {name} is missing")
            continue
        script = " ".join(map(str, svc.get("entrypoint") or []))
        if f"sentinel monitor {SENTINEL_SERVICE} redis 6379 2" not in script:
            fail(f"{where} {name}: does not monitor `{SENTINEL_SERVICE}` on redis:6379 with quorum 2")
        if "ckquorum" not in " ".join(map(str, (svc.get("healthcheck") or {}).get("test") or [])):
            fail(f"{where} {name}: healthcheck does not ask SENTINEL CKQUORUM")
        if not svc.get("read_only"):
            fail(f"{where} {name}: not read_only")
    for name in ("api", "signal", "logger", "turn-relay"):
        url = compose_env(services.get(name) or {}).get("REDIS_URL") or ""
        if not url.startswith("redis-sentinel://"):
            fail(f"{where} {name}: REDIS_URL is not a redis-sentinel:// URL")
            continue
        if f"sentinelServiceName={SENTINEL_SERVICE}" not in url:
            fail(f"{where} {name}: REDIS_URL does not name sentinelServiceName={SENTINEL_SERVICE}")
        hosts = re.findall(r"(?:@|node=)([^:?&/]+):(\d+)", url)
        if len(set(hosts)) != len(SENTINELS):
            fail(f"{where} {name}: REDIS_URL names {len(set(hosts))} sentinels, not {len(SENTINELS)}")
        if name != "turn-relay" and {h for h, _ in hosts} != set(SENTINELS):
            fail(f"{where} {name}: REDIS_URL does not name the sentinels {', '.join(SENTINELS)}")
        for dep in SENTINELS:
            if dep not in ((services.get(name) or {}).get("depends_on") or {}):
                fail(f"{where} {name}: does not wait for {dep}")


CLUSTER_NODES = tuple(f"redis-{i}" for i in range(1, 7))
CLUSTER_INIT = "redis-cluster-init"


def check_compose_cluster(base: dict) -> None:
    path = ROOT / "deploy/compose/cluster.yml"
    if not path.exists():
        fail("deploy/compose/cluster.yml is missing (the Redis Cluster variant of docker-compose.yml)")
        return
    merged = merge_compose(base, yaml.safe_load(path.read_text()))
    services = merged["services"]
    where = "compose + cluster.yml"
    for name, svc in services.items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            # The one-shot init is waited for until it exits 0; everything else until healthy.
            want = "service_completed_successfully" if dep == CLUSTER_INIT else "service_healthy"
            if dep not in services:
                fail(f"{where} {name}: depends_on unknown service {dep}")
            elif (spec or {}).get("condition") != want:
                fail(f"{where} {name}: depends_on {dep} without condition: {want}")
            elif want == "service_healthy" and "healthcheck" not in services[dep]:
                fail(f"{where} {name}: depends on {dep}, which has no healthcheck")
    ports = {}
    for name in CLUSTER_NODES:
        svc = services.get(name)
        if not svc:
            fail(f"{where}: cluster node {name} is missing")
            continue
        command = " ".join(map(str, svc.get("command") or []))
        for flag in ("--cluster-enabled yes", "--cluster-config-file /data/", "--requirepass",
                     "--masterauth"):
            if flag not in command:
                fail(f"{where} {name}: command lacks {flag}")
        if not any(str(v).endswith(":/data") for v in svc.get("volumes") or []):
            fail(f"{where} {name}: no volume on /data (its nodes.conf, the node's identity)")
        if not svc.get("read_only"):
            fail(f"{where} {name}: not read_only")
        if "healthcheck" not in svc:
            fail(f"{where} {name}: no healthcheck")
        for p in svc.get("ports") or []:
            host, _, target = str(p).rpartition(":")
            if target == "6379" and host.startswith("127.0.0.1:"):
                ports[host.split(":")[1]] = name
    init = services.get(CLUSTER_INIT) or {}
    script = " ".join(map(str, init.get("entrypoint") or []))
    if "--cluster create" not in script or "--cluster-replicas 1" not in script:
        fail(f"{where} {CLUSTER_INIT}: does not run redis-cli --cluster create --cluster-replicas 1")
    if not all(n.removeprefix("redis-") in script for n in CLUSTER_NODES):
        fail(f"{where} {CLUSTER_INIT}: does not name every node")
    for dep in CLUSTER_NODES:
        if dep not in (init.get("depends_on") or {}):
            fail(f"{where} {CLUSTER_INIT}: does not wait for {dep}")
    for name in ("api", "signal", "logger", "turn-relay"):
        url = compose_env(services.get(name) or {}).get("REDIS_URL") or ""
        if not url.startswith("redis-cluster://"):
            fail(f"{where} {name}: REDIS_URL is not a redis-cluster:// URL")
            continue
        hosts = re.findall(r"(?:@|node=)([^:?&/]+):(\d+)", url)
        named = {ports.get(p) if h == "127.0.0.1" else (h if p == "6379" else None) for h, p in hosts}
        if None in named or not named <= set(CLUSTER_NODES) or len(named) < 3:
            fail(f"{where} {name}: REDIS_URL must name three cluster nodes (names, or their loopback ports), got {hosts}")
        if CLUSTER_INIT not in ((services.get(name) or {}).get("depends_on") or {}):
            fail(f"{where} {name}: does not wait for {CLUSTER_INIT}")


# ---------------------------------------------------------------------------------------------
# Environment drift


def check_env(rendered: Path) -> None:
    accepted = accepted_vars()
    documented = env_example_vars()

    # .env.example: each variable is read by compose or accepted by some binary.
    all_accepted = set().union(*accepted.values()) if accepted else set()
    for name in documented:
        if name in COMPOSE_ONLY:
            continue
        if accepted and len(accepted) == len(set(COMPOSE_BINARIES.values())) and name not in all_accepted:
            fail(f".env.example: {name} is accepted by no binary (typo or removed setting?)")
    # ...and each variable a binary accepts is documented there.
    for binary, names in accepted.items():
        for name in sorted(names - set(documented)):
            fail(f".env.example: {name} (accepted by {binary}) is not documented")

    # docker-compose.yml: each service's environment is accepted by its binary.
    text = (ROOT / "docker-compose.yml").read_text()
    overlay_text = (ROOT / "deploy/compose/turns.yml").read_text()
    compose = yaml.safe_load(text)
    overlay = yaml.safe_load(overlay_text)
    for doc, label in ((compose, "docker-compose.yml"), (overlay, "deploy/compose/turns.yml")):
        for svc_name, binary in COMPOSE_BINARIES.items():
            svc = (doc.get("services") or {}).get(svc_name)
            if not svc or binary not in accepted:
                continue
            for name in compose_env(svc):
                if name not in accepted[binary]:
                    fail(f"{label} {svc_name}: {name} is not accepted by {binary}")
    # Every ${VAR} compose interpolates is documented in .env.example.
    for name in sorted(compose_interpolations(text) | compose_interpolations(overlay_text)):
        if name not in documented:
            fail(f"docker-compose: ${{{name}}} is not documented in .env.example")

    # Kubernetes: env, envFrom ConfigMaps and Secret keys of each Hermes container.
    docs = load_yaml_docs(rendered)
    configmaps = {d["metadata"]["name"]: d.get("data") or {} for d in docs if d.get("kind") == "ConfigMap"}
    for d in docs:
        if d.get("kind") not in ("Deployment", "DaemonSet", "StatefulSet"):
            continue
        for c in d["spec"]["template"]["spec"].get("containers", []):
            binary = K8S_CONTAINER_BINARIES.get(c["name"])
            if not binary or binary not in accepted:
                continue
            where = f"k8s {d['kind']}/{d['metadata']['name']} container {c['name']}"
            names = [e["name"] for e in c.get("env", [])]
            for ef in c.get("envFrom", []):
                ref = (ef.get("configMapRef") or {}).get("name")
                if ref:
                    if ref not in configmaps:
                        fail(f"{where}: envFrom ConfigMap {ref} is not in the rendered output")
                    names += list(configmaps.get(ref, {}))
            for name in names:
                if name in K8S_HELPER_VARS:
                    continue
                if name not in accepted[binary]:
                    fail(f"{where}: {name} is not accepted by {binary}")


# ---------------------------------------------------------------------------------------------
# Kubernetes rules


def check_k8s(rendered: Path) -> None:
    docs = load_yaml_docs(rendered)
    by_kind: dict[str, dict[str, dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d

    for want in ("hermes-api", "hermes-signal", "hermes-logger", "hermes-caddy"):
        if want not in by_kind.get("Deployment", {}):
            fail(f"k8s: Deployment {want} missing")
    for want in ("hermes-api", "hermes-signal"):
        if want not in by_kind.get("PodDisruptionBudget", {}):
            fail(f"k8s: PodDisruptionBudget {want} missing")
        hpa = by_kind.get("HorizontalPodAutoscaler", {}).get(want)
        if not hpa:
            fail(f"k8s: HorizontalPodAutoscaler {want} missing")
        elif hpa["spec"]["scaleTargetRef"]["name"] != want:
            fail(f"k8s: HPA {want} targets {hpa['spec']['scaleTargetRef']['name']}")
    ds = by_kind.get("DaemonSet", {}).get("hermes-turn")
    if not ds:
        fail("k8s: DaemonSet hermes-turn missing")
    elif not ds["spec"]["template"]["spec"].get("hostNetwork"):
        fail("k8s: hermes-turn DaemonSet is not hostNetwork")
    sig = by_kind.get("Service", {}).get("hermes-signal")
    if sig and sig["spec"].get("sessionAffinity", "None") != "None":
        fail("k8s: Service hermes-signal must not use session affinity")
    for secret in by_kind.get("Secret", {}).values():
        keys = set(secret.get("data") or {}) | set(secret.get("stringData") or {})
        if secret["metadata"]["name"].startswith("hermes-secrets") and not {"JWT_SECRET", "TURN_SECRET", "REDIS_URL"} <= keys:
            fail(f"k8s: Secret {secret['metadata']['name']} lacks JWT_SECRET/TURN_SECRET/REDIS_URL")

    for kind in ("Deployment", "DaemonSet", "StatefulSet"):
        for name, d in by_kind.get(kind, {}).items():
            pod = d["spec"]["template"]["spec"]
            psc = pod.get("securityContext") or {}
            if not psc.get("runAsNonRoot"):
                fail(f"k8s {kind}/{name}: pod securityContext.runAsNonRoot is not true")
            if pod.get("automountServiceAccountToken") is not False:
                fail(f"k8s {kind}/{name}: automountServiceAccountToken should be false")
            for c in pod["containers"]:
                where = f"k8s {kind}/{name} container {c['name']}"
                sc = c.get("securityContext") or {}
                if not sc.get("readOnlyRootFilesystem"):
                    fail(f"{where}: readOnlyRootFilesystem is not true")
                if sc.get("allowPrivilegeEscalation") is not False:
                    fail(f"{where}: allowPrivilegeEscalation is not false")
                if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                    fail(f"{where}: capabilities do not drop ALL")
                res = c.get("resources") or {}
                if not (res.get("requests") and res.get("limits") and "memory" in res["limits"]):
                    fail(f"{where}: needs resource requests and a memory limit")
                if "readinessProbe" not in c or "livenessProbe" not in c:
                    fail(f"{where}: needs readiness and liveness probes")
                if ":latest" in c["image"] or ":" not in c["image"].rsplit("/", 1)[-1]:
                    fail(f"{where}: image {c['image']} has no pinned tag")


# ---------------------------------------------------------------------------------------------
# Kubernetes drift: images, ports, probes against the Dockerfile and the binaries


def binary_help(binary: str) -> str | None:
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    path = target / "debug" / binary
    if not path.exists():
        return None
    out = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=20,
                         env={"PATH": "/usr/bin:/bin"}, check=False)
    return out.stdout + out.stderr


def listen_defaults(help_text: str) -> dict[str, str]:
    """`*_LISTEN` env var -> its default, from one option block of `--help` each."""
    out = {}
    for block in re.split(r"\n(?=\s*-[-a-zA-Z])", help_text):
        env = re.search(r"\[env: ([A-Z][A-Z0-9_]*LISTEN)[=\]]", block)
        default = re.search(r"\[default: ([^\]]+)\]", block)
        if env and default:
            out[env.group(1)] = default.group(1).strip()
    return out


def served_paths(binary: str) -> set[str]:
    paths: set[str] = set()
    for f in (ROOT / BINARY_CRATES[binary] / "src").rglob("*.rs"):
        paths |= set(re.findall(r'\.route\(\s*"(/[^"]*)"', f.read_text()))
    return paths


def dockerfile_entrypoints() -> dict[str, str | None]:
    """Stage -> the binary its ENTRYPOINT runs (None when it has none of its own)."""
    stages: dict[str, str | None] = {}
    current = None
    for line in (ROOT / "deploy/docker/Dockerfile").read_text().splitlines():
        m = re.match(r"^FROM\s+\S+\s+AS\s+(\S+)", line, flags=re.I)
        if m:
            current = m.group(1)
            stages[current] = None
        m = re.match(r'^ENTRYPOINT\s+\["/usr/local/bin/([^"]+)"', line)
        if m and current:
            stages[current] = m.group(1)
    return stages


def addr_port(value: str) -> int | None:
    m = re.search(r":(\d+)$", value.strip())
    return int(m.group(1)) if m else None


def check_k8s_drift(rendered: Path) -> None:
    docs = load_yaml_docs(rendered)
    stages = dockerfile_entrypoints()
    configmaps = {d["metadata"]["name"]: d.get("data") or {} for d in docs if d.get("kind") == "ConfigMap"}
    helps: dict[str, str | None] = {}
    pod_ports: list[tuple[dict, set]] = []  # (pod labels, container port names and numbers)
    for d in docs:
        if d.get("kind") not in ("Deployment", "DaemonSet", "StatefulSet"):
            continue
        pod = d["spec"]["template"]
        names_numbers: set = set()
        for c in pod["spec"].get("containers", []):
            where = f"k8s {d['kind']}/{d['metadata']['name']} container {c['name']}"
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            names_numbers |= set(ports) | set(ports.values())
            m = re.search(r"/hermes-([a-z]+):[^/:]+$", c["image"])
            if not m:
                continue  # not one of our images (e.g. the redis-dev component)
            target = m.group(1)
            if target not in stages:
                fail(f"{where}: image {c['image']} names no deploy/docker/Dockerfile target {target}")
                continue
            binary = K8S_CONTAINER_BINARIES.get(c["name"])
            if binary and stages[target] != binary:
                fail(f"{where}: image target {target} runs {stages[target]}, not {binary}")
            # What the container listens on, and where HTTP is served.
            env = {e["name"]: str(e.get("value", "")) for e in c.get("env", []) if "value" in e}
            for ef in c.get("envFrom", []):
                env = {**configmaps.get((ef.get("configMapRef") or {}).get("name"), {}), **env}
            if binary:
                if binary not in helps:
                    helps[binary] = binary_help(binary)
                if helps[binary] is None:
                    fail(f"{where}: target/debug/{binary} is missing; run `cargo build --workspace` first")
                    continue
                listens = {**listen_defaults(helps[binary]), **{k: v for k, v in env.items() if k.endswith("LISTEN")}}
                listening = {addr_port(v) for v in listens.values()} - {None}
                http_ports = {addr_port(listens.get(HTTP_LISTEN[binary], ""))} - {None}
                paths = served_paths(binary)
            else:
                caddyfile = next((data["Caddyfile"] for data in configmaps.values() if "Caddyfile" in data), "")
                listening = {int(p) for p in re.findall(r"^:(\d+)\s*\{", caddyfile, flags=re.M)}
                http_ports = listening
                paths = set(re.findall(r"^\s*handle\s+(/\S*)\s*\{", caddyfile, flags=re.M))
                if not listening:
                    fail(f"{where}: no Caddyfile ConfigMap with a `:PORT {{` site")
            for pname, number in ports.items():
                if number not in listening:
                    fail(f"{where}: containerPort {number} ({pname}) is not a port it listens on {sorted(listening)}")
            for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
                probe = c.get(kind)
                if not probe:
                    continue
                http = probe.get("httpGet")
                if http:
                    port = ports.get(http["port"], http["port"])
                    path = http.get("path", "/")
                else:
                    cmd = (probe.get("exec") or {}).get("command") or []
                    if not cmd or not cmd[0].endswith("hermes-healthprobe") or len(cmd) < 3:
                        fail(f"{where}: {kind} is neither httpGet nor hermes-healthprobe")
                        continue
                    port, path = addr_port(cmd[1]), cmd[2]
                if port not in http_ports:
                    fail(f"{where}: {kind} port {port} is not its HTTP listener {sorted(http_ports)}")
                if path not in paths:
                    fail(f"{where}: {kind} path {path} is not served (routes: {sorted(paths)})")
        pod_ports.append((pod["metadata"].get("labels") or {}, names_numbers))
    for svc in (d for d in docs if d.get("kind") == "Service"):
        selector = svc["spec"].get("selector") or {}
        pods = [names for labels, names in pod_ports if selector and selector.items() <= labels.items()]
        if not pods:
            fail(f"k8s Service/{svc['metadata']['name']}: selects no pod")
            continue
        for port in svc["spec"].get("ports", []):
            target = port.get("targetPort", port["port"])
            if not all(target in names for names in pods):
                fail(f"k8s Service/{svc['metadata']['name']}: targetPort {target} is no container port of its pods")


def check_k8s_sentinel(rendered: Path) -> None:
    import base64
    from urllib.parse import parse_qs, urlsplit

    docs = load_yaml_docs(rendered)
    sets = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "StatefulSet"}
    redis, sentinel = sets.get("hermes-redis"), sets.get("hermes-sentinel")
    if not redis or redis["spec"].get("replicas", 1) < 2:
        fail("k8s-sentinel: StatefulSet hermes-redis with at least 2 replicas missing")
    if not sentinel or sentinel["spec"].get("replicas", 1) != 3:
        fail("k8s-sentinel: StatefulSet hermes-sentinel with 3 replicas missing")
        return
    if sentinel["spec"].get("podManagementPolicy") != "Parallel":
        fail("k8s-sentinel: hermes-sentinel must start its pods in parallel (readiness needs quorum)")
    script = " ".join(" ".join(map(str, c.get("args") or []))
                      for c in sentinel["spec"]["template"]["spec"]["containers"])
    m = re.search(r"sentinel monitor (\S+) \S+ 6379 (\d+)", script)
    if not m:
        fail("k8s-sentinel: the sentinels monitor no primary on 6379")
        return
    service, quorum = m.group(1), int(m.group(2))
    if quorum != 2:
        fail(f"k8s-sentinel: quorum {quorum}, expected 2 of 3")
    secrets = [d for d in docs if d.get("kind") == "Secret" and d["metadata"]["name"].startswith("hermes-secrets")]
    if not secrets:
        fail("k8s-sentinel: no hermes-secrets Secret")
        return
    data = {k: base64.b64decode(v).decode() for k, v in (secrets[0].get("data") or {}).items()}
    data.update(secrets[0].get("stringData") or {})
    if "REDIS_PASSWORD" not in data:
        fail("k8s-sentinel: hermes-secrets has no REDIS_PASSWORD (the Redis pods read it)")
    url = data.get("REDIS_URL", "")
    parts = urlsplit(url)
    if parts.scheme != "redis-sentinel":
        fail(f"k8s-sentinel: REDIS_URL is not a redis-sentinel:// URL ({parts.scheme}://)")
        return
    query = parse_qs(parts.query)
    if query.get("sentinelServiceName") != [service]:
        fail(f"k8s-sentinel: REDIS_URL names sentinelServiceName {query.get('sentinelServiceName')}, the sentinels monitor {service}")
    hosts = {f"{parts.hostname}:{parts.port}"} | set(query.get("node", []))
    want = {f"hermes-sentinel-{i}.{sentinel['spec']['serviceName']}:26379" for i in range(3)}
    if hosts != want:
        fail(f"k8s-sentinel: REDIS_URL names {sorted(hosts)}, not every sentinel pod {sorted(want)}")
    if "REDIS_PASSWORD" in data and parts.password != data["REDIS_PASSWORD"]:
        fail("k8s-sentinel: REDIS_URL's password is not REDIS_PASSWORD")


def check_k8s_cluster(rendered: Path) -> None:
    import base64
    from urllib.parse import parse_qs, urlsplit

    docs = load_yaml_docs(rendered)
    by = {(d.get("kind"), d["metadata"]["name"]): d for d in docs}
    redis = by.get(("StatefulSet", "hermes-redis"))
    if not redis or redis["spec"].get("replicas", 1) != 6:
        fail("k8s-cluster: StatefulSet hermes-redis with 6 replicas (3 primaries, 3 replicas) missing")
        return
    if redis["spec"].get("podManagementPolicy") != "Parallel":
        fail("k8s-cluster: hermes-redis must start its pods in parallel (the init Job waits for all)")
    container = redis["spec"]["template"]["spec"]["containers"][0]
    script = " ".join(map(str, (container.get("command") or []) + (container.get("args") or [])))
    for flag in ("--cluster-enabled yes", "--cluster-config-file /data/", "--requirepass",
                 "--masterauth", "--cluster-announce-hostname"):
        if flag not in script:
            fail(f"k8s-cluster: the Redis pods' command lacks {flag}")
    claims = {c["metadata"]["name"] for c in redis["spec"].get("volumeClaimTemplates") or []}
    mounts = {m["name"] for m in container.get("volumeMounts") or [] if m.get("mountPath") == "/data"}
    if not mounts & claims:
        fail("k8s-cluster: /data (nodes.conf, a node's identity) is not on a volume claim")
    job = by.get(("Job", "hermes-redis-cluster-init"))
    init = " ".join(" ".join(map(str, c.get("args") or []))
                    for c in (job or {}).get("spec", {}).get("template", {}).get("spec", {}).get("containers", []))
    if "--cluster create" not in init or "--cluster-replicas 1" not in init:
        fail("k8s-cluster: no Job hermes-redis-cluster-init running redis-cli --cluster create --cluster-replicas 1")
    policy = by.get(("NetworkPolicy", "hermes-redis-allow-hermes"))
    bus = [r for r in (policy or {}).get("spec", {}).get("ingress", [])
           if any(p.get("port") == 16379 for p in r.get("ports") or [])]
    if not bus or any("ipBlock" in f or "hermes-redis" != (f.get("podSelector") or {}).get("matchLabels", {}).get("app.kubernetes.io/name")
                      for r in bus for f in r.get("from") or [{}]):
        fail("k8s-cluster: the cluster bus (16379) must be open to the Redis pods only")
    secrets = [d for d in docs if d.get("kind") == "Secret" and d["metadata"]["name"].startswith("hermes-secrets")]
    if not secrets:
        fail("k8s-cluster: no hermes-secrets Secret")
        return
    data = {k: base64.b64decode(v).decode() for k, v in (secrets[0].get("data") or {}).items()}
    data.update(secrets[0].get("stringData") or {})
    if "REDIS_PASSWORD" not in data:
        fail("k8s-cluster: hermes-secrets has no REDIS_PASSWORD (the Redis pods read it)")
    parts = urlsplit(data.get("REDIS_URL", ""))
    if parts.scheme != "redis-cluster":
        fail(f"k8s-cluster: REDIS_URL is not a redis-cluster:// URL ({parts.scheme}://)")
        return
    hosts = {f"{parts.hostname}:{parts.port}"} | set(parse_qs(parts.query).get("node", []))
    pods = {f"hermes-redis-{i}.{redis['spec']['serviceName']}:6379" for i in range(6)}
    if len(hosts) < 3 or not hosts <= pods:
        fail(f"k8s-cluster: REDIS_URL names {sorted(hosts)}, not three of the pods {sorted(pods)}")
    if "REDIS_PASSWORD" in data and parts.password != data["REDIS_PASSWORD"]:
        fail("k8s-cluster: REDIS_URL's password is not REDIS_PASSWORD")


def split(rendered: Path, outdir: Path) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    for i, d in enumerate(load_yaml_docs(rendered)):
        name = f"{i:02d}-{d['kind']}-{d['metadata']['name']}.yaml"
        (outdir / name).write_text(yaml.safe_dump(d, sort_keys=False))


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    cmd = argv[0]
    if cmd == "compose":
        check_compose()
    elif cmd == "env" and len(argv) == 2:
        check_env(Path(argv[1]))
    elif cmd == "k8s" and len(argv) == 2:
        check_k8s(Path(argv[1]))
    elif cmd == "k8s-sentinel" and len(argv) == 2:
        check_k8s_sentinel(Path(argv[1]))
    elif cmd == "k8s-cluster" and len(argv) == 2:
        check_k8s_cluster(Path(argv[1]))
    elif cmd == "k8s-drift" and len(argv) == 2:
        check_k8s_drift(Path(argv[1]))
    elif cmd == "split" and len(argv) == 3:
        split(Path(argv[1]), Path(argv[2]))
    else:
        print(__doc__)
        return 2
    for e in errors:
        print(f"FAIL {e}")
    if errors:
        return 1
    print(f"ok -- {cmd}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
