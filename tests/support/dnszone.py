"""A tiny authoritative DNS server for tests: answers A queries for a fixed zone (name →
addresses), NXDOMAIN for anything else, over UDP and TCP. Written independently of the node
agent's codec so the resolver is tested against a server it did not build.

Run in a test host's namespace: ``python -m tests.support.dnszone ADDRESS PORT TTL JSON_ZONE``.
"""

from __future__ import annotations

import json
import socket
import socketserver
import struct
import sys
import threading


def _name(data: bytes, offset: int) -> tuple[str, int]:
    labels = []
    while data[offset]:
        length = data[offset]
        labels.append(data[offset + 1 : offset + 1 + length].decode())
        offset += 1 + length
    return ".".join(labels).lower(), offset + 1


def build_answer(query: bytes, zone: dict[str, list[str]], ttl: int) -> bytes:
    ident = query[:2]
    name, end = _name(query, 12)
    qtype = struct.unpack_from("!H", query, end)[0]
    question = query[12 : end + 4]
    addresses = zone.get(name)
    if addresses is None:
        return ident + struct.pack("!HHHHH", 0x8183, 1, 0, 0, 0) + question
    records = b""
    if qtype == 1:
        for address in addresses:
            records += struct.pack("!HHHIH", 0xC00C, 1, 1, ttl, 4) + socket.inet_aton(address)
    count = len(addresses) if qtype == 1 else 0
    return ident + struct.pack("!HHHHH", 0x8580, 1, count, 0, 0) + question + records


def serve(address: str, port: int, ttl: int, zone: dict[str, list[str]]) -> None:
    class Udp(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            data, sock = self.request
            sock.sendto(build_answer(data, zone, ttl), self.client_address)

    class Tcp(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            size = struct.unpack("!H", self.rfile.read(2))[0]
            answer = build_answer(self.rfile.read(size), zone, ttl)
            self.wfile.write(struct.pack("!H", len(answer)) + answer)

    socketserver.TCPServer.allow_reuse_address = True
    udp = socketserver.ThreadingUDPServer((address, port), Udp)  # bound before TCP answers
    tcp = socketserver.ThreadingTCPServer((address, port), Tcp)
    threading.Thread(target=tcp.serve_forever, daemon=True).start()
    udp.serve_forever()


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4]))
