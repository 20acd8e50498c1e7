"""When a secret's real value may replace its placeholder, and the replacement itself.

Pure functions over one HTTP/1.x request head (and body) and the connection it came on; the
proxy (``proxy``) parses, this module decides. The rules (docs/networking.md, "Egress:
secrets"), per ``spec.secrets`` entry:

- substituted only when the request's ``Host`` names one of ``allowHosts`` (exact, ``*.``
  suffix, or an IP literal), the connection goes to an address the sandbox's resolver returned
  for that name (or to the literal itself), and the TLS connection was intercepted with
  ``SNI == Host`` -- unless ``requireTLS: false``, which also allows plain HTTP;
- only where the entry asks: header values (Basic credentials decoded, substituted, encoded
  again; ``headerFields`` narrows it to named headers), the query, the body;
- a placeholder anywhere it is not substituted is a **violation**, unless the destination is
  one of ``allowPlaceholderFor`` (it then travels unchanged).

Values are bytes held by the caller and never appear in what this module returns besides the
rewritten request (a :class:`Violation` names entries by their ``env``, never by value).
Next: ``http`` (parsing) and ``proxy`` (the connections).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import quote

from kubesandbox_api.spec import SandboxSecret, ViolationAction

SEVERITY = {
    ViolationAction.BLOCK: 0,
    ViolationAction.BLOCK_AND_LOG: 1,
    ViolationAction.BLOCK_AND_TERMINATE: 2,
}
Header = tuple[bytes, bytes]


class Pins(Protocol):
    """The sandbox resolver's answers (``network.resolver.PinTable``)."""

    def pinned(self, name: str, address: str) -> bool:
        """Whether the resolver returned ``address`` for ``name`` (and the pin is alive)."""
        ...

    def names_of(self, address: str) -> list[str]:
        """The names the resolver returned ``address`` for."""
        ...


@dataclass(frozen=True)
class Entry:
    """One ``spec.secrets`` entry, as the proxy uses it."""

    env: str
    placeholder: bytes
    allow_hosts: tuple[str, ...]
    require_tls: bool = True
    headers: bool = True
    header_fields: frozenset[bytes] = frozenset()
    query: bool = False
    body: bool = False
    allow_placeholder_for: tuple[str, ...] = ()
    action: ViolationAction = ViolationAction.BLOCK_AND_LOG

    @classmethod
    def of(cls, secret: SandboxSecret, default: ViolationAction) -> Entry:
        s = secret.substitution
        return cls(
            env=secret.env,
            placeholder=secret.effective_placeholder.encode(),
            allow_hosts=tuple(secret.allow_hosts),
            require_tls=secret.require_tls,
            headers=s.headers,
            header_fields=frozenset(f.lower().encode() for f in s.header_fields),
            query=s.query,
            body=s.body,
            allow_placeholder_for=tuple(secret.allow_placeholder_for),
            action=secret.violation_action or default,
        )

    @property
    def encoded(self) -> bytes:
        """The placeholder as a URL carries it when its ``$`` was percent-encoded."""
        return quote(self.placeholder.decode(), safe="").encode()


@dataclass(frozen=True)
class Connection:
    """What the proxy knows of the connection a request came on."""

    address: str
    """The original destination address (``SO_ORIGINAL_DST``)."""
    port: int
    tls: bool
    """TLS intercepted by the proxy (the guest trusted our certificate)."""
    sni: str | None = None


@dataclass(frozen=True)
class Violation:
    """A placeholder on its way where it may not go. Carries no value."""

    envs: tuple[str, ...]
    where: str
    destination: str
    action: ViolationAction

    @property
    def message(self) -> str:
        names = ", ".join(self.envs)
        return (
            f"the placeholder of secret {names} in the request's {self.where} to "
            f"{self.destination} was blocked: it may only go to the secret's allowHosts"
        )


class Refused(Exception):
    """A request the proxy will not forward for a reason other than a violation (a value not
    known yet, a value that cannot go into a header, a body too large to substitute)."""


@dataclass
class Outcome:
    """The request to forward (head rewritten), what to do with the body, or a violation."""

    head: Head | None = None
    body_entries: tuple[Entry, ...] = ()
    """Entries whose placeholder is substituted in the body."""
    scan_entries: tuple[Entry, ...] = ()
    """Entries whose placeholder in the body is a violation (streamed and scanned)."""
    violation: Violation | None = None


@dataclass
class Head:
    """An HTTP/1.x request head."""

    method: bytes
    target: bytes
    version: bytes
    headers: list[Header] = field(default_factory=list)

    def values(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k.lower() == name]

    def serialize(self) -> bytes:
        lines = [b" ".join((self.method, self.target, self.version))]
        lines += [k + b": " + v for k, v in self.headers]
        return b"\r\n".join(lines) + b"\r\n\r\n"


# --- hosts ------------------------------------------------------------------------------------


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def host_of(authority: str) -> str:
    """``Host`` header or SNI → lower-case host without port, brackets or final dot."""
    text = authority.strip().lower()
    if text.startswith("["):
        return text[1:].split("]", 1)[0]
    if text.count(":") == 1:
        text = text.split(":", 1)[0]
    return text.rstrip(".")


