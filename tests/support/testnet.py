"""Test hosts in network namespaces (never real external addresses) and a tiny TCP/UDP
server and client to run in them, a DNS server for a test zone (tests/support/dnszone.py) and
a DNS client; shared by the network, VM networking and egress tests (tests/support/egress.py
runs HTTP(S) test hosts in namespaces made by :func:`host_namespace`)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

SUFFIX = f"{os.getpid() % 100000}"
SERVER = """
import socket, sys
kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if kind == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((host, port))
    while True:
        data, peer = s.recvfrom(512); s.sendto(b"dns:" + data, peer)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port)); s.listen(16)
while True:
    c, _ = s.accept(); c.sendall(b"hello from " + host.encode()); c.close()
"""
CLIENT = """
import socket, sys
kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    if kind == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
        s.sendto(b"query", (host, port)); print(s.recvfrom(512)[0].decode())
    else:
        s = socket.create_connection((host, port), timeout=2); print(s.recv(100).decode())
except OSError as e:
    print("FAILED", e)
"""


LOOKUP = """
import socket, struct, sys
server, name, transport = sys.argv[1], sys.argv[2], sys.argv[3]
q = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\\0\\0\\1\\0\\1"
try:
    if transport == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
        s.sendto(q, (server, 53)); a = s.recvfrom(4096)[0]
    else:
        s = socket.create_connection((server, 53), timeout=3)
        s.sendall(struct.pack("!H", len(q)) + q)
        size = struct.unpack("!H", s.recv(2))[0]; a = b""
        while len(a) < size:
            a += s.recv(size - len(a))
    count = struct.unpack_from("!H", a, 6)[0]
    found = [socket.inet_ntoa(a[-4 - 16 * i:len(a) - 16 * i]) for i in range(count)]
    print("rcode=%d %s" % (a[3] & 15, ",".join(sorted(found))))
except OSError as e:
    print("FAILED", e)
"""
"""Prints ``rcode=N a,b`` for an A query (answers laid out as tests/support/dnszone.py does)."""

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


class LoopThread:
    """An event loop in a thread of its own, for sync tests of async code whose servers (the
    sandbox resolver) must keep running between calls."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def sh(*argv: str, check: bool = True) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise RuntimeError(f"{argv}: {result.stderr}")
    return result.stdout


def host_link(index: int) -> str:
    return f"ksbt{index}-{SUFFIX}"[:15]


@dataclass
class Host:
    ns: str
    address: str
    process: subprocess.Popen[bytes]


def host_namespace(name: str, address: str, index: int) -> str:
    """A namespace ``ksbt-<name>-<pid>`` holding ``address``, routed from the host over a veth
    (``host_link(index)``); raises when the host already routes ``address`` (another test's)."""
    ns, host_if = f"ksbt-{name}-{SUFFIX}", host_link(index)
    sh("ip", "netns", "add", ns)
    sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
    sh("ip", "link", "set", host_if, "up")
    try:
        sh("ip", "route", "add", f"{address}/32", "dev", host_if)
    except RuntimeError:
        remove_namespace(ns, index)
        raise
    sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
    sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{address}/32", "dev", "eth0")
    sh("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
    sh("ip", "netns", "exec", ns, "ip", "route", "add", "default", "dev", "eth0")
    return ns


def remove_namespace(ns: str, index: int) -> None:
    sh("ip", "link", "del", host_link(index), check=False)
    sh("ip", "netns", "del", ns, check=False)


def start_host(name: str, address: str, kind: str, port: int, index: int) -> Host:
    ns = host_namespace(name, address, index)
    process = subprocess.Popen(
        ["ip", "netns", "exec", ns, "python3", "-c", SERVER, kind, address, str(port)],
        stdin=subprocess.DEVNULL,
    )
    return Host(ns, address, process)


def start_dns_host(
    name: str, address: str, zone: dict[str, list[str]], index: int, ttl: int = 300
) -> Host:
    """A DNS server answering ``zone`` (name → A addresses) on ``address:53``, UDP and TCP."""
    ns = host_namespace(name, address, index)
    argv = [sys.executable, "-m", "tests.support.dnszone", address, "53", str(ttl),
            json.dumps(zone)]  # fmt: skip
    process = subprocess.Popen(
        ["ip", "netns", "exec", ns, *argv], stdin=subprocess.DEVNULL, cwd=ROOT
    )
    for _ in range(100):
        probe = sh("ip", "netns", "exec", ns, "python3", "-c", LOOKUP, address, "x", "tcp")
        if not probe.startswith("FAILED"):
            break
        threading.Event().wait(0.05)
    return Host(ns, address, process)


def remove_host(host: Host, index: int) -> None:
    host.process.kill()
    host.process.wait()
    remove_namespace(host.ns, index)
