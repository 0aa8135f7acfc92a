#!/usr/bin/env python3
"""Load generator of `scripts/bench/turn-idle.sh`: N TURN-over-TLS clients on loopback, each
with one UDP allocation (REST credentials: username `expiry:user`, password the base64
HMAC-SHA1 of it under the shared secret, as coturn's `use-auth-secret`), then idle.

Usage: turn_idle_clients.py HOST PORT SECRET COUNT HOLD_SECONDS
Prints `ready <allocated> <failed> <seconds>` once every client has allocated (or failed),
keeps every connection open for HOLD_SECONDS (or until stdin closes), then exits.
Only the given host is contacted; the caller passes 127.0.0.1.
"""
import asyncio
import base64
import hashlib
import hmac
import os
import ssl
import struct
import sys
import time

MAGIC = 0x2112A442
ALLOCATE = 0x0003
ALLOCATE_OK = 0x0103
ALLOCATE_ERR = 0x0113
USERNAME, MESSAGE_INTEGRITY, ERROR_CODE = 0x0006, 0x0008, 0x0009
REALM, NONCE, REQUESTED_TRANSPORT = 0x0014, 0x0015, 0x0019
# Handshakes and allocations in flight at once (bounded load on both sides).
CONCURRENCY = 200


def attr(typ, value):
    pad = (4 - len(value) % 4) % 4
    return struct.pack("!HH", typ, len(value)) + value + b"\0" * pad


def message(typ, attrs, key=None):
    body = b"".join(attrs)
    txid = os.urandom(12)
    if key is None:
        return struct.pack("!HHI", typ, len(body), MAGIC) + txid + body
    # MESSAGE-INTEGRITY covers the header with the length including itself (24 bytes).
    head = struct.pack("!HHI", typ, len(body) + 24, MAGIC) + txid
    mac = hmac.new(key, head + body, hashlib.sha1).digest()
    return head + body + attr(MESSAGE_INTEGRITY, mac)


def parse(raw):
    typ, _length = struct.unpack("!HH", raw[:4])
    attrs, i = {}, 20
    while i + 4 <= len(raw):
        t, n = struct.unpack("!HH", raw[i:i + 4])
        attrs[t] = raw[i + 4:i + 4 + n]
        i += 4 + n + (4 - n % 4) % 4
    return typ, attrs


async def read_message(reader):
    head = await reader.readexactly(20)
    n = struct.unpack("!H", head[2:4])[0]
    return head + await reader.readexactly(n)


async def client(host, port, secret, index, ctx, gate, conns):
    async with gate:
        user = f"{int(time.time()) + 3600}:idle{index}"
        password = base64.b64encode(hmac.new(secret, user.encode(), hashlib.sha1).digest())
        transport = attr(REQUESTED_TRANSPORT, bytes([17, 0, 0, 0]))
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ctx), 30)
            writer.write(message(ALLOCATE, [transport]))
            typ, attrs = parse(await asyncio.wait_for(read_message(reader), 30))
            if typ != ALLOCATE_ERR or REALM not in attrs:
                raise RuntimeError(f"no challenge: {typ:#x}")
            realm, nonce = attrs[REALM], attrs[NONCE]
            key = hashlib.md5(user.encode() + b":" + realm + b":" + password).digest()
            writer.write(message(ALLOCATE, [
                transport, attr(USERNAME, user.encode()), attr(REALM, realm),
                attr(NONCE, nonce)], key))
            typ, attrs = parse(await asyncio.wait_for(read_message(reader), 30))
            if typ != ALLOCATE_OK:
                code = attrs.get(ERROR_CODE, b"\0\0\0\0")
                raise RuntimeError(f"allocate refused: {code[2] * 100 + code[3]}")
            conns.append(writer)
            return True
        except Exception as e:  # reported as a count; the first few are printed
            if index < 3:
                print(f"client {index}: {e!r}", file=sys.stderr)
            return False


async def main():
    host, port, secret, count, hold = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(), \
        int(sys.argv[4]), float(sys.argv[5])
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the bench's own self-signed certificate
    gate = asyncio.Semaphore(CONCURRENCY)
    conns = []
    start = time.monotonic()
    results = await asyncio.gather(
        *(client(host, port, secret, i, ctx, gate, conns) for i in range(count)))
    ok = sum(results)
    print(f"ready {ok} {count - ok} {time.monotonic() - start:.1f}", flush=True)
    loop = asyncio.get_running_loop()
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)
    await asyncio.wait([stdin_closed], timeout=hold)
    for w in conns:
        w.close()
    os._exit(0)


asyncio.run(main())
