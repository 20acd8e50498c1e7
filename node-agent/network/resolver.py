"""The per-sandbox DNS resolver: every DNS query of the guest ends here (the namespace
redirects port 53 to any address to it), is forwarded to the node's resolvers, and the A
records of the answer are **pinned** to the name the guest asked for. Domain rules
(``spec.network.rules[i].destination.domain|domainSuffix``) match the pinned addresses of
their names: the address set of each rule is written into the sandbox's namespace (a chain
per rule, ``rules.chain_name``) **before** the answer goes back to the guest, so the guest
can never connect to an address the rules have not seen yet.

Pins are bounded by time and count: each lasts the record's TTL, at least ``MIN_PIN`` (a
guest connects right after resolving) and at most ``MAX_PIN`` (answers are capped to it, so
the guest does not cache an address longer than it stays pinned); at most ``MAX_NAMES``
names are remembered (the oldest goes first), and a rule's chain holds at most
``MAX_ADDRESSES_PER_RULE`` addresses (those pinned longest). The name table outlives rule
changes: a rule added to a running sandbox is filled at once from what the guest already
resolved.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import cast

import structlog

from kubesandbox_api.spec import NetworkRule
from kubesandbox_node.network import dns

MIN_PIN = 30
MAX_PIN = 3600
MAX_NAMES = 4096
MAX_ADDRESSES_PER_NAME = 32
MAX_ADDRESSES_PER_RULE = 1024
UPSTREAM_TIMEOUT = 2.0
MAX_TCP_CLIENTS = 64
MAX_PENDING = 256
SWEEP_INTERVAL = 5.0
log = structlog.get_logger(__name__)

Pins = dict[int, list[str]]
"""Rule index → the addresses pinned for its name(s), sorted."""


def matches(rule: NetworkRule, name: str) -> bool:
    destination = rule.destination
    if destination.domain is not None:
        return name == destination.domain
    suffix = destination.domain_suffix
    return suffix is not None and (name == suffix or name.endswith("." + suffix))


class PinTable:
    """Name → address → expiry (monotonic seconds), bounded."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.names: OrderedDict[str, dict[str, float]] = OrderedDict()

    def add(self, name: str, records: Sequence[tuple[str, int]]) -> None:
        now = self.clock()
        pinned = self.names.pop(name, {})
        for address, ttl in records:
            expiry = now + min(max(ttl, MIN_PIN), MAX_PIN)
            pinned[address] = max(pinned.get(address, 0.0), expiry)
        while len(pinned) > MAX_ADDRESSES_PER_NAME:
            del pinned[min(pinned, key=lambda a: pinned[a])]
        self.names[name] = pinned
        while len(self.names) > MAX_NAMES:
            self.names.popitem(last=False)

    def expire(self) -> None:
        now = self.clock()
        for name in list(self.names):
            alive = {a: t for a, t in self.names[name].items() if t > now}
            if alive:
                self.names[name] = alive
            else:
                del self.names[name]

    def pinned(self, name: str, address: str) -> bool:
        """Whether ``address`` was returned for ``name`` and its pin is alive (the egress
        proxy's check before a secret goes to that address)."""
        return self.names.get(name, {}).get(address, 0.0) > self.clock()

    def names_of(self, address: str) -> list[str]:
        """The names whose live pins include ``address``."""
        now = self.clock()
        return [n for n, pins in self.names.items() if pins.get(address, 0.0) > now]

    def pins(self, rules: Sequence[NetworkRule]) -> Pins:
        """The address set of every domain rule (CIDR rules have none)."""
        out: Pins = {}
        for index, rule in enumerate(rules):
            if rule.destination.cidr is not None:
                continue
            found: dict[str, float] = {}
            for name, addresses in self.names.items():
                if matches(rule, name):
                    for address, expiry in addresses.items():
                        found[address] = max(found.get(address, 0.0), expiry)
            if len(found) > MAX_ADDRESSES_PER_RULE:  # the ones pinned longest stay
                kept = sorted(found, key=lambda a: found[a], reverse=True)
                found = {a: found[a] for a in kept[:MAX_ADDRESSES_PER_RULE]}
            out[index] = sorted(found)
        return out


Apply = Callable[[Sequence[NetworkRule], Pins], Awaitable[bool]]
"""Writes the changed chains of these rules into the sandbox's namespace; False when the
rules were replaced meanwhile (the replacement wrote every chain from the table itself)."""


