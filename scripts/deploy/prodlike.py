#!/usr/bin/env python3
"""A production-like Hermes on loopback, started the way docker-compose.yml starts it.

Run by scripts/checks/60-prodlike.sh with the repository's .venv Python (PyYAML, websockets).

The environment of every service is taken from docker-compose.yml itself (same variable names
and values, interpolated from a generated .env with strong random secrets and
HERMES_ENV=production); only what Docker would translate is rewritten: container listen
addresses 0.0.0.0:N become free 127.0.0.1 ports, the `redis` host becomes the local
redis-server (started with --requirepass, as compose does). Two replicas of hermes-api and two
of hermes-signal run behind Caddy (caddy/Caddyfile.local with several upstreams), plus
hermes-turn, hermes-logger and one redis-server. Then:

  1. every service answers /healthz (and api/signal /readyz);
  2. the API flow through Caddy: create -> resolve -> join for both participants; the TURN
     credentials it returns allocate a relay on hermes-turn (and a wrong password does not),
     and on the real coturn run as the compose `coturn` profile runs it; with
     deploy/compose/turns.yml the api offers turns: and hermes-turn allocates over TLS;
  3. signaling through Caddy: two WebSocket clients join, offer/answer/ICE are relayed;
  4. signaling across replicas: one client on each signal replica (direct), offer/answer
     relayed through Redis; then hang-up ends the call on both sides;
  5. each example secret from .env.example makes HERMES_ENV=production refuse to start;
  6. SIGTERM stops every Hermes process with exit status 0.

Only 127.0.0.1 is used. Every wait is bounded; the whole run is bounded by the caller's timeout.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
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
import time
import urllib.error
import urllib.request
from pathlib import Path

import websockets
import yaml

ROOT = Path(__file__).resolve().parents[2]
# PRODLIKE_PROFILE=release runs the release binaries (what the images ship); default debug.
BIN = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / os.environ.get("PRODLIKE_PROFILE", "debug")
SERVER_NAME = "hermes.test"
ORIGIN = f"https://{SERVER_NAME}"
WAIT = 20.0  # seconds any single service gets to come up / any message gets to arrive

failures: list[str] = []


def check(cond: bool, what: str) -> None:
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


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
    raise RuntimeError("no free port")


# ---------------------------------------------------------------------------------------------
# docker-compose.yml environment, interpolated like compose does.

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])((?:[^{}]|\{[^{}]*\})*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    def repl(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        val = env.get(name)
        if op in (":-", "-"):
            unset = val is None or (op == ":-" and val == "")
            return interpolate(arg, env) if unset else val
        if op in (":?", "?"):
            if val is None or (op == ":?" and val == ""):
                raise ValueError(f"compose requires {name}: {arg}")
            return val
        return val or ""

    prev = None
    while prev != value:
        prev, value = value, _VAR.sub(repl, value)
    return value


def compose_environment(service: str, dotenv: dict[str, str], *extra_files: str) -> dict[str, str]:
    """A service's environment from docker-compose.yml, merged with further -f files in order."""
    env_list: list[str] = []
    for f in ("docker-compose.yml", *extra_files):
        doc = yaml.safe_load((ROOT / f).read_text())
        env_list += (doc["services"].get(service) or {}).get("environment") or []
    out: dict[str, str] = {}
    for item in env_list:
        name, sep, value = str(item).partition("=")
        if sep:
            out[name] = interpolate(value, dotenv)
        elif name in dotenv:  # `- NAME` passes the value through only when it is set
            out[name] = dotenv[name]
    return out


def example_secrets() -> dict[str, str]:
    """JWT_SECRET / TURN_SECRET placeholders as .env.example ships them."""
    found = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        m = re.match(r"^(JWT_SECRET|TURN_SECRET)=(.+)$", line)
        if m:
            found[m.group(1)] = m.group(2)
    return found


# ---------------------------------------------------------------------------------------------
# Processes


