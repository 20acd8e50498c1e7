"""The egress test kit (tests/support/egress.py) on a real VM: a guest booted from the Debian
test image reaches the test hosts by name through the sandbox's resolver (the test zone's
server is the node's upstream resolver), and each host records what it received: an HTTP
request with its headers, query and body, an HTTPS request with its SNI (curl trusting the
test CA), a UDP/443 datagram sent with ``nc``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from kubesandbox_node.runtime.manager import Runtime
from kubesandbox_node.runtime.supervisor import Supervisor
from kubesandbox_protocol import AgentClient
from tests.integration.node.runtime.conftest import Images, booted, networked_runtime
from tests.support.egress import EgressHosts, egress_hosts

pytestmark = [pytest.mark.vm, pytest.mark.asyncio(loop_scope="module")]
API, OTHER = "api.kit.test", "other.kit.test"


@pytest.fixture(scope="module")
def kit() -> Iterator[EgressHosts]:
    with egress_hosts([API, OTHER]) as hosts:
        yield hosts


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def runtime(images: Images, kit: EgressHosts) -> AsyncIterator[Runtime]:
    async with networked_runtime(images, prefix="ksb-kit-", dns=(kit.dns,)) as rt:
        yield rt


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sandbox(runtime: Runtime, egress_guest_image: str) -> Supervisor:
    spec = {
        "image": {"oci": egress_guest_image},
        "memory": 384,
        "network": {"policy": "PublicOnly"},
    }
    return await booted(runtime, "kit", spec)


async def guest(sandbox: Supervisor, script: str, stdin: bytes | None = None) -> tuple[int, str]:
    async with await AgentClient.connect(sandbox.relay_socket) as client:
        result = await client.run("sh", ["-c", script], stdin=stdin)
    return result.code, result.stdout.decode() + result.stderr.decode()


async def test_the_guest_has_the_tools(sandbox: Supervisor) -> None:
    code, out = await guest(
        sandbox, "curl --version; command -v nc; command -v python3; cat /etc/debian_version"
    )
    assert code == 0, out
    assert out.startswith("curl "), out
    assert "/usr/bin/nc" in out, out
    assert "/usr/bin/python3" in out, out
    assert out.strip().splitlines()[-1].startswith("12."), out  # bookworm


async def test_http_by_name_is_recorded(sandbox: Supervisor, kit: EgressHosts) -> None:
    host = kit[API]
    url = host.url("/v1/echo?q=x")
    code, out = await guest(
        sandbox, f"curl -sS --max-time 20 -H 'X-Kit: one' --data-binary 'a=1&b=2' '{url}'"
    )
    assert (code, out) == (0, f"ok {API}\n")
    seen = host.wait_for(lambda r: r.path == "/v1/echo")
    assert (seen.scheme, seen.method, seen.query, seen.body) == ("http", "POST", "q=x", "a=1&b=2")
    assert seen.host == API
    assert seen.header("x-kit") == "one"
    assert seen.sni is None
    assert not kit[OTHER].requests()


async def test_https_with_the_test_ca_records_the_sni(
    sandbox: Supervisor, kit: EgressHosts
) -> None:
    host = kit[OTHER]
    code, out = await guest(
        sandbox,
        f"cat > /tmp/kit-ca.pem && curl -sS --max-time 20 --cacert /tmp/kit-ca.pem "
        f"'{host.url('/secure', 'https')}'",
        stdin=kit.ca_pem.read_bytes(),
    )
    assert (code, out) == (0, f"ok {OTHER}\n")
    seen = host.wait_for(lambda r: r.path == "/secure")
    assert (seen.scheme, seen.sni, seen.host) == ("https", OTHER, OTHER)


async def test_a_udp_443_datagram_is_recorded(sandbox: Supervisor, kit: EgressHosts) -> None:
    host = kit[API]
    code, out = await guest(sandbox, f"printf quic-probe | nc -u -w 1 {API} 443")
    assert code == 0, out
    for _ in range(100):
        if host.datagrams():
            break
        await asyncio.sleep(0.05)
    assert [d.head for d in host.datagrams()] == [b"quic-probe"]
    assert host.carries("quic-probe")
