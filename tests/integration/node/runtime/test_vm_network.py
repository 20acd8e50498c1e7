"""Networking of a real VM (real guest agent, TCG): the guest under ``PublicOnly`` reaches a
public test host and resolves names through the sandbox's resolver, is refused a private host
and the metadata address, serves a published port on the node, and its traffic shows in the
host-side metrics. A second VM runs under ``spec.network.rules``: Allow and Deny by domain
and CIDR, in order, changed while it runs, and a guest asking another DNS server directly is
answered by the sandbox's resolver all the same. Test hosts live in network namespaces made
here (a test zone on the node's resolver, a rogue DNS server that lies); no real external
address is contacted."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from kubesandbox_node.metrics.sampler import Sampler
from kubesandbox_node.runtime.manager import Runtime
from kubesandbox_node.runtime.model import DesiredSandbox
from kubesandbox_node.runtime.supervisor import Supervisor
from kubesandbox_protocol import AgentClient
from tests.integration.node.runtime.conftest import Images, Node, networked_node
from tests.integration.node.runtime.conftest import booted as boot
from tests.support.testnet import (
    CLIENT,
    Host,
    remove_host,
    sh,
    start_dns_host,
    start_host,
)

pytestmark = [pytest.mark.vm, pytest.mark.asyncio(loop_scope="module")]
PUBLIC, PRIVATE, METADATA, DNS = (
    "203.0.113.20",
    "192.168.251.20",
    "169.254.169.254",
    "192.168.252.54",
)
HOST_PORT = 19000 + os.getpid() % 1000
DENIED, OTHER, ROGUE = "203.0.113.21", "198.51.100.21", "198.51.100.54"
ZONE = {"public.vm.test": [PUBLIC], "denied.vm.test": [DENIED], "other.vm.test": [OTHER]}
LIES = {name: [DENIED] for name in ZONE}


@pytest.fixture(scope="module")
def hosts() -> Iterator[list[Host]]:
    specs = [("vmpub", PUBLIC, "tcp", 8080), ("vmpriv", PRIVATE, "tcp", 8080),
             ("vmmeta", METADATA, "tcp", 80), ("vmden", DENIED, "tcp", 8080),
             ("vmoth", OTHER, "tcp", 8080)]  # fmt: skip
    made: list[Host] = []
    try:
        for i, spec in enumerate(specs):
            made.append(start_host(*spec, index=20 + i))
        made.append(start_dns_host("vmdns", DNS, ZONE, 20 + len(made)))
        made.append(start_dns_host("vmrogue", ROGUE, LIES, 20 + len(made)))
        yield made
    finally:
        for i, host in enumerate(made):
            remove_host(host, 20 + i)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def node(images: Images, hosts: list[Host]) -> AsyncIterator[Node]:
    async with networked_node(images, prefix="ksb-vmnet-", dns=(DNS,)) as made:
        yield made


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def runtime(node: Node) -> Runtime:
    return node.runtime  # the first runtime; the restart test (last) makes another


async def booted(runtime: Runtime, network: dict[str, object]) -> Supervisor:
    spec = {"image": {"oci": "busybox:1.36"}, "memory": 256, "network": network}
    return await boot(runtime, "net", spec)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sandbox(runtime: Runtime) -> Supervisor:
    return await booted(
        runtime, {"policy": "PublicOnly", "ports": [{"port": 8000, "hostPort": HOST_PORT}]}
    )


def node_client(host: str, port: int) -> str:
    argv = ["python3", "-c", CLIENT, "tcp", host, str(port)]
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout


async def guest(sandbox: Supervisor, script: str) -> tuple[int, str]:
    async with await AgentClient.connect(sandbox.relay_socket) as client:
        result = await client.run("sh", ["-c", script])
    return result.code, result.stdout.decode()


async def test_public_host_is_reachable(sandbox: Supervisor) -> None:
    code, out = await guest(sandbox, f"busybox nc -w 3 {PUBLIC} 8080")
    assert (code, out) == (0, f"hello from {PUBLIC}")


async def lookup(sandbox: Supervisor, args: str) -> str:
    """``busybox nslookup``, asked again (at most 3 times) when no address came back: its
    A query and AAAA query race, and on a loaded machine it sometimes reports the AAAA
    reply alone ("No answer")."""
    out = ""
    for _ in range(3):
        _, out = await guest(sandbox, f"busybox nslookup {args}")
        if "Address: " in out.split("\n\n", 1)[-1]:
            break
    return out


async def test_dns_goes_through_the_sandbox_resolver(sandbox: Supervisor) -> None:
    _, out = await guest(sandbox, "cat /etc/resolv.conf")
    out += await lookup(sandbox, "public.vm.test")
    assert "nameserver 10.0.2.1" in out
    assert f"Address: {PUBLIC}" in out, out  # the test zone, through the node's resolver


async def test_private_and_metadata_addresses_are_refused(sandbox: Supervisor) -> None:
    for host, port in ((PRIVATE, 8080), (METADATA, 80), (DNS, 8080)):
        code, out = await guest(sandbox, f"busybox nc -w 3 {host} {port}")
        assert code != 0, (host, out)
        assert "hello" not in out


async def test_published_port_answers_on_the_node(sandbox: Supervisor) -> None:
    async with await AgentClient.connect(sandbox.relay_socket) as client:
        server = await client.exec("sh", ["-c", "echo published | busybox nc -l -p 8000"])
        node_ip = sh("ip", "-4", "-o", "route", "get", PUBLIC).split("src ")[1].split()[0]
        out = ""
        for _ in range(50):
            out = await asyncio.to_thread(node_client, node_ip, HOST_PORT)
            if not out.startswith("FAILED"):
                break
            await asyncio.sleep(0.2)
        assert out.strip() == "published"
        await server.wait()


async def test_network_counters_are_sampled_on_the_host(sandbox: Supervisor) -> None:
    assert sandbox.handle is not None
    metrics = await Sampler().sample(sandbox.uid, sandbox.handle)
    assert (metrics.net_rx_bytes or 0) > 0
    assert (metrics.net_tx_bytes or 0) > 0


async def test_policy_change_applies_without_reboot(runtime: Runtime, sandbox: Supervisor) -> None:
    assert sandbox.handle is not None
    pid = sandbox.handle.record.pid
    data = sandbox.desired.model_dump(by_alias=True)
    data["generation"] = 2
    data["spec"]["network"]["policy"] = "All"
    runtime.put(DesiredSandbox.model_validate(data))
    out = ""
    for _ in range(50):
        _, out = await guest(sandbox, f"busybox nc -w 2 {PRIVATE} 8080")
        if out:
            break
        await asyncio.sleep(0.1)
    assert out == f"hello from {PRIVATE}"
    assert sandbox.handle is not None
    assert sandbox.handle.record.pid == pid


# --- spec.network.rules -------------------------------------------------------------------------


def allow(**destination: str) -> dict[str, object]:
    return {"action": "Allow", "destination": destination}


def deny(**destination: str) -> dict[str, object]:
    return {"action": "Deny", "destination": destination}


async def nc(sandbox: Supervisor, host: str) -> str:
    code, out = await guest(sandbox, f"busybox nc -w 3 {host} 8080")
    assert code == 0 or "hello" not in out, out
    return out if code == 0 else f"FAILED {code}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def ruled(runtime: Runtime, sandbox: Supervisor) -> Supervisor:
    rules = [deny(cidr=f"{OTHER}/32"), allow(domain="public.vm.test")]
    return await booted(runtime, {"policy": "None", "rules": rules})


async def test_rules_allow_what_was_resolved_and_nothing_else(ruled: Supervisor) -> None:
    assert (await nc(ruled, PUBLIC)).startswith("FAILED")  # not resolved: nothing pinned
    out = await lookup(ruled, "public.vm.test")
    assert f"Address: {PUBLIC}" in out, out
    assert await nc(ruled, PUBLIC) == f"hello from {PUBLIC}"
    out = await lookup(ruled, "denied.vm.test")
    assert f"Address: {DENIED}" in out, out
    assert (await nc(ruled, DENIED)).startswith("FAILED")  # resolved, no rule allows it
    assert (await nc(ruled, PRIVATE)).startswith("FAILED")


async def test_another_dns_server_is_answered_by_the_sandbox_resolver(ruled: Supervisor) -> None:
    # the rogue server would say DENIED for every name: the query never reaches it
    out = await lookup(ruled, f"public.vm.test {ROGUE}")
    assert f"Address: {PUBLIC}" in out, out
    assert f"Address: {DENIED}" not in out
    assert await nc(ruled, PUBLIC) == f"hello from {PUBLIC}"


async def test_rule_changes_apply_to_the_running_vm(runtime: Runtime, ruled: Supervisor) -> None:
    assert ruled.handle is not None
    pid = ruled.handle.record.pid
    assert f"Address: {OTHER}" in await lookup(ruled, "other.vm.test")
    assert (await nc(ruled, OTHER)).startswith("FAILED")  # the CIDR Deny comes first
    data = ruled.desired.model_dump(by_alias=True)
    data["generation"] = 2
    data["spec"]["network"]["rules"] = [
        {"action": "Allow", "destination": {"domainSuffix": "vm.test"}, "protocol": "TCP",
         "ports": [{"port": 8080}]},
        deny(cidr=f"{OTHER}/32"),
    ]  # fmt: skip
    runtime.put(DesiredSandbox.model_validate(data))
    out = ""
    for _ in range(50):
        out = await nc(ruled, OTHER)
        if not out.startswith("FAILED"):
            break
        await asyncio.sleep(0.1)
    assert out == f"hello from {OTHER}"  # pinned before the change, allowed by the new order
    assert await nc(ruled, DENIED) == f"hello from {DENIED}"
    assert ruled.handle is not None
    assert ruled.handle.record.pid == pid


async def test_a_restarted_node_agent_serves_dns_and_keeps_the_rules(
    node: Node, ruled: Supervisor
) -> None:
    pid = ruled.handle.record.pid if ruled.handle else None
    assert (await node.restart())[ruled.uid] is True
    adopted = node.runtime.sandboxes[ruled.uid]
    assert adopted.handle is not None
    assert adopted.handle.record.pid == pid
    await asyncio.sleep(1)  # the resolver comes back with the re-adoption, in the background
    out = await lookup(adopted, "other.vm.test")
    assert f"Address: {OTHER}" in out, out
    assert await nc(adopted, OTHER) == f"hello from {OTHER}"  # the rules of generation 2
    assert (await nc(adopted, PRIVATE)).startswith("FAILED")