class Stack:
    def __init__(self, work: Path):
        self.work = work
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = self.work / f"{name}.log"
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.work)}
        proc = subprocess.Popen(
            argv,
            env={**base, **env},
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.append((name, proc, log))
        return proc

    def log(self, name: str) -> str:
        for n, _, log in self.procs:
            if n == name:
                return log.read_text(errors="replace")
        return ""

    def dump(self, name: str, lines: int = 25) -> None:
        text = self.log(name).splitlines()[-lines:]
        print(f"---- last lines of {name} ----")
        for line in text:
            print("   ", line)

    def exited(self) -> list[tuple[str, int]]:
        """Processes that are no longer running, with their exit status."""
        return [(n, p.returncode) for n, p, _ in self.procs if p.poll() is not None]

    def stop_all(self, timeout: float = 15.0) -> dict[str, int | None]:
        """SIGTERM everything; exit status per process, or None if it had to be killed.
        A process that had already exited before SIGTERM is reported as -1000 - status."""
        codes: dict[str, int | None] = {}
        early = {n: c for n, c in self.exited()}
        for _, proc, _ in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name, proc, _ in reversed(self.procs):
            if name in early:
                codes[name] = -1000 - early[name]
                continue
            try:
                codes[name] = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                codes[name] = None
        return codes


def wait_http(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = WAIT) -> int | None:
    """Poll until 200; gives up early when `proc` (the server) has exited."""
    deadline = time.monotonic() + timeout
    code = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return code
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                code = r.status
                if code == 200:
                    return code
        except urllib.error.HTTPError as e:
            code = e.code
        except OSError:
            pass
        time.sleep(0.1)
    return code


def http_json(method: str, url: str, body: object | None = None, headers: dict[str, str] | None = None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("content-type", "application/json")
    req.add_header("origin", ORIGIN)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode(errors="replace")


# ---------------------------------------------------------------------------------------------
# TURN: one Allocate with the REST credentials the api handed out (RFC 5766 long-term auth).

STUN_MAGIC = 0x2112A442


def _stun(msg_type: int, txid: bytes, attrs: list[tuple[int, bytes]], key: bytes | None = None) -> bytes:
    body = b"".join(struct.pack("!HH", t, len(v)) + v + b"\0" * (-len(v) % 4) for t, v in attrs)
    if key is None:
        return struct.pack("!HHI", msg_type, len(body), STUN_MAGIC) + txid + body
    # MESSAGE-INTEGRITY covers the message with the length field already counting it.
    head = struct.pack("!HHI", msg_type, len(body) + 24, STUN_MAGIC) + txid
    mac = hmac.new(key, head + body, hashlib.sha1).digest()
    return head + body + struct.pack("!HH", 0x0008, 20) + mac


def _parse_stun(data: bytes) -> tuple[int, dict[int, bytes]]:
    msg_type, length, magic = struct.unpack("!HHI", data[:8])
    if magic != STUN_MAGIC:
        raise ValueError("not a STUN message")
    attrs, pos = {}, 20
    while pos + 4 <= 20 + length:
        t, n = struct.unpack("!HH", data[pos:pos + 4])
        attrs.setdefault(t, data[pos + 4:pos + 4 + n])
        pos += 4 + n + (-n % 4)
    return msg_type, attrs


def turn_allocate(addr: str, username: str, password: str) -> tuple[bool, str]:
    """Allocate a UDP relay on the TURN server at addr (host:port, UDP), then free it."""
    host, port = addr.rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(3)
    try:
        transport = [(0x0019, bytes([17, 0, 0, 0]))]  # REQUESTED-TRANSPORT: UDP
        sock.sendto(_stun(0x0003, secrets.token_bytes(12), transport), (host, int(port)))
        mtype, attrs = _parse_stun(sock.recv(2048))
        if mtype != 0x0113 or 0x0014 not in attrs or 0x0015 not in attrs:
            return False, f"first Allocate: expected 401 with REALM and NONCE, got type {mtype:#06x}"
        realm, nonce = attrs[0x0014], attrs[0x0015]
        key = hashlib.md5(f"{username}:{realm.decode()}:{password}".encode()).digest()
        auth = [(0x0006, username.encode()), (0x0014, realm), (0x0015, nonce)]
        sock.sendto(_stun(0x0003, secrets.token_bytes(12), transport + auth, key), (host, int(port)))
        mtype, attrs = _parse_stun(sock.recv(2048))
        if mtype != 0x0103:
            code = attrs.get(0x0009, b"\0\0\0\0")
            return False, f"authenticated Allocate refused: {code[2] * 100 + code[3]} {code[4:].decode(errors='replace')}"
        if 0x0016 not in attrs:
            return False, "Allocate success without XOR-RELAYED-ADDRESS"
        xport = struct.unpack("!H", attrs[0x0016][2:4])[0] ^ (STUN_MAGIC >> 16)
        # Free the allocation again (Refresh with LIFETIME 0).
        sock.sendto(_stun(0x0004, secrets.token_bytes(12), [(0x000D, b"\0\0\0\0")] + auth, key),
                    (host, int(port)))
        return True, f"relay port {xport}, realm {realm.decode()}"
    except (OSError, ValueError, struct.error) as e:
        return False, f"{type(e).__name__}: {e}"
    finally:
        sock.close()


def turn_allocate_tls(addr: str, username: str, password: str) -> tuple[bool, str]:
    """Like turn_allocate, over TLS (TURNS), not verifying the (self-signed) certificate."""
    import ssl

    host, port = addr.rsplit(":", 1)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    def roundtrip(tls: ssl.SSLSocket, msg: bytes) -> tuple[int, dict[int, bytes]]:
        tls.sendall(msg)
        head = b""
        while len(head) < 20:
            chunk = tls.recv(20 - len(head))
            if not chunk:
                raise ValueError("connection closed")
            head += chunk
        length = struct.unpack("!H", head[2:4])[0]
        body = b""
        while len(body) < length:
            chunk = tls.recv(length - len(body))
            if not chunk:
                raise ValueError("connection closed")
            body += chunk
        return _parse_stun(head + body)

    try:
        with socket.create_connection((host, int(port)), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname=SERVER_NAME) as tls:
            transport = [(0x0019, bytes([17, 0, 0, 0]))]
            mtype, attrs = roundtrip(tls, _stun(0x0003, secrets.token_bytes(12), transport))
            if mtype != 0x0113 or 0x0014 not in attrs or 0x0015 not in attrs:
                return False, f"first Allocate: expected 401 with REALM and NONCE, got type {mtype:#06x}"
            realm, nonce = attrs[0x0014], attrs[0x0015]
            key = hashlib.md5(f"{username}:{realm.decode()}:{password}".encode()).digest()
            auth = [(0x0006, username.encode()), (0x0014, realm), (0x0015, nonce)]
            mtype, attrs = roundtrip(tls, _stun(0x0003, secrets.token_bytes(12), transport + auth, key))
            if mtype != 0x0103 or 0x0016 not in attrs:
                return False, f"authenticated Allocate over TLS refused (type {mtype:#06x})"
            return True, f"TLS {tls.version()}, relay allocated"
    except (OSError, ValueError, struct.error, ssl.SSLError) as e:
        return False, f"{type(e).__name__}: {e}"


# ---------------------------------------------------------------------------------------------
# Signaling


class Client:
    def __init__(self, name: str, ws):
        self.name = name
        self.ws = ws

    @classmethod
    async def connect(cls, name: str, url: str) -> "Client":
        ws = await asyncio.wait_for(
            websockets.connect(url, origin=ORIGIN, open_timeout=WAIT, max_size=2**20), WAIT
        )
        return cls(name, ws)

    async def send(self, msg: dict) -> None:
        await self.ws.send(json.dumps(msg))

    async def expect(self, wanted: str, timeout: float = WAIT) -> dict:
        """Next message of type `wanted`, skipping others (peer presence, pongs)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no {wanted!r} within {timeout}s")
            raw = await asyncio.wait_for(self.ws.recv(), left)
            msg = json.loads(raw)
            if msg.get("type") == wanted:
                return msg
            if msg.get("type") == "error":
                raise RuntimeError(f"{self.name}: server error while waiting for {wanted}: {msg}")

    async def close(self) -> None:
        await self.ws.close()


async def signaling_exchange(label: str, url_a: str, url_b: str, token_a: str, token_b: str) -> None:
    a = await Client.connect(f"{label}/A", url_a)
    await a.send({"type": "join", "token": token_a})
    ja = await a.expect("joined")
    check(ja.get("role") == "offerer", f"{label}: A joined as offerer")
    b = await Client.connect(f"{label}/B", url_b)
    await b.send({"type": "join", "token": token_b})
    jb = await b.expect("joined")
    check(jb.get("role") == "answerer", f"{label}: B joined as answerer")
    check(
        any(p.get("participantId") == ja["participantId"] for p in jb.get("peers", [])),
        f"{label}: B's joined lists A as a peer",
    )
    pj = await a.expect("peer-joined")
    check(pj.get("participantId") == jb["participantId"], f"{label}: A told that B joined")

    sdp_offer = f"v=0\r\no=- {secrets.randbits(32)} 1 IN IP4 127.0.0.1\r\ns=-\r\n"
    await a.send({"type": "offer", "sdp": sdp_offer})
    offer = await b.expect("offer")
    check(offer.get("sdp") == sdp_offer and offer.get("from") == ja["participantId"],
          f"{label}: offer relayed A -> B intact, from A")
    await b.send({"type": "ack", "seq": offer["seq"]})
    sdp_answer = "v=0\r\no=- 2 1 IN IP4 127.0.0.1\r\ns=-\r\n"
    await b.send({"type": "answer", "sdp": sdp_answer})
    answer = await a.expect("answer")
    check(answer.get("sdp") == sdp_answer and answer.get("from") == jb["participantId"],
          f"{label}: answer relayed B -> A intact, from B")
    cand = {"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host", "sdpMid": "0", "sdpMLineIndex": 0}
    await a.send({"type": "ice-candidate", "candidate": cand})
    ice = await b.expect("ice-candidate")
    check(ice.get("candidate", {}).get("candidate") == cand["candidate"], f"{label}: ICE candidate relayed")
    check(offer["seq"] < ice["seq"], f"{label}: relayed messages carry increasing seq")

    await a.send({"type": "hangup"})
    ended_b = await b.expect("call-ended")
    check(bool(ended_b), f"{label}: hang-up ends the call for B")
    await a.close()
    await b.close()


# ---------------------------------------------------------------------------------------------


def turns_check(stack: Stack, work: Path, dotenv: dict[str, str], localize) -> None:
    """`-f deploy/compose/turns.yml`: the api offers turns: and hermes-turn allocates over TLS
    with the certificate files the overlay mounts (a self-signed one here)."""
    cert, key = work / "cert.pem", work / "key.pem"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                           "-subj", f"/CN={SERVER_NAME}", "-keyout", str(key), "-out", str(cert)],
                          capture_output=True, timeout=60)
    if made.returncode != 0:
        check(False, f"turns: could not make a test certificate: {made.stderr.decode(errors='replace')}")
        return
    # The overlay mounts TLS_HOST_DIR at the same path, so the host paths are the container's.
    tls_env = {**dotenv, "SSL_CERT_HOST_PATH": str(cert), "SSL_KEY_HOST_PATH": str(key), "TLS_HOST_DIR": str(work)}
    turn_env = localize(compose_environment("turn-relay", tls_env, "deploy/compose/turns.yml"))
    for k in ("TURN_LISTEN", "TURNS_LISTEN", "TURN_METRICS_LISTEN"):
        turn_env[k] = f"127.0.0.1:{free_port()}"
    check(turn_env.get("TURN_TLS_CERT") == str(cert) and turn_env.get("TURN_TLS_KEY") == str(key),
          "turns.yml points TURN_TLS_CERT/TURN_TLS_KEY at the host files")
    proc = stack.start("hermes-turn-tls", [str(BIN / "hermes-turn")], turn_env)
    api_env = localize(compose_environment("api", tls_env, "deploy/compose/turns.yml"))
    api_env["TRUSTED_PROXIES"] = "127.0.0.1/32"
    api_proc = stack.start("hermes-api-tls", [str(BIN / "hermes-api")], api_env)
    api = api_env["API_LISTEN"]
    if wait_http(f"http://{api}/readyz", api_proc) != 200 or \
            wait_http(f"http://{turn_env['TURN_METRICS_LISTEN']}/healthz", proc) != 200:
        check(False, "turns: api and hermes-turn with deploy/compose/turns.yml come up")
        return
    status, created = http_json("POST", f"http://{api}/api/call/create", {})
    status, joined = http_json("POST", f"http://{api}/api/join", {},
                               {"authorization": f"Bearer {created.get('token', '') if status == 201 else ''}"})
    urls = [u for srv in (joined.get("iceServers", []) if status == 200 else []) for u in srv.get("urls", [])]
    check(f"turns:{SERVER_NAME}:5349?transport=tcp" in urls, f"turns.yml: the api offers turns: on 5349 ({urls})")
    creds = next(((srv["username"], srv["credential"]) for srv in joined.get("iceServers", [])
                  if "username" in srv), None) if status == 200 else None
    if not creds:
        check(False, "turns.yml: join returned TURN credentials")
        return
    ok, detail = turn_allocate_tls(turn_env["TURNS_LISTEN"], *creds)
    check(ok, f"hermes-turn allocates over TLS with the overlay's certificate files ({detail})")


def coturn_check(stack: Stack, work: Path, dotenv: dict[str, str], creds: tuple[str, str]) -> None:
    """The compose `coturn` profile: the real coturn with coturn-compat/turnserver.conf and the
    command line docker-compose.yml gives it accepts the same api credentials."""
    conf = ROOT / "coturn-compat/turnserver.conf"
    turnserver = shutil.which("turnserver")
    if not conf.exists() or not turnserver:
        check(False, f"coturn profile: needs {conf.relative_to(ROOT)} and the coturn package")
        return
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    argv = [interpolate(str(a), dotenv) for a in compose["services"]["coturn"]["command"]]
    argv = [str(conf) if a == "/etc/coturn/turnserver.conf" else a for a in argv]
    port = free_port()
    # What the host network would give it, moved to loopback and a free port for this test.
    local = [f"--listening-port={port}", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1",
             "--no-cli", "--no-tls", "--no-dtls", f"--pidfile={work / 'coturn.pid'}", "--log-file=stdout",
             "--min-port=49300", "--max-port=49400"]
    stack.start("coturn", [turnserver, *argv, *local], {})
    deadline = time.monotonic() + WAIT
    ok, detail = False, "not started"
    while time.monotonic() < deadline and not ok:
        ok, detail = turn_allocate(f"127.0.0.1:{port}", *creds)
        if not ok:
            time.sleep(0.3)
    check(ok, f"coturn (compose profile, coturn-compat/turnserver.conf) accepts the api's TURN credentials ({detail})")


def main() -> int:
    for name in ("hermes-api", "hermes-signal", "hermes-turn", "hermes-logger"):
        if not (BIN / name).exists():
            print(f"FAIL {BIN / name} missing; build first")
            return 1
    redis_server = shutil.which("redis-server")
    caddy = shutil.which("caddy")
    if not redis_server or not caddy:
        print("FAIL redis-server and caddy are needed (scripts/apt-packages.txt)")
        return 1

    work = Path(tempfile.mkdtemp(prefix="hermes-prodlike."))
    stack = Stack(work)
    try:
        return run(stack, work, redis_server, caddy)
    finally:
        codes = stack.stop_all()
        for name, code in codes.items():
            if not name.startswith("hermes-"):
                continue
            if code is not None and code <= -1000:
                check(False, f"{name} runs until SIGTERM (it had already exited, status {-1000 - code})")
            else:
                check(code == 0, f"{name} exits 0 on SIGTERM (got {code}{', killed after 15 s' if code is None else ''})")
        if failures:
            for name, _, _ in stack.procs:
                stack.dump(name)
        shutil.rmtree(work, ignore_errors=True)
        print(f"{len(failures)} failed" if failures else "prod-like run passed")


def run(stack: Stack, work: Path, redis_server: str, caddy: str) -> int:
    # The .env an operator would write: strong secrets, production.
    dotenv = {
        "HERMES_ENV": "production",
        "SERVER_NAME": SERVER_NAME,
        "JWT_SECRET": base64.b64encode(secrets.token_bytes(48)).decode(),
        "TURN_SECRET": base64.b64encode(secrets.token_bytes(48)).decode(),
        "REDIS_PASSWORD": secrets.token_hex(24),
        "RUST_LOG": "info",
        "TURN_MIN_PORT": "49152",
        "TURN_MAX_PORT": "49252",
    }
    redis_port = free_port()
    (work / "redis").mkdir()
    stack.start("redis", [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1",
                          "--requirepass", dotenv["REDIS_PASSWORD"], "--save", "", "--appendonly", "no",
                          "--dir", str(work / "redis")], {})
    dotenv["REDIS_HOST_PORT"] = str(redis_port)  # what turn-relay (host network) uses

    def localize(env: dict[str, str]) -> dict[str, str]:
        """What Docker translates: container ports and the `redis` service name."""
        out = dict(env)
        for k, v in env.items():
            if k.endswith("_LISTEN") and re.fullmatch(r"(0\.0\.0\.0|127\.0\.0\.1):\d+", v):
                out[k] = f"127.0.0.1:{free_port()}"
        if "REDIS_URL" in out:
            out["REDIS_URL"] = out["REDIS_URL"].replace("@redis:6379", f"@127.0.0.1:{redis_port}")
        return out

    apis, signals = [], []
    procs: dict[str, subprocess.Popen[bytes]] = {}
    for i in (1, 2):
        env = localize(compose_environment("api", dotenv))
        # Caddy reaches the api from 127.0.0.1 here, instead of the Docker network.
        env["TRUSTED_PROXIES"] = "127.0.0.1/32"
        procs[f"api-{i}"] = stack.start(f"hermes-api-{i}", [str(BIN / "hermes-api")], env)
        apis.append(env["API_LISTEN"])
        env = localize(compose_environment("signal", dotenv))
        procs[f"signal-{i}"] = stack.start(f"hermes-signal-{i}", [str(BIN / "hermes-signal")], env)
        signals.append(env["SIGNAL_LISTEN"])
    turn_env = localize(compose_environment("turn-relay", dotenv))
    for k in ("TURN_LISTEN", "TURNS_LISTEN"):
        turn_env[k] = f"127.0.0.1:{free_port()}"
    check(turn_env["TURN_METRICS_LISTEN"].startswith("127.0.0.1:"), "compose keeps TURN metrics on loopback")
    turn_env["TURN_METRICS_LISTEN"] = f"127.0.0.1:{free_port()}"
    procs["turn"] = stack.start("hermes-turn", [str(BIN / "hermes-turn")], turn_env)
    logger_env = localize(compose_environment("logger", dotenv))
    logger_env["LOGGER_FILE"] = str(work / "observer.log")
    procs["logger"] = stack.start("hermes-logger", [str(BIN / "hermes-logger")], logger_env)

    http_addr = f"127.0.0.1:{free_port()}"
    caddy_proc = stack.start("caddy", [caddy, "run", "--config", str(ROOT / "caddy/Caddyfile.local"), "--adapter", "caddyfile"], {
        "HERMES_HTTP_ADDR": http_addr,
        "HERMES_WEB_ROOT": str(ROOT / "web"),
        "API_UPSTREAMS": " ".join(apis),
        "SIGNAL_UPSTREAMS": " ".join(signals),
        "XDG_DATA_HOME": str(work / "caddy"),
        "XDG_CONFIG_HOME": str(work / "caddy"),
    })

    # 1. Health.
    for kind, addrs in (("api", apis), ("signal", signals)):
        for i, addr in enumerate(addrs, 1):
            p = procs[f"{kind}-{i}"]
            check(wait_http(f"http://{addr}/healthz", p) == 200, f"{kind}-{i} /healthz 200")
            check(wait_http(f"http://{addr}/readyz", p) == 200, f"{kind}-{i} /readyz 200")
    check(wait_http(f"http://{turn_env['TURN_METRICS_LISTEN']}/healthz", procs["turn"]) == 200, "turn /healthz 200")
    check(wait_http(f"http://{logger_env['LOGGER_HEALTH_LISTEN']}/healthz", procs["logger"]) == 200,
          "logger /healthz 200")
    check(wait_http(f"http://{http_addr}/", caddy_proc) == 200, "Caddy serves the web client")
    # Caddy sends traffic to an upstream only after its first active health check passed.
    check(wait_http(f"http://{http_addr}/api/openapi.json", caddy_proc) == 200,
          "Caddy routes /api/* to a healthy api upstream")
    for name, _, _ in stack.procs:
        if name.startswith("hermes-"):
            check("listening on" in stack.log(name), f"{name} logs `listening on`")
    if failures:
        return 1

    # The logger is alive (/healthz) a moment before its subscription is in place; wait for it so
    # that it sees the whole call below.
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline and "following logs:*" not in stack.log("hermes-logger"):
        time.sleep(0.1)
    check("following logs:*" in stack.log("hermes-logger"), "hermes-logger subscribed to logs:*")

    # 2. API through Caddy.
    base = f"http://{http_addr}"
    status, created = http_json("POST", f"{base}/api/call/create", {})
    check(status == 201, f"POST /api/call/create via Caddy -> 201 (got {status} {created})")
    if status != 201:
        return 1
    status, resolved = http_json("POST", f"{base}/api/call/resolve", {"code": created["code"]})
    check(status == 200 and resolved.get("callId") == created["callId"],
          f"POST /api/call/resolve via Caddy -> 200, same callId (got {status})")
    status, again = http_json("POST", f"{base}/api/call/resolve", {"code": created["code"]})
    check(status in (404, 410), f"a one-time code works once (second resolve -> {status})")
    turn_creds: list[tuple[str, str]] = []
    for who, token in (("creator", created["token"]), ("joiner", resolved.get("token", ""))):
        status, joined = http_json("POST", f"{base}/api/join", {}, {"authorization": f"Bearer {token}"})
        for server in joined.get("iceServers", []) if status == 200 else []:
            if "username" in server:
                turn_creds.append((server["username"], server["credential"]))
        check(status == 200, f"POST /api/join ({who}) via Caddy -> 200 (got {status} {joined})")
        if status == 200:
            urls = [u for s in joined.get("iceServers", []) for u in s.get("urls", [])]
            check(joined.get("signalUrl") == "/ws", f"join ({who}): signalUrl is /ws")
            check(any(u.startswith(f"turn:{SERVER_NAME}:3478") for u in urls),
                  f"join ({who}): TURN URL uses SERVER_NAME and port 3478 from compose ({urls})")
            check(not any(u.startswith("turns:") for u in urls), f"join ({who}): no turns: URL with TURN_TLS=false")
    if failures:
        return 1

    # The TURN credentials the api minted work on hermes-turn as compose configures both
    # (shared TURN_SECRET, realm defaulting to SERVER_NAME), and a wrong password does not.
    ok, detail = turn_allocate(turn_env["TURN_LISTEN"], *turn_creds[0])
    check(ok, f"hermes-turn allocates with the api's TURN credentials ({detail})")
    ok, detail = turn_allocate(turn_env["TURN_LISTEN"], turn_creds[0][0], "wrong" + turn_creds[0][1])
    check(not ok, f"hermes-turn refuses a wrong TURN password ({detail})")
    coturn_check(stack, work, dotenv, turn_creds[0])

    turns_check(stack, work, dotenv, localize)

    # 3 + 4. Signaling, through Caddy and across replicas.
    async def signaling() -> None:
        await signaling_exchange("via Caddy", f"ws://{http_addr}/ws", f"ws://{http_addr}/ws",
                                 created["token"], resolved["token"])
        _, c2 = http_json("POST", f"{base}/api/call/create", {})
        _, r2 = http_json("POST", f"{base}/api/call/resolve", {"code": c2["code"]})
        await signaling_exchange("across replicas", f"ws://{signals[0]}/ws", f"ws://{signals[1]}/ws",
                                 c2["token"], r2["token"])

    try:
        asyncio.run(asyncio.wait_for(signaling(), 90))
    except Exception as e:  # noqa: BLE001 - report any failure of the exchange as a check
        check(False, f"signaling exchange: {type(e).__name__}: {e}")

    # Origin check in production: a foreign Origin is refused.
    async def foreign_origin() -> bool:
        try:
            ws = await websockets.connect(f"ws://{signals[0]}/ws", origin="https://evil.example", open_timeout=5)
        except Exception:  # noqa: BLE001 - any refusal (HTTP 403, close) counts
            return True
        try:
            await ws.send(json.dumps({"type": "join", "token": created["token"]}))
            msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
            return msg.get("type") != "joined"
        except Exception:  # noqa: BLE001
            return True
        finally:
            await ws.close()

    check(asyncio.run(foreign_origin()), "signal refuses a WebSocket from a foreign Origin")

    # The logger saw the call: its file (the compose volume) names the call's short id.
    short = created["callId"][:8]
    log_file = Path(logger_env["LOGGER_FILE"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (log_file.exists() and short in log_file.read_text(errors="replace")):
        time.sleep(0.2)
    check(log_file.exists() and short in log_file.read_text(errors="replace"),
          f"hermes-logger wrote the call {short} to LOGGER_FILE")

    # Memory of each process after the flow (VmRSS), for docs/scaling.md.
    print("resident memory after the flow (VmRSS, MiB):")
    for name, proc, _ in stack.procs:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            kib = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))
            print(f"  {name:18} {kib / 1024:6.1f}")
        except (OSError, AttributeError):
            print(f"  {name:18}    n/a")

    # Kubernetes start order: pods start together, so a replica may come up before Redis does
    # (components/redis-dev, or a managed Redis failing over). It must become ready once Redis
    # answers, without a restart.
    late_port = free_port()
    late: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    for kind, service, var in (("api", "api", "API_LISTEN"), ("signal", "signal", "SIGNAL_LISTEN")):
        env = localize(compose_environment(service, dotenv))
        env["REDIS_URL"] = env["REDIS_URL"].replace(f"127.0.0.1:{redis_port}", f"127.0.0.1:{late_port}")
        late[kind] = (stack.start(f"hermes-{kind}-early", [str(BIN / f"hermes-{kind}")], env), env[var])
    env = localize(compose_environment("logger", dotenv))
    env["REDIS_URL"] = env["REDIS_URL"].replace(f"127.0.0.1:{redis_port}", f"127.0.0.1:{late_port}")
    env["LOGGER_FILE"] = str(work / "observer-early.log")
    stack.start("hermes-logger-early", [str(BIN / "hermes-logger")], env)
    for kind, (proc, addr) in late.items():
        check(wait_http(f"http://{addr}/healthz", proc) == 200, f"{kind} started before Redis: alive")
    time.sleep(3)
    (work / "redis-late").mkdir()
    stack.start("redis-late", [redis_server, "--port", str(late_port), "--bind", "127.0.0.1",
                               "--requirepass", dotenv["REDIS_PASSWORD"], "--save", "", "--appendonly", "no",
                               "--dir", str(work / "redis-late")], {})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "following logs:*" not in stack.log("hermes-logger-early"):
        time.sleep(0.2)
    check("following logs:*" in stack.log("hermes-logger-early"),
          "logger started before Redis: subscribed within 30 s of Redis starting")
    for kind, (proc, addr) in late.items():
        ready = wait_http(f"http://{addr}/readyz", proc, timeout=30) == 200
        check(ready, f"{kind} started before Redis: ready within 30 s of Redis starting")
        if not ready:
            print("     hint: hermes_service::redis::connect keeps fred's fail_fast = true, which never\n"
                  "     retries a failed *first* connection; redis::connect_retrying (used by hermes-api)\n"
                  "     retries it, with the same 2 s bound on every command while Redis is away.")

    # 5. Example secrets are refused in production.
    examples = example_secrets()
    check(set(examples) == {"JWT_SECRET", "TURN_SECRET"}, ".env.example ships JWT_SECRET and TURN_SECRET placeholders")
    cases = [
        ("hermes-api", "api", "JWT_SECRET"),
        ("hermes-api", "api", "TURN_SECRET"),
        ("hermes-signal", "signal", "JWT_SECRET"),
        ("hermes-turn", "turn-relay", "TURN_SECRET"),
    ]
    for binary, service, var in cases:
        if var not in examples:
            continue
        env = localize(compose_environment(service, dotenv))
        env[var] = examples[var]
        try:
            out = subprocess.run([str(BIN / binary)], env={"PATH": "/usr/bin:/bin", **env},
                                 capture_output=True, text=True, timeout=15)
            refused = out.returncode != 0 and var in (out.stdout + out.stderr)
            detail = f"exit {out.returncode}"
        except subprocess.TimeoutExpired:
            refused, detail = False, "still running after 15 s"
        check(refused, f"{binary} refuses the .env.example {var} in production ({detail})")

    return 1 if failures else 0


if __name__ == "__main__":
    code = main()
    sys.exit(1 if failures else code)
