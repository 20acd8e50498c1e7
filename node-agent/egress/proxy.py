"""The per-sandbox egress proxy: every TCP connection of a guest that has secrets ends here.

The sandbox's namespace redirects the guest's TCP (``REDIRECT``, nat PREROUTING on the tap)
to a socket this proxy listens on inside that namespace, so no setting in the guest can go
around it. Per connection:

1. the original destination (``SO_ORIGINAL_DST``), and a TCP connection to it made from a
   socket inside the namespace (``Connector``), so the namespace's rules and policy decide it
   as they decide the guest's own packets (docs/networking.md);
2. whoever speaks first: the server (a banner, SSH) makes it a raw stream; the guest's first
   bytes are peeked: a TLS ClientHello is intercepted (its SNI, or the address, names the
   leaf ``ca.SandboxCA`` mints, after the real server was verified for that name with the
   node's trust store); plain bytes that look like an HTTP request are HTTP;
3. HTTP/1.x requests are read one after the other (keep-alive), each decided by
   ``substitute.rewrite``: forwarded with the value substituted, or blocked (a violation:
   the connection is closed, ``report`` is called). Bodies are streamed and scanned for
   placeholders, or held (at most ``http.MAX_BODY_BUFFER``) when a value goes into them;
4. anything else (a raw stream, what follows an Upgrade) is forwarded as it is and scanned:
   a placeholder in it is a violation unless the destination may have it.

Answers flow back as they come, except that any secret value in them is masked (``Masker``:
an echoing server must not show the guest the value; requests that got a value ask for an
uncompressed answer so that the mask sees it). The secrets and their values are swapped in place
(:meth:`EgressProxy.configure`) when the operator sends new ones: rotation needs no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable, Mapping, Sequence

import structlog

from kubesandbox_api.spec import ViolationAction
from kubesandbox_node.egress import http
from kubesandbox_node.egress.ca import SandboxCA
from kubesandbox_node.egress.http import BadRequest, Stream
from kubesandbox_node.egress.substitute import (
    Connection,
    Entry,
    Head,
    Masker,
    Pins,
    Refused,
    Violation,
    body_violation,
    destination_of,
    found_in,
    host_of,
    longest,
    rewrite,
    stream_entries,
    substitute_body,
    violation,
)

_LETTERS = re.compile(rb"[A-Z]*")
"""The bytes seen so far could still become an HTTP method (read on until they cannot)."""
SO_ORIGINAL_DST = 80
MAX_CONNECTIONS = 256
CONNECT_TIMEOUT = 10.0
HANDSHAKE_TIMEOUT = 10.0
FIRST_BYTES_TIMEOUT = 300.0
MAX_HELLO = 16 * 1024 + 5
HOLD = 0.2
"""How long the end of an answer that could begin a secret value waits for the rest."""
log = structlog.get_logger(__name__)

Connector = Callable[[str, int], Awaitable[socket.socket]]
"""A TCP connection to ``(address, port)`` from inside the sandbox's namespace."""
Report = Callable[[Violation], None]


class Blocked(Exception):
    """The connection ends here: a violation (already reported) or a refusal."""


def original_destination(sock: socket.socket) -> tuple[str, int]:
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), int(port)


def server_name(record: bytes) -> str | None:
    """The SNI of a TLS ClientHello record (``None``: none, or not parseable)."""
    try:
        if record[0] != 0x16 or record[5] != 0x01:
            return None
        body = record[9:]
        at = 2 + 32
        at += 1 + body[at]
        at += 2 + int.from_bytes(body[at : at + 2], "big")
        at += 1 + body[at]
        end = at + 2 + int.from_bytes(body[at : at + 2], "big")
        at += 2
        while at + 4 <= min(end, len(body)):
            kind = int.from_bytes(body[at : at + 2], "big")
            size = int.from_bytes(body[at + 2 : at + 4], "big")
            data = body[at + 4 : at + 4 + size]
            at += 4 + size
            if kind != 0:
                continue
            if len(data) < 5 or data[2] != 0:
                return None
            length = int.from_bytes(data[3:5], "big")
            name = data[5 : 5 + length].decode("ascii")
            if not name or len(name) > 253 or not all(c.isalnum() or c in "-._" for c in name):
                return None
            return name.lower().rstrip(".")
    except (IndexError, UnicodeDecodeError):
        return None
    return None


async def _readable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


def _peek(sock: socket.socket, size: int) -> bytes:
    try:
        return sock.recv(size, socket.MSG_PEEK)
    except BlockingIOError:
        return b""


async def client_hello(sock: socket.socket) -> bytes:
    """The guest's first TLS record (peeked, left in the socket), or its first bytes when
    they are not TLS."""
    data = _peek(sock, MAX_HELLO)
    async with asyncio.timeout(HANDSHAKE_TIMEOUT):
        while data[:1] == b"\x16" and len(data) >= 5:
            need = 5 + int.from_bytes(data[3:5], "big")
            if len(data) >= min(need, MAX_HELLO):
                break
            await asyncio.sleep(0.01)  # the rest of the record is on its way
            data = _peek(sock, MAX_HELLO)
    return data


