"""The egress proxy end to end on loopback: a TLS server as the upstream, a client that
trusts the sandbox CA, the original destination given instead of read from a REDIRECT."""

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kubesandbox_api.spec import SandboxSecret, ViolationAction
from kubesandbox_node.egress import http
from kubesandbox_node.egress.ca import SandboxCA, upstream_context
from kubesandbox_node.egress.proxy import EgressProxy
from kubesandbox_node.egress.substitute import Entry, Violation

VALUE = b"the-real-value-42"


class Pins:
    def pinned(self, name: str, address: str) -> bool:
        return name == "api.example.com" and address == "127.0.0.1"

    def names_of(self, address: str) -> list[str]:
        return ["api.example.com"] if address == "127.0.0.1" else []


@dataclass
class Upstream:
    port: int
    received: bytearray = field(default_factory=bytearray)
    requests: int = 0


@pytest.fixture
async def upstream(tmp_path: Path) -> AsyncIterator[tuple[Upstream, str]]:
    authority = SandboxCA("upstream")
    bundle = tmp_path / "upstream-ca.pem"
    bundle.write_bytes(authority.pem)
    state = Upstream(0)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream = http.Stream(reader)
        try:
            while (head := await http.read_head(stream)) is not None:
                state.received += head.serialize()
                length = http.body_length(head)
                if length is None:
                    while size := await http.read_chunk_size(stream):
                        state.received += await stream.readexactly(size)
                        await stream.readexactly(2)
                    await http.read_trailers(stream)
                else:
                    state.received += await stream.readexactly(length)
                state.requests += 1
                if head.target == b"/echo":  # the request's X-Key header, sent back
                    echo = b"".join(head.values(b"x-key"))
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(echo))
                    writer.write(echo)
                    await writer.drain()
                    continue
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        writer.close()

    server = await asyncio.start_server(
        serve, "127.0.0.1", 0, ssl=authority.server_context("api.example.com")
    )
    state.port = server.sockets[0].getsockname()[1]
    async with server:
        yield state, str(bundle)


@dataclass
class Running:
    proxy: EgressProxy
    port: int
    violations: list[Violation]


@pytest.fixture
async def proxy(upstream: tuple[Upstream, str]) -> AsyncIterator[Running]:
    state, bundle = upstream
    violations: list[Violation] = []

    async def connect(address: str, port: int) -> socket.socket:
        sock = socket.socket()
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (address, port))
        except OSError:
            sock.close()
            raise
        return sock

    proxy = EgressProxy(
        "test",
        ca=SandboxCA("test"),
        upstream=upstream_context([bundle]),
        pins=Pins(),
        connect=connect,
        report=violations.append,
        destination=lambda sock: ("127.0.0.1", state.port),
    )
    secret = SandboxSecret.model_validate(
        {"env": "KEY", "secretKeyRef": {"name": "s", "key": "k"},
         "allowHosts": ["api.example.com"], "substitution": {"body": True}}
    )  # fmt: skip
    proxy.configure([Entry.of(secret, ViolationAction.BLOCK_AND_LOG)], {"KEY": VALUE})
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    await proxy.serve(listener)
    yield Running(proxy, listener.getsockname()[1], violations)
    proxy.close()


async def client(
    running: Running, name: str = "api.example.com"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    context = ssl.create_default_context(cadata=running.proxy.ca.pem.decode())
    return await asyncio.open_connection(
        "127.0.0.1", running.port, ssl=context, server_hostname=name
    )


async def test_keep_alive_requests_carry_the_value_in_headers_and_bodies(
    proxy: Running, upstream: tuple[Upstream, str]
) -> None:
    state, _ = upstream
    reader, writer = await client(proxy)
    writer.write(b"GET /a HTTP/1.1\r\nHost: api.example.com\r\nX-Key: $MSB_KEY\r\n\r\n")
    body = b'{"key": "$MSB_KEY"}'
    writer.write(
        b"POST /b HTTP/1.1\r\nHost: api.example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{len(body):x}\r\n".encode()
        + body
        + b"\r\n0\r\n\r\n"
    )
    await writer.drain()
    for _ in range(2):
        assert (await reader.readuntil(b"ok")).startswith(b"HTTP/1.1 200")
    writer.close()
    assert state.requests == 2
    assert bytes(state.received).count(VALUE) == 2
    assert b"$MSB_KEY" not in state.received
    assert b"Content-Length: %d" % (len(body) - len(b"$MSB_KEY") + len(VALUE)) in state.received
    assert proxy.violations == []


async def test_a_spoofed_host_is_blocked_and_reported_without_the_value(
    proxy: Running, upstream: tuple[Upstream, str]
) -> None:
    state, _ = upstream
    reader, writer = await client(proxy)
    writer.write(b"GET / HTTP/1.1\r\nHost: evil.example.net\r\nX-Key: $MSB_KEY\r\n\r\n")
    await writer.drain()
    assert await reader.read() == b""
    assert state.received == b""
    assert len(proxy.violations) == 1
    assert VALUE.decode() not in proxy.violations[0].message


async def test_a_placeholder_in_a_raw_stream_is_a_violation(
    proxy: Running, upstream: tuple[Upstream, str]
) -> None:
    reader, writer = await client(proxy)
    writer.write(b"\x00\x01binary $MSB_K")
    writer.write(b"EY and more")
    await writer.drain()
    assert await reader.read() == b""
    assert [v.where for v in proxy.violations] == ["stream"]


async def test_rotation_takes_effect_on_the_next_request(
    proxy: Running, upstream: tuple[Upstream, str]
) -> None:
    state, _ = upstream
    entries = proxy.proxy.entries
    reader, writer = await client(proxy)
    writer.write(b"GET /1 HTTP/1.1\r\nHost: api.example.com\r\nX-Key: $MSB_KEY\r\n\r\n")
    await reader.readuntil(b"ok")
    proxy.proxy.configure(entries, {"KEY": b"rotated"})
    writer.write(b"GET /2 HTTP/1.1\r\nHost: api.example.com\r\nX-Key: $MSB_KEY\r\n\r\n")
    await reader.readuntil(b"ok")
    writer.close()
    assert b"X-Key: " + VALUE in state.received
    assert b"X-Key: rotated" in state.received


async def test_an_unverifiable_upstream_is_never_intercepted(
    upstream: tuple[Upstream, str], proxy: Running
) -> None:
    proxy.proxy.upstream = ssl.create_default_context()  # the test CA is not trusted now
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await client(proxy)  # the proxy hangs up before its own handshake
    assert upstream[0].received == b""


async def test_an_answer_echoing_the_value_shows_the_guest_only_a_mask(
    proxy: Running, upstream: tuple[Upstream, str]
) -> None:
    reader, writer = await client(proxy)
    writer.write(b"GET /echo HTTP/1.1\r\nHost: api.example.com\r\nX-Key: $MSB_KEY\r\n\r\n")
    await writer.drain()
    answer = await reader.readuntil(b"\r\n\r\n")
    body = await reader.readexactly(len(VALUE))
    writer.close()
    assert b"Content-Length: %d" % len(VALUE) in answer
    assert body == b"*" * len(VALUE)
    assert VALUE in upstream[0].received


async def test_a_refused_destination_resets_the_guest_connection(proxy: Running) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    proxy.proxy.destination = lambda sock: ("127.0.0.1", port)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    with pytest.raises(ConnectionResetError):
        await reader.read(1)
    writer.close()
