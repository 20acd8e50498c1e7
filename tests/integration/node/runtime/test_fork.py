"""Forking a real VM (TCG, real guest agent, real preparer and network namespaces): the fork
starts from the source's live state (a background process, files in /tmp and in the writable
layer), takes its own identity (hostname, machine-id, MAC, network namespace), the two diverge,
the source keeps its QEMU, and the fork outlives the source. A TCP connection the source had
open is reset in the fork (its namespace never saw it open) and goes on in the source."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from kubesandbox_api.conditions import ConditionType, Phase, Reason
from kubesandbox_node.network.netns import NetnsNetwork
from kubesandbox_node.runtime.manager import Runtime
from kubesandbox_node.runtime.model import DesiredSandbox
from kubesandbox_node.runtime.prepare import SandboxPreparer
from kubesandbox_node.runtime.supervisor import Supervisor, Timing, has_state
from kubesandbox_node.runtime.vmm import process_start_ticks
from kubesandbox_node.vm import bootconfig
from tests.integration.node.runtime.conftest import Images, networked_runtime
from tests.integration.node.runtime.test_real_agent import until
from tests.integration.node.runtime.test_suspend import BACKGROUND, settle, sh
from tests.unit.node.runtime.test_supervisor import again

pytestmark = [pytest.mark.vm, pytest.mark.asyncio(loop_scope="module")]
GROUP = f"kubesandbox-fork-test-{os.getpid()}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def runtime(images: Images) -> AsyncIterator[Runtime]:
    timing = Timing(ready_timeout=120, policy_tick=0.25)
    async with networked_runtime(images, prefix="ksb-fork-", timing=timing) as rt:
        yield rt


def desired(
    name: str, image: dict[str, Any], policy: str = "PublicOnly", **resolved: Any
) -> DesiredSandbox:
    return DesiredSandbox.model_validate(
        {"namespace": "default", "name": name, "uid": str(uuid.uuid4()), "generation": 1,
         "spec": {"image": image, "memory": 128, "network": {"policy": policy}},
         "resolved": resolved}
    )  # fmt: skip


def netns(supervisor: Supervisor) -> str:
    vm = supervisor.record.vm
    assert vm is not None
    return os.readlink(f"/proc/{vm.pid}/ns/net")


IDENTITY = (
    "cat /proc/sys/kernel/hostname; cat /etc/machine-id 2>/dev/null || echo none; "
    "cat /sys/class/net/eth0/address"
)


async def test_a_fork_carries_the_live_state_takes_a_new_identity_and_diverges(
    runtime: Runtime,
) -> None:
    source = runtime.put(desired("origin", {"oci": "busybox:1.36"}))
    await until(source, Phase.RUNNING, Phase.CRASHED, Phase.FAILED)
    assert source.phase == Phase.RUNNING, source.record.message
    sleeper = (await sh(source, BACKGROUND)).strip()
    await sh(source, "echo in-tmp > /tmp/marker; echo in-layer > /layer-marker && sync")
    vm = source.record.vm
    assert vm is not None
    source_identity = (await sh(source, IDENTITY)).split()

    fork_d = desired("copy", {"sandbox": {"name": "origin"}}, forkOf=source.uid)
    fork = runtime.put(fork_d)
    await until(fork, Phase.RUNNING, Phase.CRASHED, Phase.FAILED)
    assert fork.phase == Phase.RUNNING, fork.record.message
    connected = {c.type: c for c in fork.record.conditions}[ConditionType.AGENT_CONNECTED]
    assert connected.reason == Reason.FORKED
    assert fork.record.fork is not None
    assert 0 < fork.record.fork.pause_seconds < 30
    image = fork.status().image
    assert image is not None
    assert image == source.status().image  # the fork reads its source's image layers
    # the source ran on: the same QEMU, running
    assert source.phase == Phase.RUNNING
    assert process_start_ticks(vm.pid) == vm.start_ticks
    assert source.record.vm is not None
    assert source.record.vm.pid == vm.pid

    # the fork has the source's processes and files
    cmdline = await sh(fork, f"cat /proc/{sleeper}/cmdline | tr '\\0' ' '")
    assert cmdline.startswith("sleep 100000")
    assert await sh(fork, "cat /tmp/marker /layer-marker") == "in-tmp\nin-layer\n"

    # ... under its own identity and network
    hostname, machine_id, mac = (await sh(fork, IDENTITY)).split()
    assert source_identity[0] == "origin"
    assert hostname == "copy"
    assert machine_id == fork.uid.replace("-", "") != source_identity[1]
    assert mac != source_identity[2]
    assert fork.record.vm is not None
    assert fork.record.vm.pid != vm.pid
    assert netns(fork) != netns(source)
    console = await asyncio.to_thread(
        (fork.dir / "vm" / "console.log").read_text, "utf-8", "replace"
    )
    assert "fork: now copy" in console  # the guest agent's account of core.forked
    assert "fork: entropy" not in console  # no step of it failed
    assert "RNDRESEEDCRNG" not in console
    assert "fork: network" not in console
    assert "fork: sethostname" not in console
    assert (await sh(source, IDENTITY)).split() == source_identity

    # the two diverge: neither sees the other's writes (writable layer and memory)
    await sh(source, "echo source > /layer-marker; echo source > /tmp/marker; sync")
    await sh(fork, "echo fork > /layer-marker; echo fork > /tmp/marker; touch /only-fork; sync")
    assert await sh(source, "cat /layer-marker /tmp/marker") == "source\nsource\n"
    assert await sh(fork, "cat /layer-marker /tmp/marker") == "fork\nfork\n"
    assert await sh(source, "test -e /only-fork && echo yes || echo no") == "no\n"

    # the fork outlives its source
    await runtime.remove(source.uid)
    assert process_start_ticks(vm.pid) != vm.start_ticks
    assert await sh(fork, "echo after > /after; sync; cat /after /layer-marker") == "after\nfork\n"
    assert fork.phase == Phase.RUNNING


async def test_a_fork_of_a_sandbox_that_is_not_on_this_node_fails_with_the_field(
    runtime: Runtime,
) -> None:
    fork = runtime.put(desired("lost", {"sandbox": {"name": "gone"}}, forkOf=str(uuid.uuid4())))
    await until(fork, Phase.RUNNING, Phase.CRASHED, Phase.FAILED)
    assert fork.phase == Phase.FAILED
    assert fork.record.message is not None
    assert "spec.image.sandbox.name: Sandbox 'gone' does not run on this node" in (
        fork.record.message
    )


async def test_the_sources_connections_are_reset_in_the_fork_not_sent_on(runtime: Runtime) -> None:
    peers: list[str] = []
    received = asyncio.Event()
    handlers: list[asyncio.Task[Any]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        peers.append(writer.get_extra_info("peername")[0])
        try:
            while await reader.readline():
                received.set()
        finally:
            writer.close()

    source_d = desired("talker", {"oci": "busybox:1.36"}, policy="All")
    assert isinstance(runtime.preparer, SandboxPreparer)
    network = runtime.preparer.network
    assert isinstance(network, NetnsNetwork)
    source = runtime.put(source_d)
    await until(source, Phase.RUNNING, Phase.CRASHED, Phase.FAILED)
    assert source.phase == Phase.RUNNING, source.record.message
    node_ip = network.plan(source_d).link(network.link_base)[0]  # the node's end of its link
    server = await asyncio.start_server(serve, node_ip, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        talk = f"while true; do echo tick; sleep 0.2; done | nc {node_ip} {port}; echo $? >/tmp/nc"
        await sh(source, f"setsid sh -c '{talk}' </dev/null >/dev/null 2>&1 &")
        async with asyncio.timeout(30):
            await received.wait()

        fork_d = desired("listener", {"sandbox": {"name": "talker"}}, "All", forkOf=source.uid)
        fork = runtime.put(fork_d)
        await until(fork, Phase.RUNNING, Phase.CRASHED, Phase.FAILED)
        assert fork.phase == Phase.RUNNING, fork.record.message
        async with asyncio.timeout(30):  # the fork's copy of the connection fails at its next send
            while "nc" not in await sh(fork, "ls /tmp"):  # noqa: ASYNC110
                await asyncio.sleep(0.2)
        received.clear()
        async with asyncio.timeout(10):  # the source's goes on
            await received.wait()
        assert await sh(source, "test -e /tmp/nc && echo ended || echo running") == "running\n"
        assert peers == [network.plan(source_d).link(network.link_base)[1]]
        rules = await asyncio.to_thread(
            subprocess.run,
            ["ip", "netns", "exec", network.plan(fork_d).netns,
             "iptables", "-v", "-x", "-n", "-L", "FORWARD"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        reset = next(line for line in rules.stdout.splitlines() if "tcp-reset" in line)
        assert int(reset.split()[0]) > 0, rules.stdout  # the fork's segments stopped there
    finally:
        server.close()
        for handler in handlers:
            handler.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


async def test_a_suspended_source_is_forked_from_its_saved_state_and_a_stopped_fork_comes_back(
    runtime: Runtime,
) -> None:
    source_d = desired("sleepy", {"oci": "busybox:1.36"})
    source = runtime.put(source_d)
    await until(source, Phase.RUNNING, Phase.CRASHED, Phase.FAILED)
    assert source.phase == Phase.RUNNING, source.record.message
    sleeper = (await sh(source, BACKGROUND)).strip()
    await sh(source, "echo kept > /layer-marker; sync")
    runtime.put(again(source_d, 2, state="Suspended"))
    await settle(source, Phase.SUSPENDED)
    saved = source.record.saved
    assert saved is not None

    fork_d = desired("woken", {"sandbox": {"name": "sleepy"}}, forkOf=source.uid)
    fork = runtime.put(fork_d)
    await until(fork, Phase.RUNNING, Phase.CRASHED, Phase.FAILED)
    assert fork.phase == Phase.RUNNING, fork.record.message
    assert fork.record.fork is not None
    assert fork.record.fork.pause_seconds == 0  # nothing ran to be paused
    assert source.status().phase == Phase.SUSPENDED  # untouched: its state is still there
    assert has_state(saved)
    assert (await sh(fork, f"cat /proc/{sleeper}/cmdline")).startswith("sleep")
    assert (await sh(fork, IDENTITY)).split()[:2] == ["woken", fork.uid.replace("-", "")]

    # a stopped fork boots its own machine and takes its identity again
    await sh(fork, "echo fork > /layer-marker; sync")
    runtime.put(again(fork_d, 2, state="Stopped", stopMode="Kill"))
    await until(fork, Phase.STOPPED, Phase.CRASHED, Phase.FAILED)
    runtime.put(again(fork_d, 3, state="Running"))
    await until(fork, Phase.RUNNING, Phase.CRASHED, Phase.FAILED)
    assert fork.phase == Phase.RUNNING, fork.record.message
    assert await sh(fork, "cat /layer-marker") == "fork\n"
    hostname, machine_id, mac = (await sh(fork, IDENTITY)).split()
    assert (hostname, machine_id) == ("woken", fork.uid.replace("-", ""))
    assert fork.record.fork.network is not None
    assert mac == bootconfig.Network.model_validate(fork.record.fork.network).interfaces[0].mac
    assert "inet 10.0.2.15/24" in await sh(fork, "ip addr show eth0")
    assert "default via 10.0.2.1" in await sh(fork, "ip route")

    # the source resumes as itself
    runtime.put(again(source_d, 3, state="Running"))
    await settle(source, Phase.RUNNING)
    assert await sh(source, "hostname; cat /layer-marker") == "sleepy\nkept\n"
