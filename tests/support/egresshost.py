"""An egress test host's servers, run inside its network namespace: HTTP on 80, HTTPS on 443
(a certificate from the test CA) and a UDP/443 listener. Every request and datagram is
appended to a JSON-lines record file as it arrives, so tests can assert what the upstream saw
(tests/support/egress.py reads it). Answers are fixed (``ok <name>``) and never echo the
request, so nothing the host receives flows back into the guest; ``GET /bytes/N`` answers N
bytes (at most 256 MiB) for throughput measurements.

Run: ``python -m tests.support.egresshost ADDRESS NAME CERT KEY RECORDS``.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MAX_BODY = 64 * 1024 * 1024
MAX_BYTES = 256 * 1024 * 1024
CHUNK = 64 * 1024


class Recorder:
    """Appends one JSON object a line; a lock keeps lines whole across server threads."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("a", encoding="utf-8")
        self.lock = threading.Lock()

    def __call__(self, record: dict[str, Any]) -> None:
        record["time"] = time.time()
        line = json.dumps(record) + "\n"
        with self.lock:
            self.file.write(line)
            self.file.flush()


def _latin1(data: bytes) -> str:
    """Bytes as text one to one (byte n is code point n), so any byte survives JSON."""
    return data.decode("latin-1")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: TestServer

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return data
                if len(data) + size > MAX_BODY:
                    raise ValueError("body too large")
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(length) if length > 0 else b""

    def _handle(self) -> None:
        body = self._body()
        url = urllib.parse.urlsplit(self.path)
        self.server.record(
            {
                "kind": "http",
                "scheme": self.server.scheme,
                "port": self.server.server_address[1],
                "peer": self.client_address[0],
                "sni": getattr(self.connection, "sni", None),
                "method": self.command,
                "target": self.path,
                "path": url.path,
                "query": url.query,
                "version": self.request_version,
                "headers": [[k, _latin1(v.encode("latin-1", "replace"))] for k, v in
                            self.headers.items()],
                "body": _latin1(body),
            }
        )  # fmt: skip
        if url.path.startswith("/bytes/") and self.command == "GET":
            self._send_bytes(min(int(url.path[len("/bytes/") :] or 0), MAX_BYTES))
            return
        answer = f"ok {self.server.name}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer)

    def _send_bytes(self, count: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(count))
        self.end_headers()
        block = b"x" * CHUNK
        while count > 0:
            self.wfile.write(block[: min(count, CHUNK)])
            count -= CHUNK

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the record file is the log


class TestServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self, address: str, port: int, name: str, record: Recorder, tls: ssl.SSLContext | None
    ) -> None:
        self.name, self.record, self.tls = name, record, tls
        self.scheme = "https" if tls else "http"
        super().__init__((address, port), Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is not None:
            request.settimeout(30)
            request = self.tls.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
            try:
                request.do_handshake()
            except (OSError, ssl.SSLError) as error:
                if not getattr(request, "hello", False):
                    return  # no ClientHello came (a port probe): nothing to record
                self.record({"kind": "tls-error", "port": self.server_address[1],
                             "peer": client_address[0], "sni": getattr(request, "sni", None),
                             "error": str(error)[:300]})  # fmt: skip
                return
            request.settimeout(None)
        super().finish_request(request, client_address)


def _tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def remember(sock: Any, name: str | None, _context: ssl.SSLContext) -> None:
        sock.hello = True
        sock.sni = name  # the server name the ClientHello asked for, read by the handler

    context.sni_callback = remember
    return context


def _udp(address: str, record: Recorder) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 443))
    while True:
        data, peer = sock.recvfrom(65535)
        record({"kind": "udp", "port": 443, "peer": peer[0], "length": len(data),
                "head": data[:64].hex()})  # fmt: skip


def serve(address: str, name: str, cert: str, key: str, records: Path) -> None:
    record = Recorder(records)
    servers = [
        TestServer(address, 80, name, record, None),
        TestServer(address, 443, name, record, _tls_context(cert, key)),
    ]
    threading.Thread(target=_udp, args=(address, record), daemon=True).start()
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    servers[0].serve_forever()


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], Path(sys.argv[5]))
