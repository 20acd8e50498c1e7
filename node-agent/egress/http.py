"""HTTP/1.x requests as the egress proxy reads them from the guest: heads and bodies, bounded.

Strict where ambiguity would let a request mean one thing to us and another to the server
(request smuggling): one ``Host``, no ``Content-Length`` with ``Transfer-Encoding``, one
length, no obsolete line folding, ``chunked`` as the last and only coding we accept. Anything
else is :class:`BadRequest` and the connection is closed. Next: ``proxy``.
"""

from __future__ import annotations

import asyncio
import re

from kubesandbox_node.egress.substitute import Head

MAX_HEAD = 64 * 1024
MAX_HEADERS = 128
MAX_BODY_BUFFER = 1024 * 1024
"""The largest body the proxy holds to substitute a placeholder in (``substitution.body``)."""
MAX_CHUNK_LINE = 4096
READ_SIZE = 64 * 1024
_REQUEST_LINE = re.compile(rb"^([!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}) (\S{1,16384}) (HTTP/1\.[01])$")
_TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
METHOD_START = re.compile(rb"^[A-Z]{3,16} ")
"""What the first bytes of a plain HTTP request look like (anything else is a raw stream)."""


class BadRequest(Exception):
    pass


class Stream:
    """A guest stream with bytes pushed back (the proxy looks at the first bytes to tell
    HTTP from anything else) and bounded line reads."""

    def __init__(self, reader: asyncio.StreamReader, *, idle: float | None = 300.0) -> None:
        self.reader = reader
        self.pending = b""
        self.idle = idle
        """Seconds a read may wait (``None``: for ever, a raw stream's idle SSH session)."""

    def unread(self, data: bytes) -> None:
        self.pending = data + self.pending

    async def _more(self) -> bytes:
        async with asyncio.timeout(self.idle):
            return await self.reader.read(READ_SIZE)

    async def read(self) -> bytes:
        """Whatever is there next (b"" at the end)."""
        if self.pending:
            out, self.pending = self.pending, b""
            return out
        return await self._more()

    async def readuntil(self, separator: bytes, limit: int) -> bytes:
        """Up to and including ``separator``; :class:`BadRequest` beyond ``limit`` bytes,
        ``IncompleteReadError`` at the end of the stream."""
        while True:
            found = self.pending.find(separator)
            if found >= 0:
                end = found + len(separator)
                out, self.pending = self.pending[:end], self.pending[end:]
                return out
            if len(self.pending) > limit:
                raise BadRequest(f"no {separator!r} within {limit} bytes")
            chunk = await self._more()
            if not chunk:
                raise asyncio.IncompleteReadError(self.pending, None)
            self.pending += chunk

    async def readexactly(self, size: int) -> bytes:
        while len(self.pending) < size:
            chunk = await self._more()
            if not chunk:
                raise asyncio.IncompleteReadError(self.pending, size)
            self.pending += chunk
        out, self.pending = self.pending[:size], self.pending[size:]
        return out

    async def read_upto(self, size: int) -> bytes:
        """At most ``size`` bytes, at least one (b"" at the end)."""
        if not self.pending:
            self.pending = await self._more()
        out, self.pending = self.pending[:size], self.pending[size:]
        return out


async def read_head(stream: Stream) -> Head | None:
    """The next request head; ``None`` at a clean end of the connection."""
    try:
        raw = await stream.readuntil(b"\r\n\r\n", MAX_HEAD)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise BadRequest("the connection ended inside a request head") from exc
    return parse_head(raw)


def parse_head(raw: bytes) -> Head:
    lines = raw[:-4].split(b"\r\n")
    found = _REQUEST_LINE.match(lines[0])
    if found is None:
        raise BadRequest("not an HTTP/1.x request line")
    method, target, version = found.groups()
    if len(lines) - 1 > MAX_HEADERS:
        raise BadRequest(f"more than {MAX_HEADERS} headers")
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            raise BadRequest("obsolete header line folding")
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.match(name):
            raise BadRequest("malformed header line")
        headers.append((name, value.strip(b" \t")))
    head = Head(method, target, version, headers)
    if len(head.values(b"host")) > 1:
        raise BadRequest("more than one Host header")
    return head


def body_length(head: Head) -> int | None:
    """The body's length; ``None`` for a chunked body; 0 when there is none."""
    codings = [c.strip().lower() for v in head.values(b"transfer-encoding") for c in v.split(b",")]
    lengths = {v.strip() for v in head.values(b"content-length")}
    if codings:
        if lengths:
            raise BadRequest("both Content-Length and Transfer-Encoding")
        if codings != [b"chunked"]:
            raise BadRequest("only Transfer-Encoding: chunked is accepted")
        return None
    if not lengths:
        return 0
    if len(lengths) > 1:
        raise BadRequest("conflicting Content-Length headers")
    value = lengths.pop()
    if not value.isdigit() or len(value) > 18:
        raise BadRequest("malformed Content-Length")
    return int(value)


async def read_chunk_size(stream: Stream) -> int:
    line = await stream.readuntil(b"\r\n", MAX_CHUNK_LINE)
    size = line.split(b";", 1)[0].strip()
    if not size or len(size) > 15 or not re.fullmatch(rb"[0-9A-Fa-f]+", size):
        raise BadRequest("malformed chunk size")
    return int(size, 16)


async def read_trailers(stream: Stream) -> bytes:
    """The trailer section after the last chunk, with its final empty line."""
    out = b""
    while True:
        line = await stream.readuntil(b"\r\n", MAX_HEAD)
        out += line
        if len(out) > MAX_HEAD:
            raise BadRequest("trailers too long")
        if line == b"\r\n":
            return out


def with_length(head: Head, length: int) -> Head:
    """The head with a body of ``length`` bytes (``Transfer-Encoding`` gone)."""
    headers = [
        (k, v)
        for k, v in head.headers
        if k.lower() not in (b"content-length", b"transfer-encoding")
    ]
    if length or head.method not in (b"GET", b"HEAD"):
        headers.append((b"Content-Length", str(length).encode()))
    return Head(head.method, head.target, head.version, headers)


def upgrades(head: Head) -> bool:
    """After this request the connection stops being HTTP (CONNECT, Upgrade)."""
    if head.method == b"CONNECT":
        return True
    return any(b"upgrade" in v.lower() for v in head.values(b"connection"))
