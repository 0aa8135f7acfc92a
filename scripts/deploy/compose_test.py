#!/usr/bin/env python3
"""The compose deployment for real: our images built, docker-compose.yml started, calls through it.

Run by scripts/deploy/compose-test.sh (`make deploy-test`, and `make test` through
scripts/checks/70-compose.sh) with the repository's .venv Python (podman-compose, PyYAML).

This machine has no Docker engine and no registry, so the test uses rootful podman with
podman-compose and substitutes only what cannot be pulled, through the build arguments and
compose variables that default to the public images:

  * runtime base (distroless/cc-debian12)  -> a Debian bookworm base made by debootstrap and
    `podman import` (cached as localhost/hermes-dt-base:bookworm);
  * builder (rust:*-slim-bookworm)         -> the binaries `make test` already built on this
    host (same Debian release; debug profile, debug info stripped; DEPLOY_TEST_PROFILE=release
    uses the release ones), in an image with the builder's /out layout;
  * redis, caddy base, coturn images       -> built from that base with Debian's packages
    (scripts/deploy/local-images.Dockerfile).

Everything else is the project's own: deploy/docker/Dockerfile's runtime stages (user, env,
healthcheck, hermes-healthprobe), docker-compose.yml unchanged, caddy/Caddyfile unchanged.
Steps (each timed; the table is printed at the end):

  1. images: base (debootstrap, once per machine), stand-ins, binaries, then
     `podman-compose build` of our five targets;
  2. `up -d` with a generated .env (production mode, random secrets, published on 127.0.0.1
     test ports); every healthcheck must pass, else the containers' logs are printed.
     TLS: SERVER_NAME=localhost, for which caddy/Caddyfile (unchanged) gets its certificate from
     Caddy's own local CA instead of ACME (which cannot be reached here), so the production
     Caddyfile's HTTPS, HSTS and CSP are what the browsers get; plain HTTP would need another
     Caddyfile, and the web client's CSP (upgrade-insecure-requests, wss:) expects HTTPS. The
     browsers skip certificate verification; curl checks the chain against Caddy's root;
  3. a two-browser call (tests/e2e/driver/call.mjs) through the published HTTPS port with
     ICE policy relay: media through the hermes-turn container; the call's events are read
     from the hermes-logger container (its output, and `hermes-logger --call`);
  4. the same call with COMPOSE_PROFILES=coturn (coturn instead of hermes-turn);
  5. API_REPLICAS=2 SIGNAL_REPLICAS=3; mid-call the signal replica holding a participant is
     killed (SIGKILL): the call goes on, the participants on it resume their seat elsewhere;
  6. hardening: non-root, read-only root, no capabilities (inspect and /proc of the running
     processes), published ports and every socket the stack listens on are loopback or the
     compose network's own address;
  7. `down -v` leaves no container, network or volume of the project.

Network: browsers and probes use 127.0.0.1 only; the TURN relays bind the compose network's
gateway address (on this host, inside the container network), which is the only range
TURN_ALLOWED_PEER_IPS / coturn's allowed-peer-ip admit. Whatever it starts is removed at the
end, also on failure or SIGTERM.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("HERMES_DEPLOY_CACHE", "/var/tmp/hermes-deploy-test"))
PROFILE = os.environ.get("DEPLOY_TEST_PROFILE", "debug")
VENV = ROOT / ".venv/bin"
BASE_IMAGE = "localhost/hermes-dt-base:bookworm"
RELEASE = "bookworm"
PREFIX = "localhost/hermes-dt"
SERVICES_BINARIES = ["hermes-api", "hermes-signal", "hermes-turn", "hermes-logger"]
HEALTH_WAIT = 120.0  # seconds for the whole stack to become healthy

failures: list[str] = []
timings: list[tuple[str, float]] = []


class Failed(Exception):
    pass


def log(msg: str) -> None:
    print(msg, flush=True)


def check(cond: bool, what: str, detail: object = None) -> bool:
    log(("ok   " if cond else "FAIL ") + what + ("" if cond or detail is None else f" -- {detail}"))
    if not cond:
        failures.append(what)
    return cond


def require(cond: bool, what: str, detail: object = None) -> None:
    if not check(cond, what, detail):
        raise Failed(what)


class Step:
    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> "Step":
        self.t = time.monotonic()
        log(f"\n== {self.name}")
        return self

    def __exit__(self, *exc: object) -> None:
        dt = time.monotonic() - self.t
        timings.append((self.name, dt))
        log(f"-- {self.name}: {dt:.1f}s")


# ---------------------------------------------------------------------------------------------
# Commands

ENV = {
    "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
    "HOME": os.environ.get("HOME", "/root"),
    "LANG": "C.UTF-8",
    "CONTAINERS_CONF": str(CACHE / "containers.conf"),
}


def run(cmd: list[str], *, timeout: float = 120, check_rc: bool = True, quiet: bool = False,
        cwd: Path = ROOT, input: str | None = None) -> subprocess.CompletedProcess[str]:
    if not quiet:
        log("$ " + " ".join(cmd))
    p = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout, input=input)
    if check_rc and p.returncode != 0:
        raise Failed(f"{' '.join(cmd[:4])} ... exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def podman(*args: str, **kw) -> subprocess.CompletedProcess[str]:
    return run(["podman", *args], **kw)


def image_exists(ref: str) -> bool:
    return podman("image", "exists", ref, check_rc=False, quiet=True).returncode == 0


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1."""
    for _ in range(50):
        t = socket.socket()
        t.bind(("127.0.0.1", 0))
        port = t.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            u.close()
            t.close()
        return port
    raise Failed("no free port")


def digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Images


def host_conf() -> None:
    """containers.conf for this test: runc (crun refuses this host's hybrid cgroups) and
    default ulimits within the hard limit root may set here (podman's defaults exceed it)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    hard = int(run(["sh", "-c", "ulimit -Hn"], quiet=True).stdout.strip())
    conf = (
        "# Written by scripts/deploy/compose_test.py\n"
        "[containers]\n"
        f'default_ulimits = ["nofile={hard}:{hard}", "nproc=32768:32768"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
    )
    path = CACHE / "containers.conf"
    if not path.exists() or path.read_text() != conf:
        path.write_text(conf)


def nofile_hard() -> int:
    return int(run(["sh", "-c", "ulimit -Hn"], quiet=True).stdout.strip())


def apt_mirror() -> str:
    """The Debian mirror apt already uses on this host."""
    texts = []
    for f in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if f.is_file():
            texts.append(f.read_text())
    for text in texts:
        for m in re.finditer(r"^URIs:\s*(\S+)[^\n]*\nSuites:\s*([^\n]+)", text, flags=re.M):
            if RELEASE in m.group(2).split() and "security" not in m.group(1):
                return m.group(1)
        for m in re.finditer(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", text, flags=re.M):
            if m.group(2) == RELEASE:
                return m.group(1)
    raise Failed(f"no apt source for Debian {RELEASE} on this host")


def base_image() -> None:
    os_release = Path("/etc/os-release").read_text()
    require(f"VERSION_CODENAME={RELEASE}" in os_release,
            f"host is Debian {RELEASE} (the binaries must match the runtime image's glibc)")
    if image_exists(BASE_IMAGE):
        log(f"cached: {BASE_IMAGE}")
        return
    mirror = apt_mirror()
    tmp = Path(tempfile.mkdtemp(prefix="hermes-dt-rootfs.", dir=CACHE))
    try:
        run(["debootstrap", "--variant=minbase", RELEASE, str(tmp / "root"), mirror], timeout=900)
        for d in ("var/cache/apt", "var/lib/apt/lists"):
            shutil.rmtree(tmp / "root" / d, ignore_errors=True)
            (tmp / "root" / d).mkdir(parents=True)
        tar = subprocess.Popen(["tar", "-C", str(tmp / "root"), "-c", "."], stdout=subprocess.PIPE)
        imp = subprocess.run(["podman", "import", "-q", "-", BASE_IMAGE], stdin=tar.stdout, env=ENV,
                             capture_output=True, text=True, timeout=300)
        tar.wait(timeout=60)
        if imp.returncode != 0 or tar.returncode != 0:
            raise Failed(f"podman import failed: {imp.stderr}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def stand_in_images() -> dict[str, str]:
    dockerfile = ROOT / "scripts/deploy/local-images.Dockerfile"
    base_id = podman("image", "inspect", "--format", "{{.Id}}", BASE_IMAGE, quiet=True).stdout.strip()
    tag = digest(dockerfile.read_bytes(), base_id.encode())
    refs = {}
    for target in ("redis", "caddy", "coturn"):
        ref = f"{PREFIX}-{target}-base:{tag}" if target == "caddy" else f"{PREFIX}-{target}:{tag}"
        refs[target] = ref
        if image_exists(ref):
            log(f"cached: {ref}")
            continue
        podman("build", "-q", "--pull=never", "--build-arg", f"BASE={BASE_IMAGE}", "--target", target,
               "--label", "hermes.deploy-test=1", "-t", ref, "-f", str(dockerfile), str(dockerfile.parent),
               timeout=900)
        drop_other_tags(ref)
    return refs


def drop_other_tags(ref: str) -> None:
    """Keep one version of each cached image: untag older ones of the same name."""
    name = ref.rsplit(":", 1)[0]
    out = podman("images", "--format", "{{.Repository}}:{{.Tag}}", name, quiet=True).stdout.split()
    for other in out:
        if other != ref and other.startswith(name + ":"):
            podman("rmi", other, check_rc=False, quiet=True)


def binaries_image(work: Path) -> str:
    """The host's binaries in the builder's layout (/out/bin, /out/var/log/calls)."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / PROFILE
    ctx = work / "binaries"
    (ctx / "out/bin").mkdir(parents=True)
    (ctx / "out/var/log/calls").mkdir(parents=True)
    for b in SERVICES_BINARIES:
        src = target / b
        require(src.is_file(), f"{src} exists (built by `make test` / cargo build)")
        run(["strip", "--strip-debug", "-o", str(ctx / "out/bin" / b), str(src)], quiet=True)
        run([str(ctx / "out/bin" / b), "--help"], quiet=True)
    # The same command as the Dockerfile's builder stage.
    run(["rustc", "--edition", "2024", "-C", "opt-level=s", "-C", "strip=symbols", "-C", "panic=abort",
         str(ROOT / "deploy/docker/healthprobe.rs"), "-o", str(ctx / "out/bin/hermes-healthprobe")], quiet=True)
    (ctx / "Containerfile").write_text("FROM scratch\nCOPY out/ /out/\n")
    files = sorted(p for p in (ctx / "out").rglob("*") if p.is_file())
    tag = digest(*[p.read_bytes() for p in files])
    ref = f"{PREFIX}-binaries:{tag}"
    if image_exists(ref):
        log(f"cached: {ref}")
    else:
        podman("build", "-q", "--label", "hermes.deploy-test=1", "-t", ref, "-f", str(ctx / "Containerfile"),
               str(ctx), timeout=600)
        drop_other_tags(ref)
    return ref