class Resolver:
    """One sandbox's resolver. ``apply`` receives only the rules whose address set changed."""

    def __init__(
        self,
        upstreams: Sequence[tuple[str, int]],
        rules: Sequence[NetworkRule],
        apply: Apply,
        *,
        clock: Callable[[], float] = time.monotonic,
        name: str = "",
    ) -> None:
        self.upstreams = list(upstreams)
        self.rules = list(rules)
        self.apply = apply
        self.table = PinTable(clock)
        self.written: Pins = {}
        self.log = log.bind(sandbox=name)
        self._lock = asyncio.Lock()
        self._closers: list[Callable[[], None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._tcp_clients = 0

    # --- rules -----------------------------------------------------------------------------

    def set_rules(self, rules: Sequence[NetworkRule]) -> Pins:
        """New rules (a live change); the address sets they start with, which the caller
        writes with the rest of the namespace's rules."""
        self.rules = list(rules)
        self.written = self.table.pins(self.rules)
        return self.written

    async def _sync(self) -> None:
        async with self._lock:
            self.table.expire()
            pins = self.table.pins(self.rules)
            changed = {i: a for i, a in pins.items() if self.written.get(i) != a}
            if changed and await self.apply(self.rules, changed):
                self.written.update(changed)

    # --- answering -------------------------------------------------------------------------

    async def answer(self, query: bytes, *, tcp: bool = False) -> bytes | None:
        """The answer to one guest query (None: drop it)."""
        try:
            dns.question(query)
        except dns.DnsError:
            return None
        response = await self._forward(query, tcp=tcp)
        if response is None:
            return dns.error_answer(query)
        try:
            asked, records = dns.answer_records(response)
        except dns.DnsError:
            return dns.error_answer(query)
        if records:
            self.table.add(asked.name, [(r.address, r.ttl) for r in records])
            try:
                await self._sync()
            except Exception as exc:  # a pin that cannot be written is not answered
                self.log.warning("resolver.pin_failed", name=asked.name, error=str(exc))
                return dns.error_answer(query)
            response = dns.cap_ttls(response, records, MAX_PIN)
        return response

    async def _forward(self, query: bytes, *, tcp: bool) -> bytes | None:
        for host, port in self.upstreams:
            with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError):
                async with asyncio.timeout(UPSTREAM_TIMEOUT):
                    if tcp:
                        return await _tcp_exchange(host, port, query)
                    return await _udp_exchange(host, port, query)
        return None

    # --- serving ---------------------------------------------------------------------------

    async def serve(self, udp: socket.socket, tcp: socket.socket) -> None:
        """Answers on two bound sockets (made in the sandbox's namespace by the caller)."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=udp)
        self._closers.append(transport.close)
        server = await asyncio.start_server(self._tcp_client, sock=tcp, limit=dns.MAX_MESSAGE)
        self._closers.append(server.close)
        self._spawn(self._sweep())

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            await coro

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                await self._sync()
            except Exception as exc:
                self.log.warning("resolver.sweep_failed", error=str(exc))

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._tcp_clients >= MAX_TCP_CLIENTS:
            writer.close()
            return
        self._tcp_clients += 1
        try:
            async with asyncio.timeout(10):
                while True:
                    size = struct.unpack("!H", await reader.readexactly(2))[0]
                    query = await reader.readexactly(size)
                    response = await self.answer(query, tcp=True)
                    if response is None:
                        break
                    writer.write(struct.pack("!H", len(response)) + response)
                    await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tcp_clients -= 1
            writer.close()

    def close(self) -> None:
        for closer in self._closers:
            closer()
        self._closers.clear()
        for task in self._tasks:
            task.cancel()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        if len(self.resolver._tasks) > MAX_PENDING:  # a flood: drop rather than queue
            return

        async def reply() -> None:
            response = await self.resolver.answer(data)
            if response is not None and self.transport is not None:
                self.transport.sendto(response, addr)

        self.resolver._spawn(reply())


class _Exchange(asyncio.DatagramProtocol):
    def __init__(self, query: bytes) -> None:
        self.query = query
        self.done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        if not self.done.done() and data[:2] == self.query[:2]:
            self.done.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


async def _udp_exchange(host: str, port: int, query: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _Exchange(query), remote_addr=(host, port)
    )
    try:
        transport.sendto(query)
        return await protocol.done
    finally:
        transport.close()


async def _tcp_exchange(host: str, port: int, query: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(host, port, limit=dns.MAX_MESSAGE)
    try:
        writer.write(struct.pack("!H", len(query)) + query)
        await writer.drain()
        size = struct.unpack("!H", await reader.readexactly(2))[0]
        return await reader.readexactly(size)
    finally:
        writer.close()
