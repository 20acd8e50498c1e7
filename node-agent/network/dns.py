"""The little of the DNS wire format (RFC 1035) the sandbox resolver needs: the question of a
guest's query, the A records of an upstream answer (with the offsets of their TTLs, so they
can be capped), and a SERVFAIL answer. Guest queries are hostile input: every read is bounded,
compression pointers may only point backwards, and a name has at most 255 bytes.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

HEADER = struct.Struct("!HHHHHH")
TYPE_A = 1
CLASS_IN = 1
MAX_NAME = 255
MAX_MESSAGE = 65535


class DnsError(ValueError):
    """A message that is not well-formed DNS."""


@dataclass(frozen=True)
class Question:
    name: str
    """Lower case, without the trailing dot (``api.example.com``)."""
    qtype: int
    qclass: int


@dataclass(frozen=True)
class ARecord:
    owner: str
    address: str
    ttl: int
    ttl_offset: int
    """Where the TTL's four bytes are in the message."""


def read_name(message: bytes, offset: int) -> tuple[str, int]:
    """The name at ``offset`` and the offset after it (after the first pointer, if any)."""
    labels: list[str] = []
    size = 0
    end: int | None = None
    position = offset
    for _ in range(128):
        if position >= len(message):
            raise DnsError("name runs past the message")
        length = message[position]
        if length & 0xC0 == 0xC0:
            if position + 1 >= len(message):
                raise DnsError("truncated compression pointer")
            target = ((length & 0x3F) << 8) | message[position + 1]
            if target >= position:
                raise DnsError("compression pointer does not point backwards")
            if end is None:
                end = position + 2
            position = target
            continue
        if length & 0xC0:
            raise DnsError("unsupported label type")
        if length == 0:
            return ".".join(labels).lower(), end if end is not None else position + 1
        label = message[position + 1 : position + 1 + length]
        if len(label) != length:
            raise DnsError("label runs past the message")
        size += length + 1
        if size > MAX_NAME:
            raise DnsError("name longer than 255 bytes")
        labels.append(label.decode("ascii", errors="replace"))
        position += 1 + length
    raise DnsError("too many labels")


def question(message: bytes) -> Question:
    """The single question of a query."""
    if len(message) < HEADER.size:
        raise DnsError("shorter than a DNS header")
    _, flags, qdcount, _, _, _ = HEADER.unpack_from(message)
    if flags & 0x8000:
        raise DnsError("not a query")
    if qdcount != 1:
        raise DnsError("a query must have exactly one question")
    name, offset = read_name(message, HEADER.size)
    if offset + 4 > len(message):
        raise DnsError("truncated question")
    qtype, qclass = struct.unpack_from("!HH", message, offset)
    return Question(name, qtype, qclass)


def answer_records(message: bytes) -> tuple[Question, list[ARecord]]:
    """The question and the A records of the answer section of a response."""
    if len(message) < HEADER.size:
        raise DnsError("shorter than a DNS header")
    _, flags, qdcount, ancount, _, _ = HEADER.unpack_from(message)
    if not flags & 0x8000 or qdcount != 1:
        raise DnsError("not a response to one question")
    name, offset = read_name(message, HEADER.size)
    if offset + 4 > len(message):
        raise DnsError("truncated question")
    qtype, qclass = struct.unpack_from("!HH", message, offset)
    offset += 4
    records: list[ARecord] = []
    for _ in range(ancount):
        owner, offset = read_name(message, offset)
        if offset + 10 > len(message):
            raise DnsError("truncated record")
        rtype, rclass, ttl, length = struct.unpack_from("!HHIH", message, offset)
        data = offset + 10
        if data + length > len(message):
            raise DnsError("record data runs past the message")
        if rtype == TYPE_A and rclass == CLASS_IN and length == 4:
            address = str(ipaddress.IPv4Address(message[data : data + 4]))
            records.append(ARecord(owner, address, min(ttl, 0x7FFFFFFF), offset + 4))
        offset = data + length
    return Question(name, qtype, qclass), records


def cap_ttls(message: bytes, records: list[ARecord], cap: int) -> bytes:
    """The message with every A record's TTL at most ``cap`` (a guest must not cache an
    address longer than the resolver keeps it pinned)."""
    out = bytearray(message)
    for record in records:
        if record.ttl > cap:
            struct.pack_into("!I", out, record.ttl_offset, cap)
    return bytes(out)


def error_answer(query: bytes, rcode: int = 2) -> bytes | None:
    """A header-and-question answer with ``rcode`` (2 SERVFAIL, 5 REFUSED), or None when the
    query is too broken to answer."""
    try:
        question(query)
        _, end = read_name(query, HEADER.size)
    except DnsError:
        return None
    ident, flags, _, _, _, _ = HEADER.unpack_from(query)
    flags = 0x8000 | (flags & 0x7900) | 0x0080 | rcode  # QR, opcode and RD kept, RA, rcode
    return HEADER.pack(ident, flags, 1, 0, 0, 0) + query[HEADER.size : end + 4]
