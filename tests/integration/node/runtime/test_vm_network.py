"""Networking of a real VM (real guest agent, TCG): the guest under ``PublicOnly`` reaches a
public test host and DNS, is refused a private host and the metadata address, serves a
published port on the node, and its traffic shows in the host-side metrics. Test hosts live
in network namespaces made here; no real external address is contacted."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from kubesandbox_api.conditions import Phase
from kubesandbox_node.metrics.sampler import Sampler
from kubesandbox_node.runtime.manager import Runtime
from kubesandbox_node.runtime.model import DesiredSandbox
from kubesandbox_node.runtime.supervisor import Supervisor
from kubesandbox_protocol import AgentClient
from tests.integration.node.network.hosts import CLIENT, Host, remove_host, sh, start_host
from tests.integration.node.runtime.conftest import Images, networked_runtime

pytestmark = [pytest.mark.vm, pytest.mark.asyncio(loop_scope="module")]
PUBLIC, PRIVATE, METADATA, DNS = (
    "203.0.113.20",
    "192.168.251.20",
    "169.254.169.254",
    "192.168.252.54",
)
HOST_PORT = 19000 + os.getpid() % 1000


@pytest.fixture(scope="module")
def hosts() -> Iterator[list[Host]]:
    specs = [("vmpub", PUBLIC, "tcp", 8080), ("vmpriv", PRIVATE, "tcp", 8080),
             ("vmmeta", METADATA, "tcp", 80), ("vmdns", DNS, "tcp", 53)]  # fmt: skip
    made: list[Host] = []
    try:
        for i, spec in enumerate(specs):
            made.append(start_host(*spec, index=20 + i))
        yield made
    finally:
        for i, host in enumerate(made):
            remove_host(host, 20 + i)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def runtime(images: Images, hosts: list[Host]) -> AsyncIterator[Runtime]:
    async with networked_runtime(images, prefix="ksb-vmnet-", dns=(DNS,)) as rt:
        yield rt


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sandbox(runtime: Runtime) -> Supervisor:
    desired = DesiredSandbox.model_validate(
        {"namespace": "default", "name": "net", "uid": str(uuid.uuid4()), "generation": 1,
         "spec": {"image": {"oci": "busybox:1.36"}, "memory": 256,
                  "network": {"policy": "PublicOnly",
                              "ports": [{"port": 8000, "hostPort": HOST_PORT}]}}}
    )  # fmt: skip
    supervisor = runtime.put(desired)
    async with asyncio.timeout(180):
        while supervisor.phase not in (Phase.RUNNING, Phase.CRASHED, Phase.FAILED):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert supervisor.status().phase == Phase.RUNNING, supervisor.record.message
    return supervisor


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


async def test_dns_goes_to_the_node_resolver(sandbox: Supervisor) -> None:
    _, out = await guest(sandbox, "cat /etc/resolv.conf; busybox nc -w 3 10.0.2.1 53")
    assert "nameserver 10.0.2.1" in out
    assert out.endswith(f"hello from {DNS}")  # DNS over TCP, DNAT'ed to the resolver


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
