import base64

import pytest

from kubesandbox_api.spec import SandboxSecret, ViolationAction
from kubesandbox_node.egress.substitute import (
    Connection,
    Entry,
    Head,
    Masker,
    Refused,
    host_matches,
    may_substitute,
    rewrite,
    substitute_body,
)

API = "203.0.113.10"
EVIL = "198.51.100.66"
VALUE = b"s3cr3t-value"


class FakePins:
    def __init__(self, pins: dict[str, set[str]]) -> None:
        self.pins = pins

    def pinned(self, name: str, address: str) -> bool:
        return address in self.pins.get(name, set())

    def names_of(self, address: str) -> list[str]:
        return [n for n, a in self.pins.items() if address in a]


PINS = FakePins({"api.example.com": {API}, "files.example.org": {EVIL}})


def entry(**overrides: object) -> Entry:
    secret = SandboxSecret.model_validate(
        {
            "env": "API_KEY",
            "secretKeyRef": {"name": "s", "key": "k"},
            "allowHosts": ["api.example.com"],
            **overrides,
        }
    )
    return Entry.of(secret, ViolationAction.BLOCK_AND_LOG)


def head(host: str, *headers: tuple[bytes, bytes], target: bytes = b"/v1") -> Head:
    return Head(b"GET", target, b"HTTP/1.1", [(b"Host", host.encode()), *headers])


TLS_API = Connection(API, 443, tls=True, sni="api.example.com")
VALUES = {"API_KEY": VALUE}


def test_the_value_replaces_the_placeholder_in_a_header_to_an_allowed_host() -> None:
    out = rewrite(head("api.example.com", (b"Authorization", b"Bearer $MSB_API_KEY")),
                  TLS_API, [entry()], VALUES, PINS)  # fmt: skip
    assert out.violation is None
    assert out.head is not None
    assert (b"Authorization", b"Bearer " + VALUE) in out.head.headers


def test_basic_credentials_are_decoded_substituted_and_encoded_again() -> None:
    token = base64.b64encode(b"user:$MSB_API_KEY")
    out = rewrite(head("api.example.com", (b"Authorization", b"Basic " + token)),
                  TLS_API, [entry()], VALUES, PINS)  # fmt: skip
    assert out.head is not None
    value = dict(out.head.headers)[b"Authorization"]
    assert base64.b64decode(value.split()[1]) == b"user:" + VALUE


@pytest.mark.parametrize(
    ("host", "connection", "why"),
    [
        ("evil.example.net", Connection(EVIL, 443, tls=True, sni="evil.example.net"), "other"),
        ("api.example.com", Connection(EVIL, 443, tls=True, sni="api.example.com"), "spoofed"),
        ("api.example.com", Connection(API, 443, tls=True, sni="other.example.com"), "sni"),
        ("api.example.com", Connection(API, 80, tls=False), "plain http"),
    ],
)
def test_a_placeholder_anywhere_else_is_a_violation(
    host: str, connection: Connection, why: str
) -> None:
    out = rewrite(head(host, (b"X-Key", b"$MSB_API_KEY")), connection, [entry()], VALUES, PINS)
    assert out.head is None, why
    assert out.violation is not None
    assert out.violation.envs == ("API_KEY",)
    assert VALUE.decode() not in out.violation.message


def test_require_tls_false_allows_plain_http_to_the_allowed_host() -> None:
    plain = Connection(API, 80, tls=False)
    out = rewrite(head("api.example.com:80", (b"X-Key", b"$MSB_API_KEY")), plain,
                  [entry(requireTLS=False)], VALUES, PINS)  # fmt: skip
    assert out.head is not None
    assert (b"X-Key", VALUE) in out.head.headers


def test_an_ip_literal_host_needs_the_same_destination() -> None:
    e = entry(allowHosts=[API])
    same = Connection(API, 443, tls=True, sni=None)
    assert may_substitute(e, same, API, PINS)
    assert not may_substitute(e, Connection(EVIL, 443, tls=True), API, PINS)


def test_host_patterns() -> None:
    assert host_matches("*.example.com", "a.b.example.com")
    assert not host_matches("*.example.com", "example.com")
    assert not host_matches("*.example.com", "badexample.com")
    assert host_matches("2001:db8::1", "2001:DB8:0::1")
    assert not host_matches("api.example.com", "api.example.com.evil")


def test_the_query_is_substituted_only_when_asked() -> None:
    target = b"/v1?key=$MSB_API_KEY"
    asked = rewrite(head("api.example.com", target=target), TLS_API,
                    [entry(substitution={"query": True})], {"API_KEY": b"a b"}, PINS)  # fmt: skip
    assert asked.head is not None
    assert asked.head.target == b"/v1?key=a%20b"
    not_asked = rewrite(head("api.example.com", target=target), TLS_API, [entry()], VALUES, PINS)
    assert not_asked.violation is not None
    assert not_asked.violation.where == "URL"