# ---------------------------------------------------------------------------------------------
# The deployment


class Deployment:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.project = os.environ.get("HERMES_DT_PROJECT", f"hermes-dt{os.getpid()}")
        self.env_file = work / "test.env"
        self.override = work / "compose.host.yml"
        self.env: dict[str, str] = {}
        self.ticker_stop = threading.Event()
        self.ticker: threading.Thread | None = None
        self.gateway = ""
        self.down = False
        self.subnet = ""

    def compose(self, *args: str, timeout: float = 600, check_rc: bool = True) -> subprocess.CompletedProcess[str]:
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in self.env.items()))
        return run([str(VENV / "podman-compose"), "-p", self.project, "--env-file", str(self.env_file),
                    "-f", "docker-compose.yml", "-f", str(self.override), *args], timeout=timeout, check_rc=check_rc)

    def write_override(self, coturn_args: list[str]) -> None:
        """What this host needs beyond docker-compose.yml, as a compose override file:
        - the TURN containers' open-files limit within the hard limit root may set here, and
          nproc with it (podman drops containers.conf's default ulimits for a container with
          its own, and its built-in nproc default exceeds this host's limit);
        - coturn's listening and relay addresses and allowed peers (the compose file's command
          with the test's options appended; docker-compose.yml's coturn-compat/turnserver.conf
          is mounted unchanged)."""
        hard = nofile_hard()
        limits = {"nofile": {"soft": hard, "hard": hard}, "nproc": {"soft": 32768, "hard": 32768}}
        compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
        doc = {"services": {
            "turn-relay": {"ulimits": limits},
            "coturn": {"ulimits": limits, "command": [*compose["services"]["coturn"]["command"], *coturn_args]},
        }}
        self.override.write_text(yaml.safe_dump(doc, sort_keys=False))

    def containers(self, all_states: bool = False) -> list[dict]:
        args = ["ps", "--format", "json", "--filter", f"label=io.podman.compose.project={self.project}"]
        if all_states:
            args.insert(1, "-a")
        return json.loads(podman(*args, quiet=True).stdout or "[]")

    def by_service(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for c in self.containers():
            svc = (c.get("Labels") or {}).get("com.docker.compose.service", "?")
            out.setdefault(svc, []).append(c["Names"][0])
        return out

    def inspect(self, name: str) -> dict:
        return json.loads(podman("inspect", name, quiet=True).stdout)[0]

    # Podman runs healthchecks from systemd timers; this host has no systemd, so the test runs
    # each container's own healthcheck (`podman healthcheck run`) on a short interval instead.
    def start_ticker(self) -> None:
        def tick() -> None:
            while not self.ticker_stop.wait(2.0):
                try:
                    for c in self.containers():
                        if c.get("State") == "running":
                            subprocess.run(["podman", "healthcheck", "run", c["Names"][0]], env=ENV,
                                           capture_output=True, timeout=20)
                except Exception as e:  # noqa: BLE001 - keep ticking; waits report the outcome
                    log(f"health ticker: {e}")
        self.ticker = threading.Thread(target=tick, daemon=True)
        self.ticker.start()

    def dump_logs(self) -> None:
        for c in self.containers(all_states=True):
            name = c["Names"][0]
            log(f"\n---- {name} ({c.get('State')}, {c.get('Status')}) logs:")
            p = podman("logs", "--tail", "60", name, check_rc=False, quiet=True)
            log((p.stdout + p.stderr)[-6000:])

    def wait_healthy(self, want: dict[str, int]) -> None:
        """Every container with a healthcheck is healthy and each service has its replicas."""
        deadline = time.monotonic() + HEALTH_WAIT
        last = ""
        while time.monotonic() < deadline:
            counts: dict[str, int] = {}
            pending = []
            for c in self.containers():
                svc = (c.get("Labels") or {}).get("com.docker.compose.service", "?")
                counts[svc] = counts.get(svc, 0) + 1
                info = self.inspect(c["Names"][0])
                health = ((info.get("State") or {}).get("Health") or {}).get("Status")
                if (info.get("Config") or {}).get("Healthcheck") and health != "healthy":
                    pending.append(f"{c['Names'][0]}={health}")
                if info["State"]["Status"] != "running":
                    pending.append(f"{c['Names'][0]}:{info['State']['Status']}")
            missing = {s: n for s, n in want.items() if counts.get(s, 0) != n}
            missing.update({s: 0 for s in counts if s not in want})
            last = f"pending {pending}, replicas {counts} want {want}"
            if not pending and not missing:
                log(f"healthy: {counts}")
                return
            time.sleep(1.0)
        self.dump_logs()
        raise Failed(f"stack not healthy within {HEALTH_WAIT:.0f}s: {last}")

    def teardown(self) -> None:
        self.ticker_stop.set()
        if self.env_file.exists() and not self.down:
            self.compose("down", "-v", "--remove-orphans", "-t", "10", timeout=300, check_rc=False)
        # Whatever compose left (it only knows the services of the active profile).
        label = f"label=io.podman.compose.project={self.project}"
        ids = podman("ps", "-aq", "--filter", label, quiet=True, check_rc=False).stdout.split()
        if ids:
            podman("rm", "-f", "-t", "5", *ids, check_rc=False)
        for kind in ("network", "volume"):
            names = [n for n in podman(kind, "ls", "-q", quiet=True, check_rc=False).stdout.split()
                     if n.startswith(self.project + "_")]
            if names:
                podman(kind, "rm", "-f", *names, check_rc=False)


# ---------------------------------------------------------------------------------------------
# Probes


def stun_binding(port: int, timeout: float = 1.0) -> bool:
    """A STUN Binding request to 127.0.0.1:port answered with a success response."""
    tid = secrets.token_bytes(12)
    req = struct.pack("!HHI", 0x0001, 0, 0x2112A442) + tid
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(req, ("127.0.0.1", port))
            data, _ = s.recvfrom(2048)
        except OSError:
            return False
    return len(data) >= 20 and struct.unpack("!H", data[:2])[0] == 0x0101 and data[8:20] == tid


def wait_for(what: str, fn, timeout: float = 60.0, every: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            log(f"ok   {what}")
            return
        time.sleep(every)
    raise Failed(f"{what}: not within {timeout:.0f}s")


def curl(*args: str, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    return run(["curl", "-sS", "--max-time", "10", *args], timeout=timeout, check_rc=False, quiet=True)


def metrics_value(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def in_netns(pid: int, *cmd: str) -> subprocess.CompletedProcess[str]:
    return run(["nsenter", "-t", str(pid), "-n", *cmd], timeout=20, check_rc=False, quiet=True)


# ---------------------------------------------------------------------------------------------
# Calls


def ensure_node_modules() -> None:
    if not (ROOT / "tests/e2e/node_modules/playwright-core/package.json").is_file():
        run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=ROOT / "tests/e2e", timeout=600)


def browser_call(dep: Deployment, name: str, scenarios: str, on_request=None) -> dict:
    base = f"https://localhost:{dep.https_port}"
    out = dep.work / f"driver-{name}"
    cmd = ["node", str(ROOT / "tests/e2e/driver/call.mjs"), "--base", base, "--policy", "relay", "--runs", "1",
           "--out", str(out), "--scenarios", scenarios, "--ignore-https-errors", "true"]
    log("$ " + " ".join(cmd))
    proc = subprocess.Popen(cmd, cwd=ROOT / "tests/e2e", env={**ENV, "HOME": str(dep.work)}, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(240, proc.kill)
    timer.start()
    done = None
    try:
        assert proc.stdout and proc.stdin
        for line in proc.stdout:
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                log(f"  driver: {line.rstrip()}")
                continue
            kind = ev.get("event")
            if kind == "check":
                log(f"  ok   {ev['what']}")
            elif kind in ("console", "pageerror"):
                log(f"  {kind} {ev.get('side')}: {ev.get('text')}")
            elif kind == "request":
                answer = on_request(ev["action"]) if on_request else "unsupported"
                log(f"  parent: {ev['action']} -> {answer}")
                proc.stdin.write(answer + "\n")
                proc.stdin.flush()
            elif kind == "done":
                done = ev
        proc.wait(timeout=30)
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read() if proc.stderr else ""
    if done is None or not done.get("ok"):
        log(err[-3000:])
        dep.dump_logs()
        raise Failed(f"browser call {name}: {(done or {}).get('error', 'driver gave no result')}")
    check(True, f"browser call {name}: {done.get('candidateTypes')} callId {done.get('callId')}")
    return done


# ---------------------------------------------------------------------------------------------
# Checks of the running stack


def wait_proxied(dep: Deployment) -> None:
    """podman-compose starts Caddy without waiting for api and signal to be healthy (podman
    < 4.6, docs/deploy.md), so Caddy's first active health checks may find them down and keep
    them out for one health_interval (5 s); docker compose would start Caddy after them. Under
    heavy load a health check can also miss its 2 s timeout and take the (one) upstream name out
    until the next check. So: wait until a call can be created through Caddy (the real POST, at
    most 30 s; the API allows 60 a minute) and until /ws reaches a signal replica, and say how
    long it took."""
    url = f"https://localhost:{dep.https_port}"
    ca = str(dep.work / "caddy-root.crt")
    misses: list[str] = []

    def created() -> bool:
        p = curl("--cacert", ca, "-X", "POST", "-H", "content-type: application/json", "-d", "{}",
                 "-w", "\n%{http_code}", f"{url}/api/call/create")
        ok = '"code"' in p.stdout and '"token"' in p.stdout and p.stdout.endswith("\n201")
        if not ok:
            misses.append(f"{p.stdout[-60:]!r} {p.stderr[:100]!r}".replace("\n", " "))
        return ok

    def ws() -> bool:
        code = curl("--cacert", ca, "-o", "/dev/null", "-w", "%{http_code}", f"{url}/ws").stdout
        return code not in ("", "000", "502", "503")
    t = time.monotonic()
    try:
        wait_for("POST /api/call/create through Caddy answers 201 with a code and a token", created,
                 timeout=30, every=1.0)
        wait_for("Caddy reaches the signal replicas (/ws)", ws, timeout=30)
    except Failed:
        log(f"refused create attempts: {misses}")
        dep.dump_logs()
        raise
    log(f"     (api and signal reached through Caddy after {time.monotonic() - t:.1f}s)")
    for miss in misses:
        log(f"WARN a create attempt through Caddy failed before: {miss}")


def signal_connections(dep: Deployment) -> list[tuple[int, str]]:
    """Open WebSockets per signal replica, from each replica's own /metrics (inside its netns)."""
    held = []
    for name in dep.by_service().get("signal", []):
        pid = dep.inspect(name)["State"]["Pid"]
        text = in_netns(pid, "curl", "-s", "--max-time", "3", "http://127.0.0.1:8081/metrics").stdout
        held.append((int(metrics_value(text, "hermes_signal_connections")), name))
    return held


def check_ws_spread(dep: Deployment, replicas: int) -> None:
    """With signal scaled out, Caddy spreads the WebSockets over every replica (caddy/upstreams/
    dns.caddy: upstreams from DNS, least_conn). Seats `2 * replicas` participants of `replicas`
    calls through Caddy, holds them, and counts each replica's open WebSockets."""
    import asyncio
    import ssl

    import websockets

    url = f"https://localhost:{dep.https_port}"
    ca = str(dep.work / "caddy-root.crt")

    def api(path: str, body: dict) -> dict:
        # HTTP/1.1: the stand-in Caddy (Debian's 2.6.2) has once reset an HTTP/2 stream here
        # ("Stream error in the HTTP/2 framing layer", an open finding in docs/deploy.md); this
        # check is about where the WebSockets land, the browser calls cover HTTP/2.
        p = curl("--http1.1", "--cacert", ca, "-X", "POST", "-H", "content-type: application/json",
                 "-d", json.dumps(body), f"{url}{path}")
        try:
            return json.loads(p.stdout)
        except ValueError:
            dep.dump_logs()
            raise Failed(f"POST {path} through Caddy: {p.stdout[:200]!r} {p.stderr[:200]!r}") from None

    tokens = []
    for _ in range(replicas):
        created = api("/api/call/create", {})
        resolved = api("/api/call/resolve", {"code": created.get("code", "")})
        tokens += [created.get("token", ""), resolved.get("token", "")]

    async def hold() -> list[tuple[int, str]]:
        ctx = ssl.create_default_context(cafile=ca)
        conns = []
        try:
            for token in tokens:
                ws = await websockets.connect(f"wss://localhost:{dep.https_port}/ws", ssl=ctx, origin=url,
                                              open_timeout=15)
                conns.append(ws)
                await ws.send(json.dumps({"type": "join", "token": token}))
                while json.loads(await asyncio.wait_for(ws.recv(), 15)).get("type") != "joined":
                    pass
            return await asyncio.to_thread(signal_connections, dep)
        finally:
            for ws in conns:
                await ws.close()

    held = asyncio.run(asyncio.wait_for(hold(), 120))
    log(f"     {len(tokens)} seated WebSockets through Caddy per signal replica: {held}")
    check(len(held) == replicas and all(n >= 1 for n, _ in held) and sum(n for n, _ in held) == len(tokens),
          f"Caddy spreads {len(tokens)} WebSockets over all {replicas} signal replicas", held)


def check_https(dep: Deployment) -> None:
    caddy = dep.by_service()["caddy"][0]
    ca = dep.work / "caddy-root.crt"
    wait_for("Caddy issued its local CA", lambda: podman(
        "cp", f"{caddy}:/data/caddy/pki/authorities/local/root.crt", str(ca), check_rc=False, quiet=True
    ).returncode == 0, timeout=60)
    url = f"https://localhost:{dep.https_port}"
    wait_for("HTTPS answers /healthz through Caddy", lambda: curl("--cacert", str(ca), "-o", "/dev/null", "-w",
             "%{http_code}", f"{url}/healthz").stdout == "200", timeout=60)
    wait_proxied(dep)
    p = curl("--cacert", str(ca), "-D", "-", "-o", "/dev/null", f"{url}/")
    headers = p.stdout.lower()
    check(p.returncode == 0 and " 200" in headers.split("\n", 1)[0],
          "the web client over HTTPS, certificate chained to Caddy's local CA", p.stderr)
    for h in ("content-security-policy:", "strict-transport-security:", "x-content-type-options: nosniff"):
        check(h in headers, f"response header {h.rstrip(':')}")
    p = curl("-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", f"http://localhost:{dep.http_port}/")
    check(p.stdout.startswith("308 https://localhost"), "plain HTTP redirects to HTTPS", p.stdout)
    p = curl("--cacert", str(ca), "-o", "/dev/null", "-w", "%{http_code}", f"{url}/metrics")
    check(p.stdout == "404", "/metrics is not served publicly", p.stdout)


def turn_metrics(dep: Deployment) -> dict[str, float]:
    text = curl(f"http://127.0.0.1:{dep.metrics_port}/metrics").stdout
    return {k: metrics_value(text, k) for k in ("hermes_turn_allocations_total", "hermes_turn_bytes_to_peer_total")}


def check_logger(dep: Deployment, call_id: str) -> None:
    logger = dep.by_service()["logger"][0]
    short = call_id[:8]
    p = podman("logs", logger, quiet=True)
    lines = [line for line in (p.stdout + p.stderr).splitlines() if short in line]
    check(len(lines) >= 3, f"hermes-logger's output in its container shows the call ({len(lines)} lines with {short})",
          (p.stdout + p.stderr)[-1500:])
    p = podman("exec", "-e", "LOGGER_HEALTH_LISTEN=off", logger, "/usr/local/bin/hermes-logger", "--call", short,
               "--since", "30m", "--json", "--no-file", "--max-events", "3", timeout=60, check_rc=False)
    events = []
    for line in p.stdout.splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    ok = p.returncode == 0 and len(events) == 3 and all(e.get("callId") == call_id for e in events)
    check(ok, f"`hermes-logger --call {short}` in the logger container finds the call's events "
          f"({[e.get('event') or e.get('message') for e in events]})", p.stdout[-800:] + p.stderr[-800:])


def check_k8s_probes(dep: Deployment) -> None:
    """Every HTTP probe of deploy/k8s/base is answered 200 by the same binary running here (the
    static drift check reads the routes from the source; this asks the running services)."""
    service_of = {"api": "api", "signal": "signal", "logger": "logger", "turn": "turn-relay"}
    running = dep.by_service()
    asked = 0
    for f in sorted((ROOT / "deploy/k8s/base").glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if not doc or doc.get("kind") not in ("Deployment", "DaemonSet"):
                continue
            for c in doc["spec"]["template"]["spec"]["containers"]:
                svc = service_of.get(c["name"])
                if not svc:
                    continue
                ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
                for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
                    http = (c.get(kind) or {}).get("httpGet")
                    if not http:
                        continue
                    port = ports.get(http["port"], http["port"])
                    if svc == "turn-relay":  # host network: the test's metrics port stands for 9641
                        cmd = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
                               f"http://127.0.0.1:{dep.metrics_port}{http['path']}"]
                        code = run(cmd, check_rc=False, quiet=True).stdout
                    else:
                        pid = dep.inspect(running[svc][0])["State"]["Pid"]
                        code = in_netns(pid, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
                                        f"http://127.0.0.1:{port}{http['path']}").stdout
                    asked += 1
                    check(code == "200", f"k8s {c['name']} {kind} GET :{port}{http['path']} answered by {svc}", code)
    check(asked >= 8, f"asked every k8s HTTP probe ({asked})")


CAP_NET_BIND_SERVICE = 1 << 10


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def root_mount_ro(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        f = line.split()
        if f[4] == "/":
            return "ro" in f[5].split(",")
    return False


def check_hardening(dep: Deployment) -> None:
    hermes = {"api", "signal", "logger", "turn-relay"}
    for svc, names in sorted(dep.by_service().items()):
        for name in names:
            info = dep.inspect(name)
            pid = info["State"]["Pid"]
            st = proc_status(pid)
            caps = int(st["CapEff"], 16)
            uids = st["Uid"].split()
            where = f"{name}"
            if svc in hermes:
                check(info["Config"].get("User") == "65532:65532" and set(uids) == {"65532"},
                      f"{where}: runs as 65532 (process uids {uids})")
            if svc in hermes | {"redis", "coturn"}:
                check(info["HostConfig"].get("ReadonlyRootfs") is True and root_mount_ro(pid),
                      f"{where}: read-only root filesystem (config and mount)")
                check(caps == 0, f"{where}: no effective capabilities", hex(caps))
            if svc == "caddy":
                check(caps == CAP_NET_BIND_SERVICE, f"{where}: only NET_BIND_SERVICE", hex(caps))
            if svc in hermes | {"caddy", "coturn"}:
                check(st.get("NoNewPrivs") == "1", f"{where}: no-new-privileges")
            if svc in ("redis", "coturn"):
                check(uids[0] != "0", f"{where}: not root (uid {uids[0]})")
            for port, binds in ((info.get("NetworkSettings") or {}).get("Ports") or {}).items():
                for b in binds or []:
                    check(b.get("HostIp") == "127.0.0.1", f"{where}: {port} published on 127.0.0.1 only", b)
    # Every socket the stack listens on in the host's network namespace (host-network TURN,
    # conmon holding the published ports) is loopback or this network's gateway address.
    pids = set()
    for c in dep.containers():
        st = dep.inspect(c["Names"][0])["State"]
        pids.update({st["Pid"], st.get("ConmonPid", 0)})
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    todo = list(pids)
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in pids:
                pids.add(c)
                todo.append(c)
    ss = run(["ss", "-H", "-lntup"], quiet=True).stdout
    seen = 0
    for line in ss.splitlines():
        owners = {int(x) for x in re.findall(r"pid=(\d+)", line)}
        if not owners & pids:
            continue
        seen += 1
        local = line.split()[4]
        addr = local.rsplit(":", 1)[0].strip("[]").split("%")[0]
        check(addr in ("127.0.0.1", "::1", dep.gateway), f"host socket {local} is loopback or the compose network's",
              line)
    check(seen >= 3, f"found the stack's listening sockets on the host ({seen})")


# ---------------------------------------------------------------------------------------------


def main() -> int:
    host_conf()
    lock = open(CACHE / "lock", "w")  # noqa: SIM115 - held for the whole run
    fcntl.flock(lock, fcntl.LOCK_EX)
    work = Path(tempfile.mkdtemp(prefix="hermes-dt."))
    os.chmod(work, 0o755)
    dep = Deployment(work)

    def on_term(signum, frame):  # noqa: ARG001
        raise Failed(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        with Step("base image (debootstrap; once per machine)"):
            base_image()
        with Step("stand-in images (redis, caddy base, coturn; once per machine)"):
            stand = stand_in_images()
        with Step(f"binaries image ({PROFILE} binaries of this host)"):
            bins = binaries_image(work)
            ensure_node_modules()  # the e2e driver's playwright-core (`make test` has it already)

        dep.http_port, dep.https_port = free_port(), free_port()
        dep.metrics_port, turn_port, turns_port, redis_port = free_port(), free_port(), free_port(), free_port()
        dep.env = {
            "COMPOSE_PROFILES": "turn-relay",
            "HERMES_IMAGE_PREFIX": PREFIX,
            "HERMES_TAG": "test",
            "API_REPLICAS": "2",
            "SIGNAL_REPLICAS": "2",
            "REDIS_PASSWORD": secrets.token_hex(24),
            "REDIS_HOST_PORT": str(redis_port),
            "HERMES_ENV": "production",
            "SERVER_NAME": "localhost",
            "RUST_LOG": "info",
            "JWT_SECRET": base64.b64encode(secrets.token_bytes(48)).decode(),
            "TURN_SECRET": base64.b64encode(secrets.token_bytes(48)).decode(),
            "ICE_TRANSPORT_POLICY": "relay",
            "TURN_PUBLIC_HOST": "127.0.0.1",
            "TURN_PORT": str(turn_port),
            "SIGNAL_ALLOWED_ORIGINS": f"https://localhost:{dep.https_port}",
            "TURN_LISTEN": f"127.0.0.1:{turn_port}",
            "TURNS_LISTEN": f"127.0.0.1:{turns_port}",
            "TURN_METRICS_LISTEN": f"127.0.0.1:{dep.metrics_port}",
            # Switching to coturn stops hermes-turn, which drains for this long (default 25 s).
            "TURN_DRAIN_SECS": "5",
            "TURN_MIN_PORT": "50000",
            "TURN_MAX_PORT": "50199",
            "HTTP_PUBLISH": f"127.0.0.1:{dep.http_port}",
            "HTTPS_PUBLISH": f"127.0.0.1:{dep.https_port}",
            "RUNTIME_BASE_IMAGE": BASE_IMAGE,
            "BINARIES_IMAGE": bins,
            "CADDY_BASE_IMAGE": stand["caddy"],
            "REDIS_IMAGE": stand["redis"],
            "COTURN_IMAGE": stand["coturn"],
        }
        dep.write_override([])
        with Step("podman-compose build (our Dockerfile's targets)"):
            dep.compose("build", timeout=1200)
            # Drop the previous run's images that the new ones replaced (dangling, of this test only:
            # the Hermes stages carry the OCI source label, the caddy target the stand-in's label).
            for label in ("org.opencontainers.image.source", "hermes.deploy-test"):
                podman("image", "prune", "-f", "--filter", f"label={label}", check_rc=False)

        with Step("up -d, all healthy"):
            # The relays bind the compose network's gateway address, which exists once the
            # network does: start Redis (creating the network) first, then everything.
            dep.start_ticker()
            dep.compose("up", "-d", "redis")
            net = json.loads(podman("network", "inspect", f"{dep.project}_backend", quiet=True).stdout)[0]
            sub = net["subnets"][0]
            dep.subnet, dep.gateway = sub["subnet"], sub["gateway"]
            dep.env["TURN_RELAY_IP"] = dep.gateway
            dep.env["TURN_ALLOWED_PEER_IPS"] = dep.subnet
            lo, hi = subnet_range(dep.subnet)
            # coturn-compat/turnserver.conf denies every private range; this admits the test's
            # network only, and keeps coturn on loopback with its relays on the network's gateway.
            dep.write_override([f"--listening-port={turn_port}", f"--tls-listening-port={turns_port}",
                                "--listening-ip=127.0.0.1", f"--relay-ip={dep.gateway}",
                                f"--allowed-peer-ip={lo}-{hi}"])
            dep.compose("up", "-d")
            dep.wait_healthy({"redis": 1, "api": 2, "signal": 2, "logger": 1, "turn-relay": 1, "caddy": 1})
            wait_for("hermes-turn answers STUN on 127.0.0.1", lambda: stun_binding(turn_port))
            check_https(dep)

        with Step("call through hermes-turn (policy relay)"):
            before = turn_metrics(dep)
            done = browser_call(dep, "turn-relay", "media,security,chat,hangup")
            after = turn_metrics(dep)
            check(after["hermes_turn_allocations_total"] > before["hermes_turn_allocations_total"]
                  and after["hermes_turn_bytes_to_peer_total"] > before["hermes_turn_bytes_to_peer_total"] + 100_000,
                  "the media went through the hermes-turn container (its metrics)", (before, after))
            check_logger(dep, done["callId"])

        with Step("hardening; the k8s probes against the running binaries"):
            check_hardening(dep)
            check_k8s_probes(dep)

        with Step("COMPOSE_PROFILES=coturn: call through coturn"):
            dep.env["COMPOSE_PROFILES"] = "coturn"
            # docker compose removes the containers of a profile no longer active with
            # `up -d --remove-orphans` (docs/deploy.md); podman-compose 1.6 keeps them, so the
            # hermes-turn container is stopped here first (SIGTERM and its drain, as compose does).
            relay = dep.by_service().get("turn-relay", [])
            podman("stop", "-t", "30", *relay, timeout=60)
            podman("rm", *relay)
            dep.compose("up", "-d", "--remove-orphans")
            dep.wait_healthy({"redis": 1, "api": 2, "signal": 2, "logger": 1, "coturn": 1, "caddy": 1})
            wait_for("coturn answers STUN on 127.0.0.1", lambda: stun_binding(turn_port))
            owners = [line for line in run(["ss", "-H", "-lunp"], quiet=True).stdout.splitlines()
                      if f"127.0.0.1:{turn_port} " in line]
            require(bool(owners) and all('"turnserver"' in line for line in owners),
                    "coturn's turnserver alone holds the TURN port (the relay of the next call)", owners)
            browser_call(dep, "coturn", "media,hangup")
            check_hardening(dep)

        with Step("API_REPLICAS=2 SIGNAL_REPLICAS=3, a signal replica killed mid-call"):
            dep.env["COMPOSE_PROFILES"] = "turn-relay"
            dep.env["SIGNAL_REPLICAS"] = "3"
            # podman-compose 1.6 cannot recreate a service with dependents in place (it removes
            # the dependents' dependencies and fails to create them again), so the services the
            # new replica counts change are taken down first and brought up again.
            dep.compose("down", "-t", "10", "api", "signal", "caddy")
            for name in dep.by_service().get("coturn", []):
                podman("stop", "-t", "30", name, timeout=60)
                podman("rm", name)
            dep.compose("up", "-d")
            dep.wait_healthy({"redis": 1, "api": 2, "signal": 3, "logger": 1, "turn-relay": 1, "caddy": 1})
            wait_proxied(dep)
            wait_for("hermes-turn answers STUN on 127.0.0.1", lambda: stun_binding(turn_port))
            killed: list[str] = []

            check_ws_spread(dep, 3)

            def on_request(action: str) -> str:
                if action != "kill-signal":
                    return "unsupported"
                held = signal_connections(dep)
                log(f"  signal replicas' open WebSockets: {held}")
                n, name = max(held)
                if n < 1:
                    return "none"
                podman("kill", "-s", "KILL", name)
                killed.append(name)
                return f"killed {n}"

            browser_call(dep, "scaled", "media,kill-signal,hangup", on_request)
            check(len(killed) == 1, f"killed {killed}")

        with Step("down -v"):
            dep.ticker_stop.set()
            dep.compose("down", "-v", "--remove-orphans", "-t", "10", timeout=300)
            dep.down = True
            left = dep.containers(all_states=True)
            nets = [n for n in podman("network", "ls", "-q", quiet=True).stdout.split() if n.startswith(dep.project)]
            vols = [n for n in podman("volume", "ls", "-q", quiet=True).stdout.split() if n.startswith(dep.project)]
            check(not left and not nets and not vols, "down -v leaves no container, network or volume",
                  {"containers": [c["Names"] for c in left], "networks": nets, "volumes": vols})
    except Failed as e:
        failures.append(str(e).splitlines()[0])
        log(f"FAIL {e}")
    finally:
        try:
            dep.teardown()
        finally:
            shutil.rmtree(work, ignore_errors=True)
    log("\nstep timings:")
    for name, dt in timings:
        log(f"  {dt:7.1f}s  {name}")
    if failures:
        log(f"\n{len(failures)} failure(s):")
        for f in failures:
            log(f"  - {f}")
        return 1
    log("deployment test passed")
    return 0


def subnet_range(cidr: str) -> tuple[str, str]:
    import ipaddress
    net = ipaddress.ip_network(cidr)
    return str(net.network_address), str(net.broadcast_address)


if __name__ == "__main__":
    sys.exit(main())
