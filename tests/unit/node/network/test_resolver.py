"""The sandbox resolver: the DNS codec on hostile input, pinning (an answer's addresses reach
the rule chains before the answer reaches the guest), TTL bounds, and rule changes filled from
what was already resolved. The upstream is a real UDP/TCP server on loopback (tests/support)."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Sequence

import pytest

from kubesandbox_api.spec import NetworkRule
from kubesandbox_node.network import dns
from kubesandbox_node.network.resolver import MAX_PIN, MIN_PIN, Pins, PinTable, Resolver
from tests.support.dnszone import serve

ZONE = {
    "api.example.test": ["203.0.113.10", "203.0.113.11"],
    "cdn.example.test": ["203.0.113.20"],
    "other.test": ["198.51.100.7"],
}


def query(name: str, ident: int = 0x1234, qtype: int = 1) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return (
        struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)
        + labels
        + b"\0"
        + struct.pack("!HH", qtype, 1)
    )


def rule(action: str, **destination: str) -> NetworkRule:
    return NetworkRule.model_validate({"action": action, "destination": destination})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def upstream() -> tuple[str, int]:
    port = free_port()
    threading.Thread(target=serve, args=("127.0.0.1", port, 7200, ZONE), daemon=True).start()
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        threading.Event().wait(0.02)
    return ("127.0.0.1", port)


class Chains:
    """Records what the resolver writes, and when."""

    def __init__(self) -> None:
        self.writes: list[Pins] = []

    async def __call__(self, rules: Sequence[NetworkRule], changed: Pins) -> bool:
        self.writes.append(dict(changed))
        return True


# --- codec ------------------------------------------------------------------------------------


def test_question_of_a_query() -> None:
    q = dns.question(query("API.Example.Test"))
    assert (q.name, q.qtype, q.qclass) == ("api.example.test", 1, 1)


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"\x12\x34" * 5,
        query("a.test")[:-3],  # truncated question
        struct.pack("!HHHHHH", 1, 0, 2, 0, 0, 0) + b"\0" + b"\0\1\0\1" * 2,  # two questions
        struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\xc0\x0c\0\1\0\1",  # pointer to itself
        struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x3f" + b"a" * 10,  # label past the end
        struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + (b"\x3f" + b"a" * 63) * 5 + b"\0\0\1\0\1",
        struct.pack("!HHHHHH", 1, 0x8000, 1, 0, 0, 0) + b"\0\0\1\0\1",  # a response
    ],
)
def test_hostile_queries_are_refused(message: bytes) -> None:
    with pytest.raises(dns.DnsError):
        dns.question(message)


def test_error_answer_keeps_id_and_question() -> None:
    answer = dns.error_answer(query("x.test", ident=0xBEEF))
    assert answer is not None
    assert answer[:2] == b"\xbe\xef"
    assert answer[3] & 0x0F == 2
    assert dns.answer_records(answer)[0].name == "x.test"
    assert dns.error_answer(b"junk") is None


# --- pinning ----------------------------------------------------------------------------------


async def test_answers_pin_addresses_to_matching_rules_before_the_guest_sees_them(
    upstream: tuple[str, int],
) -> None:
    chains = Chains()
    rules = [
        rule("Allow", cidr="203.0.113.0/24"),
        rule("Allow", domain="api.example.test"),
        rule("Deny", domainSuffix="example.test"),
    ]
    resolver = Resolver([upstream], rules, chains)
    assert resolver.set_rules(rules) == {1: [], 2: []}
    answer = await resolver.answer(query("api.example.test"))
    assert answer is not None
    _, records = dns.answer_records(answer)
    assert sorted(r.address for r in records) == ["203.0.113.10", "203.0.113.11"]
    assert all(r.ttl == MAX_PIN for r in records)  # 7200 upstream, capped to the pin
    assert chains.writes == [{1: ["203.0.113.10", "203.0.113.11"],
                              2: ["203.0.113.10", "203.0.113.11"]}]  # fmt: skip
    await resolver.answer(query("cdn.example.test"))
    assert chains.writes[-1] == {2: ["203.0.113.10", "203.0.113.11", "203.0.113.20"]}
    writes = len(chains.writes)
    await resolver.answer(query("other.test"))  # no rule names it: nothing to write
    await resolver.answer(query("api.example.test", ident=7))  # pinned already
    assert len(chains.writes) == writes


async def test_tcp_queries_and_unknown_names(upstream: tuple[str, int]) -> None:
    chains = Chains()
    resolver = Resolver([upstream], [rule("Allow", domain="nope.test")], chains)
    answer = await resolver.answer(query("nope.test"), tcp=True)
    assert answer is not None
    assert answer[3] & 0x0F == 3  # NXDOMAIN passed through
    assert chains.writes == []
    answer = await resolver.answer(query("api.example.test"), tcp=True)
    assert answer is not None
    assert len(dns.answer_records(answer)[1]) == 2


async def test_no_upstream_answers_servfail() -> None:
    resolver = Resolver([("127.0.0.1", free_port())], [], Chains())
    answer = await resolver.answer(query("api.example.test"))
    assert answer is not None
    assert answer[3] & 0x0F == 2
    assert await resolver.answer(b"garbage") is None


async def test_a_rule_added_later_starts_with_what_was_resolved(
    upstream: tuple[str, int],
) -> None:
    chains = Chains()
    resolver = Resolver([upstream], [], chains)
    await resolver.answer(query("cdn.example.test"))
    assert chains.writes == []
    pins = resolver.set_rules([rule("Deny", cidr="10.0.0.0/8"), rule("Allow", domainSuffix="test")])
    assert pins == {1: ["203.0.113.20"]}


def test_pins_last_the_ttl_bounded_both_ways() -> None:
    now = [1000.0]
    table = PinTable(clock=lambda: now[0])
    allow = [rule("Allow", domain="a.test"), rule("Allow", domain="b.test")]
    table.add("a.test", [("203.0.113.1", 1)])  # raised to MIN_PIN
    table.add("b.test", [("203.0.113.2", 10**9)])  # lowered to MAX_PIN
    now[0] += MIN_PIN - 1
    table.expire()
    assert table.pins(allow) == {0: ["203.0.113.1"], 1: ["203.0.113.2"]}
    now[0] += 2
    table.expire()
    assert table.pins(allow) == {0: [], 1: ["203.0.113.2"]}
    now[0] += MAX_PIN
    table.expire()
    assert table.pins(allow) == {0: [], 1: []}


def test_the_name_table_is_bounded() -> None:
    table = PinTable()
    for i in range(5000):
        table.add(
            f"n{i}.test", [("203.0.113.1", 60)] + [(f"198.51.100.{j}", 60) for j in range(40)]
        )
    assert len(table.names) == 4096
    assert all(len(a) <= 32 for a in table.names.values())
    assert "n0.test" not in table.names
    wide = PinTable()
    for i in range(2000):
        wide.add(f"n{i}.test", [(f"10.{i // 256}.{i % 256}.1", 60 + i)])
    pinned = wide.pins([rule("Allow", domainSuffix="test")])[0]
    assert len(pinned) == 1024
    assert "10.7.207.1" in pinned  # the last one, pinned longest
    assert "10.0.0.1" not in pinned


async def test_expiry_rewrites_the_chain(upstream: tuple[str, int]) -> None:
    now = [0.0]
    chains = Chains()
    resolver = Resolver([upstream], [rule("Allow", domain="cdn.example.test")], chains,
                        clock=lambda: now[0])  # fmt: skip
    await resolver.answer(query("cdn.example.test"))
    now[0] += MAX_PIN + 1
    await resolver._sync()
    assert chains.writes == [{0: ["203.0.113.20"]}, {0: []}]


async def test_served_over_real_sockets(upstream: tuple[str, int]) -> None:
    chains = Chains()
    resolver = Resolver([upstream], [rule("Allow", domain="api.example.test")], chains)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    await resolver.serve(udp, tcp)
    try:
        loop = asyncio.get_running_loop()
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.setblocking(False)
        await loop.sock_connect(client, udp.getsockname())
        await loop.sock_sendall(client, query("api.example.test"))
        async with asyncio.timeout(5):
            answer = await loop.sock_recv(client, 4096)
        client.close()
        assert len(dns.answer_records(answer)[1]) == 2
        reader, writer = await asyncio.open_connection(*tcp.getsockname())
        message = query("other.test")
        writer.write(struct.pack("!H", len(message)) + message)
        size = struct.unpack("!H", await reader.readexactly(2))[0]
        assert dns.answer_records(await reader.readexactly(size))[1][0].address == "198.51.100.7"
        writer.close()
        assert chains.writes == [{0: ["203.0.113.10", "203.0.113.11"]}]
    finally:
        resolver.close()
