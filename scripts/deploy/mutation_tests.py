#!/usr/bin/env python3
"""Prove that scripts/deploy/deploy_checks.py can fail: apply one known defect at a time to a
copy of the deployment files and expect the matching complaint. Run by
scripts/checks/50-deploy-static.sh after the real checks passed; needs the rendered overlay
(argument 1), optionally the rendered Sentinel overlay (argument 2), and the debug binaries (for
the environment mutations).
"""

from __future__ import annotations

import copy
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import deploy_checks as dc  # noqa: E402

REAL_ROOT = dc.ROOT
results: list[tuple[str, bool, str]] = []


def tree() -> Path:
    tmp = Path(tempfile.mkdtemp(prefix="hermes-mutation."))
    for f in ("docker-compose.yml", ".env.example"):
        shutil.copy(REAL_ROOT / f, tmp / f)
    for d in ("deploy", "coturn-compat", "caddy"):
        shutil.copytree(REAL_ROOT / d, tmp / d)
    (tmp / "web").symlink_to(REAL_ROOT / "web")
    (tmp / "target").symlink_to(REAL_ROOT / "target")
    return tmp


def run(name: str, expect: str, mutate, check) -> None:
    root = tree()
    try:
        mutate(root)
        dc.ROOT = root
        dc.errors.clear()
        check(root)
        hit = any(expect in e for e in dc.errors)
        results.append((name, hit, "; ".join(dc.errors) or "no complaint"))
    finally:
        dc.ROOT = REAL_ROOT
        dc.errors.clear()
        shutil.rmtree(root, ignore_errors=True)


def edit_compose(fn):
    def mutate(root: Path) -> None:
        p = root / "docker-compose.yml"
        doc = yaml.safe_load(p.read_text())
        fn(doc)
        p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return mutate


def edit_rendered(rendered: Path, fn):
    def mutate(root: Path) -> None:
        docs = [d for d in yaml.safe_load_all(rendered.read_text()) if d]
        fn(docs)
        (root / "rendered.yaml").write_text(yaml.safe_dump_all(copy.deepcopy(docs), sort_keys=False))
    return mutate


