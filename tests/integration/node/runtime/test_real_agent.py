"""The runtime with the real guest agent and the real preparer: image pulled from a loopback
registry through the docker.io mirror, EROFS layers, writable ext4 layer, boot config.

One VM walks through exec (our client and the real SDK), a running command surviving a
drain until it ends, a graceful stop through ``core.shutdown``, the writable layer kept over
a restart, and a guest kernel panic. Two more VMs show max duration and idle timeout."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import pytest_asyncio
from microsandbox.agent import AgentClient as SdkClient

from kubesandbox_api.conditions import Phase, Reason
from kubesandbox_node.runtime.model import DesiredSandbox
from kubesandbox_node.runtime.supervisor import Supervisor
from kubesandbox_protocol import AgentClient
from kubesandbox_protocol.client import AgentError
from tests.integration.node.runtime.conftest import World
from tests.support.sdk import sdk_exec

pytestmark = [pytest.mark.vm, pytest.mark.asyncio(loop_scope="module")]


def desired(**spec: Any) -> DesiredSandbox:
    body = {"image": {"oci": "busybox:1.36"}, "memory": 256, **spec}
    return DesiredSandbox.model_validate(
        {"namespace": "default", "name": "real", "uid": str(uuid.uuid4()), "generation": 1,
         "spec": body}
    )  # fmt: skip


async def until(supervisor: Supervisor, *phases: Phase, within: float = 150) -> None:
    async with asyncio.timeout(within):
        while supervisor.phase not in phases:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def boot(world: World, **spec: Any) -> Supervisor:
    supervisor = world.runtime.put(desired(**spec))
    await until(supervisor, Phase.RUNNING, Phase.CRASHED, Phase.FAILED)
    assert supervisor.status().phase == Phase.RUNNING, supervisor.record.message
    return supervisor


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sandbox(world: World) -> Supervisor:
    return await boot(
        world,
        env=[{"name": "GREETING", "value": "hello"}],
        patches=[{"text": {"path": "/etc/motd", "content": "patched\n"}}],
        lifecycle={"stopGracePeriodSeconds": 20},
    )


async def test_exec_through_the_relay_with_our_client(sandbox: Supervisor) -> None:
    async with await AgentClient.connect(sandbox.relay_socket) as client:
        result = await client.run("sh", ["-c", "echo $GREETING $FROM_IMAGE; cat /etc/motd"])
    assert result.stdout == b"hello busybox\npatched\n"


async def test_exec_through_the_relay_with_the_real_sdk(sandbox: Supervisor) -> None:
    sdk = await SdkClient.connect(str(sandbox.relay_socket), timeout=10)
    try:
        code, out, _ = await sdk_exec(sdk, "sh", ["-c", "echo from-sdk > /root.txt; echo ok"])
    finally:
        await sdk.close()
    assert (code, out) == (0, b"ok\n")


async def test_image_pinned_by_digest(sandbox: Supervisor) -> None:
    image = sandbox.record.image
    assert image is not None
    assert image.reference == "busybox:1.36"
    assert image.digest.startswith("sha256:")
    assert len(image.layers) == 1


async def test_graceful_stop_keeps_the_writable_layer(sandbox: Supervisor) -> None:
    pid = sandbox.record.vm.pid if sandbox.record.vm else 0
    stop = sandbox.stop()
    await stop
    assert sandbox.status().phase == Phase.STOPPED
    exit_status = sandbox.record.exit_status
    assert exit_status is not None
    assert exit_status.success
    assert sandbox.record.message == "stopped (guest-shutdown)"
    await sandbox.start()
    assert sandbox.status().phase == Phase.RUNNING
    assert sandbox.record.vm is not None
    assert sandbox.record.vm.pid != pid
    async with await AgentClient.connect(sandbox.relay_socket) as client:
        result = await client.run("cat", ["/root.txt"])
    assert result.stdout == b"from-sdk\n"


async def test_drain_lets_a_running_command_finish(sandbox: Supervisor) -> None:
    async with await AgentClient.connect(sandbox.relay_socket) as client:
        slow = await client.exec("sh", ["-c", "busybox sleep 2; echo finished"])
        await asyncio.sleep(0.5)
        drain = sandbox.drain()
        await until(sandbox, Phase.DRAINING, within=10)
        with pytest.raises(AgentError, match="draining"):
            await client.run("echo", ["late"])
        assert (await slow.wait()).stdout == b"finished\n"
        await drain
    assert sandbox.status().phase == Phase.STOPPED


async def test_guest_kernel_panic_is_a_crash(sandbox: Supervisor) -> None:
    await sandbox.start()
    async with await AgentClient.connect(sandbox.relay_socket) as client:
        with pytest.raises((AgentError, ConnectionError, asyncio.IncompleteReadError)):
            await client.run("sh", ["-c", "echo c > /proc/sysrq-trigger"])
    await until(sandbox, Phase.CRASHED, within=30)
    exit_status = sandbox.record.exit_status
    assert exit_status is not None
    assert exit_status.reason == Reason.GUEST_PANIC


async def test_bind_volumes_are_shared_over_virtio_fs(world: World) -> None:
    for name in ("data", "tools"):
        (world.host / name).mkdir(parents=True)
        (world.host / name / "readme").write_text(f"{name} on the node\n")
    supervisor = await boot(
        world,
        volumes=[
            {"mountPath": "/data", "bind": {"path": str(world.host / "data")}},
            {"mountPath": "/tools", "bind": {"path": str(world.host / "tools"), "readOnly": True}},
        ],
    )
    try:
        async with await AgentClient.connect(supervisor.relay_socket) as client:
            both = await client.run("cat", ["/data/readme", "/tools/readme"])
            assert both.stdout == b"data on the node\ntools on the node\n"
            await client.write_file("/data/result", b"from the sandbox\n")
            refused = await client.run("sh", ["-c", "echo x > /tools/new"])
        assert (world.host / "data" / "result").read_bytes() == b"from the sandbox\n"
        assert refused.code != 0
        assert not (world.host / "tools" / "new").exists()
    finally:
        await world.runtime.remove(supervisor.desired.uid)
    assert not list(world.state.rglob("fs-*.sock")), "a virtiofsd socket outlived its sandbox"


async def test_max_duration_drains_to_stopped(world: World) -> None:
    supervisor = await boot(world, lifecycle={"maxDurationSeconds": 2})
    await until(supervisor, Phase.STOPPED, within=60)
    exit_status = supervisor.record.exit_status
    assert exit_status is not None
    assert exit_status.reason == Reason.MAX_DURATION_EXCEEDED
    await world.runtime.remove(supervisor.uid)


async def test_idle_timeout_drains_to_stopped(world: World) -> None:
    supervisor = await boot(world, lifecycle={"idleTimeoutSeconds": 2})
    await until(supervisor, Phase.STOPPED, within=60)
    exit_status = supervisor.record.exit_status
    assert exit_status is not None
    assert exit_status.reason == Reason.IDLE_TIMEOUT
    await world.runtime.remove(supervisor.uid)


async def test_named_volume_outlives_its_sandbox(world: World) -> None:
    volumes = [{"mountPath": "/data", "named": {"name": "shared"}}]
    first = world.runtime.put(desired(volumes=volumes))
    await until(first, Phase.RUNNING, Phase.FAILED, Phase.CRASHED, within=150)
    assert first.status().phase == Phase.RUNNING, first.record.message
    async with await AgentClient.connect(first.relay_socket) as client:
        wrote = await client.run(
            "sh", ["-c", "echo kept > /data/f && sync && grep -c ' /data ' /proc/mounts"]
        )
        assert (wrote.code, wrote.stdout) == (0, b"1\n")
    await world.runtime.remove(first.uid)

    second = world.runtime.put(desired(volumes=volumes))
    await until(second, Phase.RUNNING, Phase.FAILED, Phase.CRASHED, within=150)
    assert second.status().phase == Phase.RUNNING, second.record.message
    async with await AgentClient.connect(second.relay_socket) as client:
        assert (await client.run("cat", ["/data/f"])).stdout == b"kept\n"
    await world.runtime.remove(second.uid)