def test_header_fields_narrow_the_headers() -> None:
    e = entry(substitution={"headerFields": ["Authorization"]})
    out = rewrite(head("api.example.com", (b"X-Other", b"$MSB_API_KEY")), TLS_API, [e],
                  VALUES, PINS)  # fmt: skip
    assert out.violation is not None


def test_allow_placeholder_for_lets_the_placeholder_pass_unchanged() -> None:
    e = entry(allowPlaceholderFor=["*.example.org"])
    conn = Connection(EVIL, 443, tls=True, sni="files.example.org")
    out = rewrite(head("files.example.org", (b"X-Key", b"$MSB_API_KEY")), conn, [e], VALUES, PINS)
    assert out.head is not None
    assert (b"X-Key", b"$MSB_API_KEY") in out.head.headers


def test_the_strictest_action_of_the_entries_involved_applies() -> None:
    a = entry(violationAction="Block")
    b = Entry.of(
        SandboxSecret.model_validate({"env": "B", "secretKeyRef": {"name": "s", "key": "b"},
                                      "allowHosts": ["x.example"],
                                      "violationAction": "BlockAndTerminate"}),
        ViolationAction.BLOCK_AND_LOG,
    )  # fmt: skip
    conn = Connection(EVIL, 443, tls=True, sni="evil.example.net")
    out = rewrite(head("evil.example.net", (b"X", b"$MSB_API_KEY $MSB_B")), conn, [a, b],
                  {"API_KEY": VALUE, "B": b"v"}, PINS)  # fmt: skip
    assert out.violation is not None
    assert out.violation.action is ViolationAction.BLOCK_AND_TERMINATE
    assert out.violation.envs == ("API_KEY", "B")


def test_a_longer_placeholder_is_not_taken_for_a_shorter_one() -> None:
    short = entry(env="K", allowHosts=["api.example.com"])
    long_ = entry(env="K_2", allowHosts=["api.example.com"])
    out = rewrite(head("api.example.com", (b"X", b"$MSB_K_2")), TLS_API, [short, long_],
                  {"K": b"one", "K_2": b"two"}, PINS)  # fmt: skip
    assert out.head is not None
    assert (b"X", b"two") in out.head.headers


def test_an_unknown_value_or_one_unfit_for_a_header_is_refused() -> None:
    h = head("api.example.com", (b"X-Key", b"$MSB_API_KEY"))
    with pytest.raises(Refused):
        rewrite(h, TLS_API, [entry()], {}, PINS)
    with pytest.raises(Refused):
        rewrite(h, TLS_API, [entry()], {"API_KEY": b"a\r\nX-Injected: 1"}, PINS)


def test_the_body_is_substituted_only_when_asked() -> None:
    e = entry(substitution={"body": True})
    out = rewrite(head("api.example.com"), TLS_API, [e], VALUES, PINS)
    assert out.body_entries == (e,)
    assert out.scan_entries == ()
    assert substitute_body(b'{"k": "$MSB_API_KEY"}', out.body_entries, VALUES) == (
        b'{"k": "' + VALUE + b'"}'
    )
    plain = rewrite(head("api.example.com"), TLS_API, [entry()], VALUES, PINS)
    assert plain.body_entries == ()
    assert len(plain.scan_entries) == 1


def test_a_request_that_gets_a_value_asks_for_an_uncompressed_answer() -> None:
    h = head("api.example.com", (b"X-Key", b"$MSB_API_KEY"), (b"Accept-Encoding", b"gzip"))
    out = rewrite(h, TLS_API, [entry()], VALUES, PINS)
    assert out.head is not None
    assert out.head.values(b"accept-encoding") == [b"identity"]
    untouched = rewrite(head("api.example.com", (b"Accept-Encoding", b"gzip")), TLS_API,
                        [entry()], VALUES, PINS)  # fmt: skip
    assert untouched.head is not None
    assert untouched.head.values(b"accept-encoding") == [b"gzip"]


def test_trace_never_gets_a_value() -> None:
    h = Head(b"TRACE", b"/", b"HTTP/1.1", [(b"Host", b"api.example.com"), (b"X", b"$MSB_API_KEY")])
    assert rewrite(h, TLS_API, [entry()], VALUES, PINS).violation is not None


def test_answers_show_masks_where_a_value_was_even_across_pieces() -> None:
    masker = Masker(lambda: [VALUE])
    first = masker.feed(b'{"echo": "Bearer ' + VALUE[:5])
    second = masker.feed(VALUE[5:] + b'"}')
    assert first + second + masker.flush() == b'{"echo": "Bearer ' + b"*" * len(VALUE) + b'"}'
    assert masker.feed(b"s3c") == b""  # could begin the value: held
    assert masker.flush() == b"s3c"