def find(docs, kind, name):
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def main(rendered: Path, sentinel: Path | None = None, cluster: Path | None = None) -> int:
    compose = lambda root: dc.check_compose()  # noqa: E731
    env = lambda root: dc.check_env(root / "rendered.yaml")  # noqa: E731
    k8s = lambda root: dc.check_k8s(root / "rendered.yaml")  # noqa: E731
    keep = edit_rendered(rendered, lambda docs: None)

    def both(*fns):
        def m(root):
            for f in fns:
                f(root)
        return m

    run("redis without healthcheck", "which has no healthcheck",
        edit_compose(lambda d: d["services"]["redis"].pop("healthcheck")), compose)
    run("depends_on without condition", "without condition: service_healthy",
        edit_compose(lambda d: d["services"]["api"]["depends_on"]["redis"].pop("condition")), compose)
    run("api health probe on the wrong port", "does not probe port 8080",
        edit_compose(lambda d: d["services"]["api"]["healthcheck"].update(
            test=["CMD", "/usr/local/bin/hermes-healthprobe", "127.0.0.1:9999", "/healthz"])), compose)
    run("turn-relay publishing ports", "must use network_mode: host",
        edit_compose(lambda d: (d["services"]["turn-relay"].pop("network_mode"),
                                d["services"]["turn-relay"].update(ports=["3478:3478/udp"]))), compose)
    run("unknown build target", "is not a stage",
        edit_compose(lambda d: d["services"]["logger"]["build"].update(target="loger")), compose)
    def edit_sentinel(fn):
        def mutate(root: Path) -> None:
            p = root / "deploy/compose/sentinel.yml"
            doc = yaml.safe_load(p.read_text())
            fn(doc)
            p.write_text(yaml.safe_dump(doc, sort_keys=False))
        return mutate
    run("compose sentinel: a service names two of three sentinels", "names 2 sentinels",
        edit_sentinel(lambda d: d["services"]["signal"]["environment"].update(
            REDIS_URL="redis-sentinel://:p@sentinel-1:26379?sentinelServiceName=hermes&node=sentinel-2:26379")),
        compose)
    run("compose sentinel: a sentinel without health check", "which has no healthcheck",
        edit_sentinel(lambda d: d["services"]["sentinel-2"].pop("healthcheck")), compose)
    def edit_cluster(fn):
        def mutate(root: Path) -> None:
            p = root / "deploy/compose/cluster.yml"
            doc = yaml.safe_load(p.read_text())
            fn(doc)
            p.write_text(yaml.safe_dump(doc, sort_keys=False))
        return mutate
    run("compose cluster: a node without masterauth", "command lacks --masterauth",
        edit_cluster(lambda d: d["services"]["redis-4"].update(
            command=[c for c in d["services"]["redis-4"]["command"] if c != "--masterauth"])), compose)
    run("compose cluster: signal starts before the cluster is formed", "does not wait for redis-cluster-init",
        edit_cluster(lambda d: d["services"]["signal"].pop("depends_on")), compose)
    run("compose build arg default differs from the Dockerfile", "does not default to the Dockerfile's",
        edit_compose(lambda d: d["services"]["api"]["build"].update(
            args={"RUNTIME_BASE_IMAGE": "${RUNTIME_BASE_IMAGE:-gcr.io/distroless/cc-debian12:latest}"})), compose)
    run("api env typo", "API_LISTN is not accepted by hermes-api",
        both(edit_compose(lambda d: d["services"]["api"]["environment"].append("API_LISTN=0.0.0.0:8080")), keep),
        env)
    run("undocumented interpolation", "${NEW_KNOB} is not documented",
        both(edit_compose(lambda d: d["services"]["signal"]["environment"].append(
            "SIGNAL_DRAIN_MS=${NEW_KNOB:-5000}")), keep), env)

    def drop_env_doc(root: Path) -> None:
        p = root / ".env.example"
        p.write_text("\n".join(line for line in p.read_text().splitlines()
                               if not line.lstrip("#").startswith("TURN_DRAIN_SECS=")) + "\n")
        keep(root)
    run("setting missing from .env.example", "TURN_DRAIN_SECS (accepted by hermes-turn) is not documented",
        drop_env_doc, env)

    def empty_value(root: Path) -> None:
        p = root / ".env.example"
        p.write_text(p.read_text().replace("#TURN_EXTERNAL_IP=203.0.113.10", "TURN_EXTERNAL_IP="))
        keep(root)
    run("empty active value in .env.example", "TURN_EXTERNAL_IP= is present but empty", empty_value, env)
    run("k8s env typo", "SIGNAL_LISTN is not accepted by hermes-signal",
        edit_rendered(rendered, lambda docs: find(docs, "Deployment", "hermes-signal")["spec"]["template"]["spec"]
                      ["containers"][0]["env"].append({"name": "SIGNAL_LISTN", "value": "x"})), env)
    run("sticky sessions on signal", "must not use session affinity",
        edit_rendered(rendered, lambda docs: find(docs, "Service", "hermes-signal")["spec"].update(
            sessionAffinity="ClientIP")), k8s)
    run("writable root filesystem", "readOnlyRootFilesystem is not true",
        edit_rendered(rendered, lambda docs: find(docs, "Deployment", "hermes-api")["spec"]["template"]["spec"]
                      ["containers"][0]["securityContext"].pop("readOnlyRootFilesystem")), k8s)
    run("missing HPA", "HorizontalPodAutoscaler hermes-signal missing",
        edit_rendered(rendered, lambda docs: docs.remove(find(docs, "HorizontalPodAutoscaler", "hermes-signal"))),
        k8s)
    run("TURN without hostNetwork", "is not hostNetwork",
        edit_rendered(rendered, lambda docs: find(docs, "DaemonSet", "hermes-turn")["spec"]["template"]["spec"]
                      .pop("hostNetwork")), k8s)

    drift = lambda root: dc.check_k8s_drift(root / "rendered.yaml")  # noqa: E731

    def container(docs, kind, name):
        return find(docs, kind, name)["spec"]["template"]["spec"]["containers"][0]
    run("k8s probe path the binary does not serve", "path /healthzz is not served",
        edit_rendered(rendered, lambda docs: container(docs, "Deployment", "hermes-signal")["livenessProbe"]
                      ["httpGet"].update(path="/healthzz")), drift)
    run("k8s containerPort the binary does not listen on", "containerPort 8090 (http) is not a port",
        edit_rendered(rendered, lambda docs: container(docs, "Deployment", "hermes-api")["ports"][0].update(
            containerPort=8090)), drift)
    run("k8s image of another target", "runs hermes-api, not hermes-logger",
        edit_rendered(rendered, lambda docs: container(docs, "Deployment", "hermes-logger").update(
            image="ghcr.io/hermes-call/hermes-api:0.1.0")), drift)
    run("k8s probe on the TURN listener instead of metrics", "is not its HTTP listener",
        edit_rendered(rendered, lambda docs: container(docs, "DaemonSet", "hermes-turn")["readinessProbe"]
                      ["httpGet"].update(port="turn-tcp")), drift)
    run("k8s Service targetPort missing", "targetPort metrics-x is no container port",
        edit_rendered(rendered, lambda docs: find(docs, "Service", "hermes-turn-metrics")["spec"]["ports"][0].update(
            targetPort="metrics-x")), drift)

    if sentinel is not None:
        sentinel_check = lambda root: dc.check_k8s_sentinel(root / "rendered.yaml")  # noqa: E731

        def drop_a_sentinel(docs):
            import base64
            secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].startswith("hermes-secrets"))
            url = base64.b64decode(secret["data"]["REDIS_URL"]).decode()
            url = url.replace("&node=hermes-sentinel-2.hermes-sentinel:26379", "")
            secret["data"]["REDIS_URL"] = base64.b64encode(url.encode()).decode()
        run("k8s sentinel: REDIS_URL leaves a sentinel out", "not every sentinel pod",
            edit_rendered(sentinel, drop_a_sentinel), sentinel_check)
        run("k8s sentinel: sentinels started in order", "start its pods in parallel",
            edit_rendered(sentinel, lambda docs: find(docs, "StatefulSet", "hermes-sentinel")["spec"].pop(
                "podManagementPolicy")), sentinel_check)

    if cluster is not None:
        cluster_check = lambda root: dc.check_k8s_cluster(root / "rendered.yaml")  # noqa: E731

        def open_the_bus(docs):
            policy = find(docs, "NetworkPolicy", "hermes-redis-allow-hermes")
            for rule in policy["spec"]["ingress"]:
                if any(p.get("port") == 16379 for p in rule.get("ports") or []):
                    rule["from"].append({"ipBlock": {"cidr": "0.0.0.0/0"}})
        run("k8s cluster: nodes.conf on an emptyDir", "is not on a volume claim",
            edit_rendered(cluster, lambda docs: find(docs, "StatefulSet", "hermes-redis")["spec"].pop(
                "volumeClaimTemplates")), cluster_check)
        run("k8s cluster: the cluster bus open to everyone", "open to the Redis pods only",
            edit_rendered(cluster, open_the_bus), cluster_check)

    failed = [r for r in results if not r[1]]
    for name, hit, detail in results:
        print(f"{'ok  ' if hit else 'FAIL'} mutation caught: {name}" + ("" if hit else f" -- got: {detail}"))
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None,
                  Path(sys.argv[3]) if len(sys.argv) > 3 else None))