async def _streams(
    sock: socket.socket, context: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Server-side streams on the guest's accepted socket (TLS with our leaf, or plain)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=http.READ_SIZE)
    protocol = asyncio.StreamReaderProtocol(reader)
    transport, _ = await loop.connect_accepted_socket(
        lambda: protocol,
        sock,
        ssl=context,
        ssl_handshake_timeout=HANDSHAKE_TIMEOUT if context else None,
    )
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


class Scanner:
    """Finds placeholders in a stream read piece by piece (one may straddle two pieces)."""

    def __init__(self, entries: Sequence[Entry]) -> None:
        self.entries = entries
        self.keep = max(longest(entries) - 1, 0)
        self.tail = b""

    def found(self, piece: bytes) -> list[Entry]:
        window = self.tail + piece
        self.tail = window[-self.keep :] if self.keep else b""
        return found_in(window, self.entries)


class EgressProxy:
    """One sandbox's proxy; :meth:`serve` on a listening socket made in its namespace."""

    def __init__(
        self,
        name: str,
        *,
        ca: SandboxCA,
        upstream: ssl.SSLContext,
        pins: Pins,
        connect: Connector,
        report: Report,
        destination: Callable[[socket.socket], tuple[str, int]] = original_destination,
    ) -> None:
        self.name = name
        self.destination = destination
        self.ca = ca
        self.upstream = upstream
        self.pins = pins
        self.connect = connect
        self.report = report
        self.entries: tuple[Entry, ...] = ()
        self.values: Mapping[str, bytes] = {}
        self.log = log.bind(sandbox=name)
        self._server: asyncio.Server | None = None
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def configure(self, entries: Sequence[Entry], values: Mapping[str, bytes]) -> None:
        """New secrets or values (a rotation): the next request uses them."""
        self.entries = tuple(entries)
        self.values = dict(values)

    # --- serving ---------------------------------------------------------------------------

    async def serve(self, listener: socket.socket) -> None:
        listener.setblocking(False)
        self._listener = listener
        self._accepting = asyncio.create_task(self._accept(listener), name=f"egress-{self.name}")

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(listener)
            if len(self._tasks) >= MAX_CONNECTIONS:
                self.log.warning("egress.too_many_connections", limit=MAX_CONNECTIONS)
                sock.close()
                continue
            task = asyncio.create_task(self._connection(sock))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
        if self._listener is not None:
            self._listener.close()
        for task in self._tasks:
            task.cancel()

    # --- one connection --------------------------------------------------------------------

    async def _connection(self, sock: socket.socket) -> None:
        upstream: socket.socket | None = None
        writers: list[asyncio.StreamWriter] = []
        try:
            sock.setblocking(False)
            address, port = self.destination(sock)
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    upstream = await self.connect(address, port)
            except (OSError, TimeoutError):
                # refused or unreachable (the namespace's rules, or nobody there): the guest
                # gets a reset, as it would have without the proxy
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                raise
            first = await self._first_speaker(sock, upstream)
            sni = server_name(first) if first[:1] == b"\x16" else None
            tls = first[:1] == b"\x16"
            name = sni or address
            up_reader, up_writer = await asyncio.open_connection(
                sock=upstream,
                ssl=self.upstream if tls else None,
                server_hostname=name if tls else None,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT if tls else None,
                limit=http.READ_SIZE,
            )
            upstream = None  # the stream owns it now
            writers.append(up_writer)
            context = self.ca.server_context(name) if tls else None
            reader, writer = await _streams(sock, context)
            writers.append(writer)
            connection = Connection(address, port, tls=tls, sni=sni)
            back = asyncio.create_task(
                _pipe(up_reader, writer, Masker(lambda: self.values.values()))
            )
            try:
                await self._forward(Stream(reader), up_writer, connection, first == b"")
                if up_writer.can_write_eof():  # a half-close (nc -N): the answer still comes
                    up_writer.write_eof()
                    async with asyncio.timeout(FIRST_BYTES_TIMEOUT):
                        await back
            finally:
                back.cancel()
        except Blocked:
            pass
        except ssl.SSLError as exc:
            self.log.info("egress.tls_failed", error=str(exc)[:200])
        except (OSError, TimeoutError, asyncio.IncompleteReadError, BadRequest) as exc:
            self.log.debug("egress.connection_ended", error=str(exc)[:200])
        finally:
            if upstream is not None:
                upstream.close()
            for w in writers:
                w.close()
            if not writers:
                sock.close()

    async def _first_speaker(self, guest: socket.socket, upstream: socket.socket) -> bytes:
        """The guest's first bytes (peeked), or b"" when the server speaks first."""
        async with asyncio.timeout(FIRST_BYTES_TIMEOUT):
            waits = {
                asyncio.create_task(_readable(guest)): "guest",
                asyncio.create_task(_readable(upstream)): "upstream",
            }
            try:
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in waits:
                    task.cancel()
                # every reader is off both sockets before streams take them over
                await asyncio.gather(*waits, return_exceptions=True)
        if any(waits[t] == "guest" for t in done):
            return await client_hello(guest)
        return b""

    async def _forward(
        self,
        stream: Stream,
        up: asyncio.StreamWriter,
        connection: Connection,
        server_first: bool,
    ) -> None:
        first = b""
        while not server_first and len(first) < 17 and _LETTERS.fullmatch(first):
            piece = await stream.read()
            if not piece:
                break
            first += piece
        stream.unread(first)
        if server_first or not http.METHOD_START.match(first):
            await self._raw(stream, up, connection)
            return
        while True:
            head = await http.read_head(stream)
            if head is None:
                return
            await self._request(stream, up, connection, head)
            if http.upgrades(head):
                await self._raw(stream, up, connection)
                return

    def _violation(self, violation: Violation) -> Blocked:
        if violation.action != ViolationAction.BLOCK:
            self.log.warning(
                "egress.secret_violation",
                secrets=list(violation.envs),
                where=violation.where,
                destination=violation.destination,
                action=violation.action.value,
            )
        self.report(violation)
        return Blocked()

    def _refused(self, why: str, connection: Connection) -> Blocked:
        self.log.warning("egress.refused", reason=why, destination=connection.address)
        return Blocked()

    async def _request(
        self, stream: Stream, up: asyncio.StreamWriter, connection: Connection, head: Head
    ) -> None:
        try:
            outcome = rewrite(head, connection, self.entries, self.values, self.pins)
        except Refused as exc:
            raise self._refused(str(exc), connection) from None
        if outcome.violation is not None:
            raise self._violation(outcome.violation)
        assert outcome.head is not None
        hosts = head.values(b"host")
        host = host_of(hosts[0].decode("latin-1")) if hosts else None
        length = http.body_length(head)
        if outcome.body_entries and length != 0:
            body = await self._whole_body(stream, length)
            bad = body_violation(body, outcome.scan_entries, connection, host)
            if bad is not None:
                raise self._violation(bad)
            try:
                body = substitute_body(body, outcome.body_entries, self.values)
            except Refused as exc:
                raise self._refused(str(exc), connection) from None
            up.write(http.with_length(outcome.head, len(body)).serialize() + body)
            await up.drain()
            return
        up.write(outcome.head.serialize())
        scanner = Scanner(outcome.scan_entries)

        async def send(piece: bytes) -> None:
            found = scanner.found(piece)
            if found:
                raise self._violation(violation(found, "body", destination_of(connection, host)))
            up.write(piece)
            await up.drain()

        if length is None:
            while True:
                size = await http.read_chunk_size(stream)
                if size == 0:
                    up.write(b"0\r\n" + await http.read_trailers(stream))
                    await up.drain()
                    return
                data = await stream.readexactly(size)
                if await stream.readexactly(2) != b"\r\n":
                    raise BadRequest("chunk without its CRLF")
                up.write(f"{size:x}\r\n".encode())
                await send(data)
                up.write(b"\r\n")
        remaining = length
        while remaining > 0:
            piece = await stream.read_upto(min(remaining, http.READ_SIZE))
            if not piece:
                raise asyncio.IncompleteReadError(b"", remaining)
            remaining -= len(piece)
            await send(piece)
        await up.drain()

    async def _whole_body(self, stream: Stream, length: int | None) -> bytes:
        if length is not None:
            if length > http.MAX_BODY_BUFFER:
                raise BadRequest("a body to substitute in is larger than the proxy holds")
            return await stream.readexactly(length)
        body = b""
        while True:
            size = await http.read_chunk_size(stream)
            if size == 0:
                await http.read_trailers(stream)
                return body
            if len(body) + size > http.MAX_BODY_BUFFER:
                raise BadRequest("a body to substitute in is larger than the proxy holds")
            body += await stream.readexactly(size)
            if await stream.readexactly(2) != b"\r\n":
                raise BadRequest("chunk without its CRLF")

    async def _raw(self, stream: Stream, up: asyncio.StreamWriter, connection: Connection) -> None:
        entries = stream_entries(self.entries, connection, self.pins)
        scanner = Scanner(entries)
        while True:
            piece = await stream.read()
            if not piece:
                return
            found = scanner.found(piece)
            if found:
                where = destination_of(connection, None)
                raise self._violation(violation(found, "stream", where))
            up.write(piece)
            await up.drain()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, masker: Masker) -> None:
    """Server to guest, as it comes, secret values masked (a few bytes that could begin one
    wait for the next piece, at most ``HOLD`` seconds)."""
    with contextlib.suppress(OSError, ConnectionError):
        while True:
            try:
                async with asyncio.timeout(HOLD if masker.held else None):
                    data = await reader.read(http.READ_SIZE)
            except TimeoutError:
                writer.write(masker.flush())
                await writer.drain()
                continue
            if not data:
                writer.write(masker.flush())
                break
            out = masker.feed(data)
            if out:
                writer.write(out)
                await writer.drain()
    writer.close()