def host_matches(pattern: str, host: str) -> bool:
    """``api.example.com`` exactly, ``*.example.com`` every name under it, IP literals by
    value (``2001:db8::1`` equals ``2001:DB8:0::1``)."""
    pattern_ip, host_ip = _ip(pattern), _ip(host)
    if pattern_ip is not None or host_ip is not None:
        return pattern_ip is not None and pattern_ip == host_ip
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def _names(connection: Connection, host: str | None, pins: Pins) -> list[str]:
    """Every name the destination goes by: the ``Host`` (or SNI), the address, and the names
    the resolver returned the address for."""
    out = [host] if host else []
    if connection.sni:
        out.append(host_of(connection.sni))
    out.append(connection.address)
    out += pins.names_of(connection.address)
    return out


def passthrough(entry: Entry, connection: Connection, host: str | None, pins: Pins) -> bool:
    """The destination may receive this entry's placeholder unchanged."""
    names = _names(connection, host, pins)
    return any(host_matches(p, n) for p in entry.allow_placeholder_for for n in names)


def may_substitute(entry: Entry, connection: Connection, host: str | None, pins: Pins) -> bool:
    """Every condition for putting the real value into a request to ``host`` (its ``Host``)."""
    if not host or not any(host_matches(p, host) for p in entry.allow_hosts):
        return False
    if connection.tls:
        sni = host_of(connection.sni) if connection.sni else None
        if sni != host and not (sni is None and _ip(host) is not None):
            return False
    elif entry.require_tls:
        return False
    host_ip = _ip(host)
    if host_ip is not None:
        return host_ip == _ip(connection.address)
    return pins.pinned(host, connection.address)


# --- finding and replacing --------------------------------------------------------------------


def _ordered(entries: Iterable[Entry]) -> list[Entry]:
    """Longest placeholder first, so that ``$MSB_KEY_2`` is not read as ``$MSB_KEY``."""
    return sorted(entries, key=lambda e: len(e.placeholder), reverse=True)


def found_in(data: bytes, entries: Iterable[Entry]) -> list[Entry]:
    """The entries whose placeholder (raw or percent-encoded) occurs in ``data``."""
    return [e for e in entries if e.placeholder in data or e.encoded in data]


def _replace(data: bytes, entries: Sequence[Entry], values: Mapping[str, bytes]) -> bytes:
    if not entries:
        return data
    by_placeholder = {e.placeholder: values[e.env] for e in entries}
    pattern = re.compile(b"|".join(re.escape(e.placeholder) for e in _ordered(entries)))
    return pattern.sub(lambda m: by_placeholder[m.group(0)], data)


def _replace_query(target: bytes, entries: Sequence[Entry], values: Mapping[str, bytes]) -> bytes:
    path, sep, query = target.partition(b"?")
    if not sep:
        return target
    encoded = {e.encoded: quote(values[e.env], safe="").encode() for e in entries}
    raw = {e.placeholder: quote(values[e.env], safe="").encode() for e in entries}
    table = {**encoded, **raw}
    keys = sorted(table, key=len, reverse=True)
    pattern = re.compile(b"|".join(re.escape(k) for k in keys))
    return path + b"?" + pattern.sub(lambda m: table[m.group(0)], query)


def _basic(value: bytes) -> bytes | None:
    """The decoded credentials of ``Basic <base64>``."""
    scheme, _, token = value.strip().partition(b" ")
    if scheme.lower() != b"basic" or not token:
        return None
    try:
        return base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


def _header_ok(value: bytes) -> bool:
    return b"\r" not in value and b"\n" not in value and b"\0" not in value


def _check_values(entries: Iterable[Entry], values: Mapping[str, bytes], *, header: bool) -> None:
    for entry in entries:
        value = values.get(entry.env)
        if value is None:
            raise Refused(f"the value of secret {entry.env} is not known on this node yet")
        if header and not _header_ok(value):
            raise Refused(f"the value of secret {entry.env} cannot go into a header")


def violation(entries: Iterable[Entry], where: str, destination: str) -> Violation:
    """The violation of these entries' placeholders (the strictest action of them applies)."""
    chosen = sorted(set(entries), key=lambda e: e.env)
    action = max((e.action for e in chosen), key=lambda a: SEVERITY[a])
    return Violation(tuple(e.env for e in chosen), where, destination, action)


def destination_of(connection: Connection, host: str | None) -> str:
    """How a violation names where the request was going."""
    name = host or (host_of(connection.sni) if connection.sni else None)
    return (
        f"{name} ({connection.address}:{connection.port})"
        if name
        else (f"{connection.address}:{connection.port}")
    )


