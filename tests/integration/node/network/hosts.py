"""Test hosts in network namespaces (never real external addresses) and a tiny TCP/UDP
server and client to run in them; shared by the network and VM networking tests."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

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


def start_host(name: str, address: str, kind: str, port: int, index: int) -> Host:
    ns, host_if = f"ksbt-{name}-{SUFFIX}", host_link(index)
    sh("ip", "netns", "add", ns)
    sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
    sh("ip", "link", "set", host_if, "up")
    sh("ip", "route", "add", f"{address}/32", "dev", host_if)
    sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
    sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{address}/32", "dev", "eth0")
    sh("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
    sh("ip", "netns", "exec", ns, "ip", "route", "add", "default", "dev", "eth0")
    process = subprocess.Popen(
        ["ip", "netns", "exec", ns, "python3", "-c", SERVER, kind, address, str(port)],
        stdin=subprocess.DEVNULL,
    )
    return Host(ns, address, process)


def remove_host(host: Host, index: int) -> None:
    host.process.kill()
    host.process.wait()
    sh("ip", "link", "del", host_link(index), check=False)
    sh("ip", "netns", "del", host.ns, check=False)
