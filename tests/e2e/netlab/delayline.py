#!/usr/bin/env python3
"""Delay line for the network lab (tests/e2e/src/netlab.rs): the kernel of our test machines has
no `netem`, so a site's uplink is routed through a TUN device, and this reader holds each packet
for `delay ± jitter` ms (order kept, like most real links), drops a `loss` share of them, and
writes the rest back to the kernel, which routes them on to the site's router.

Usage: delayline.py DEVICE DELAY_MS JITTER_MS LOSS   (prints `ready` once DEVICE exists)
Bounded: at most 10 000 packets held, exits by itself after 15 minutes.
"""
import collections
import fcntl
import os
import random
import select
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
MAX_HELD = 10_000
LIFETIME_S = 15 * 60


def main():
    dev, delay, jitter, loss = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", dev.encode(), IFF_TUN | IFF_NO_PI))
    os.set_blocking(fd, False)
    print("ready", flush=True)
    held = collections.deque()  # (due, packet), due never decreasing
    rng = random.Random(22)
    end = time.monotonic() + LIFETIME_S
    while time.monotonic() < end:
        now = time.monotonic()
        timeout = max(0.0, held[0][0] - now) if held else 1.0
        readable, _, _ = select.select([fd], [], [], timeout)
        if readable:
            for _ in range(256):  # one wake-up reads at most 256 packets
                try:
                    packet = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if rng.random() < loss or len(held) >= MAX_HELD:
                    continue
                due = time.monotonic() + (delay + rng.uniform(-jitter, jitter)) / 1000.0
                if held and due < held[-1][0]:
                    due = held[-1][0]
                held.append((due, packet))
        now = time.monotonic()
        while held and held[0][0] <= now:
            try:
                os.write(fd, held.popleft()[1])
            except OSError:
                pass


if __name__ == "__main__":
    main()