def rewrite(
    head: Head,
    connection: Connection,
    entries: Sequence[Entry],
    values: Mapping[str, bytes],
    pins: Pins,
) -> Outcome:
    """The decision for one request head: rewritten head and body handling, or a violation.
    Raises :class:`Refused` for requests that cannot be served without being a violation."""
    hosts = head.values(b"host")
    host = host_of(hosts[0].decode("latin-1")) if len(hosts) == 1 else None
    destination = destination_of(connection, host)
    allowed = [e for e in entries if may_substitute(e, connection, host, pins)]
    if head.method == b"TRACE":  # the server echoes the request: the value would come back
        allowed = []
    substituted = False
    free = [e for e in entries if e not in allowed and passthrough(e, connection, host, pins)]
    bad: list[Entry] = []
    where: list[str] = []

    def judge(found: list[Entry], place: str, substitutes: list[Entry]) -> list[Entry]:
        """The entries to substitute here; the rest become violations (or pass unchanged)."""
        use = [e for e in found if e in substitutes]
        wrong = [e for e in found if e not in substitutes and e not in free]
        if wrong:
            bad.extend(wrong)
            where.append(place)
        return use

    target = head.target
    in_target = found_in(target, entries)
    if in_target:
        use = judge(in_target, "URL", [e for e in allowed if e.query])
        if use and not bad:
            _check_values(use, values, header=False)
            target = _replace_query(target, use, values)
            substituted = True
            if found_in(target, use):  # the placeholder was in the path, not the query
                bad.extend(use)
                where.append("URL path")
    headers: list[Header] = []
    for name, value in head.headers:
        lname = name.lower()
        may = [
            e for e in allowed if e.headers and (not e.header_fields or lname in e.header_fields)
        ]
        decoded = _basic(value) if lname in (b"authorization", b"proxy-authorization") else None
        found = found_in(value, entries)
        if decoded is not None:
            inner = found_in(decoded, entries)
            use = judge(inner, f"{name.decode('latin-1')} header", may)
            if use:
                _check_values(use, values, header=True)
                credentials = _replace(decoded, use, values)
                value = b"Basic " + base64.b64encode(credentials)
                substituted = True
            found = [e for e in found if e not in inner]
        if found:
            use = judge(found, f"{name.decode('latin-1')} header", may)
            if use:
                _check_values(use, values, header=True)
                value = _replace(value, use, values)
                substituted = True
        headers.append((name, value))
    if bad:
        return Outcome(violation=violation(bad, " and ".join(dict.fromkeys(where)), destination))
    body_entries = tuple(e for e in allowed if e.body)
    scan = tuple(e for e in entries if e not in body_entries and e not in free)
    if substituted or body_entries:
        # an answer that echoes the value must come uncompressed, so that ``Masker`` sees it
        headers = [(k, v) for k, v in headers if k.lower() != b"accept-encoding"]
        headers.append((b"Accept-Encoding", b"identity"))
    return Outcome(
        head=Head(head.method, target, head.version, headers),
        body_entries=body_entries,
        scan_entries=scan,
    )


def substitute_body(body: bytes, entries: Sequence[Entry], values: Mapping[str, bytes]) -> bytes:
    """The body with the placeholders of ``entries`` replaced (the caller fixes the length)."""
    found = found_in(body, entries)
    _check_values(found, values, header=False)
    return _replace(body, [e for e in entries if e.placeholder in body], values)


def body_violation(
    data: bytes, entries: Sequence[Entry], connection: Connection, host: str | None
) -> Violation | None:
    """A placeholder of ``entries`` in (a window of) a body or a raw stream."""
    found = found_in(data, entries)
    if not found:
        return None
    return violation(found, "body", destination_of(connection, host))


def stream_entries(
    entries: Sequence[Entry], connection: Connection, pins: Pins
) -> tuple[Entry, ...]:
    """Entries whose placeholder in a non-HTTP stream to this destination is a violation."""
    return tuple(e for e in entries if not passthrough(e, connection, None, pins))


def longest(entries: Iterable[Entry]) -> int:
    """The longest form of any placeholder (the overlap a streaming scan keeps)."""
    return max((max(len(e.placeholder), len(e.encoded)) for e in entries), default=0)


MIN_MASKED = 4
"""Values shorter than this are not masked in answers (every such byte string would be)."""


class Masker:
    """Hides secret values in what servers send back, so that an answer echoing a request
    (``/headers`` endpoints, error pages quoting the credential) does not show the guest the
    value: each occurrence becomes as many ``*`` (the length is kept, so HTTP framing still
    holds). The end of a piece that could begin a value is held back until the next piece
    comes or :meth:`flush`."""

    def __init__(self, values: Callable[[], Iterable[bytes]]) -> None:
        self.values = values
        self.held = b""

    def feed(self, data: bytes) -> bytes:
        data = self.held + data
        secrets = [v for v in self.values() if len(v) >= MIN_MASKED]
        for value in secrets:
            data = data.replace(value, b"*" * len(value))
        keep = 0
        for value in secrets:
            for size in range(min(len(value) - 1, len(data)), keep, -1):
                if data.endswith(value[:size]):
                    keep = size
                    break
        self.held = data[len(data) - keep :] if keep else b""
        return data[: len(data) - keep]

    def flush(self) -> bytes:
        out, self.held = self.held, b""
        return out
