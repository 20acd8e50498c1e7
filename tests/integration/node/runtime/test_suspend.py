"""Suspend and resume of a real VM (TCG) with the real guest agent and preparer: the state
goes to a private file and QEMU ends; a restarted node agent keeps the sandbox suspended; the
restore continues the same boot (uptime, boot id, a background process, files in /tmp and in
the writable layer); delete removes the state."""

from __future__ import annotations

import asyncio
import stat
import time

import pytest

from kubesandbox_api.conditions import Phase, Reason
from kubesandbox_node.runtime.manager import Runtime
from kubesandbox_node.runtime.records import STATE_FILE
from kubesandbox_node.runtime.supervisor import Supervisor
from kubesandbox_node.runtime.vmm import process_start_ticks
from kubesandbox_protocol import AgentClient
from tests.integration.node.runtime.conftest import World
from tests.integration.node.runtime.test_real_agent import desired, until
from tests.unit.node.runtime.test_supervisor import again

pytestmark = [pytest.mark.vm, pytest.mark.asyncio(loop_scope="module")]


async def sh(supervisor: Supervisor, script: str) -> str:
    async with await AgentClient.connect(supervisor.relay_socket) as client:
        result = await client.run("sh", ["-c", script])
    assert result.code == 0, result.stderr
    return result.stdout.decode()


async def settle(supervisor: Supervisor, phase: Phase) -> None:
    """Until ``phase``, a crash, or a failed suspend or resume (which say why)."""

    def failed() -> bool:
        return supervisor.phase in (Phase.CRASHED, Phase.FAILED) or any(
            c.reason in (Reason.SUSPEND_FAILED, Reason.RESUME_FAILED)
            for c in supervisor.record.conditions
        )

    async with asyncio.timeout(120):
        while supervisor.phase != phase and not failed():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert supervisor.phase == phase, supervisor.record.message


def alive(pid: int, ticks: int) -> bool:
    return process_start_ticks(pid) == ticks


GUEST_FACTS = "cut -d' ' -f1 /proc/uptime; cat /proc/sys/kernel/random/boot_id"
BACKGROUND = "setsid sleep 100000 </dev/null >/dev/null 2>&1 & echo $!"


async def test_suspend_keeps_the_sandbox_through_a_node_agent_restart_and_resumes_it(
    world: World,
) -> None:
    d = desired(memory=128)
    supervisor = world.runtime.put(d)
    await until(supervisor, Phase.RUNNING, Phase.CRASHED, Phase.FAILED)
    assert supervisor.phase == Phase.RUNNING, supervisor.record.message
    sleeper = (await sh(supervisor, BACKGROUND)).strip()
    await sh(supervisor, "echo in-tmp > /tmp/marker; echo in-layer > /layer-marker && sync")
    uptime_before, boot_id = (await sh(supervisor, GUEST_FACTS)).split()
    read_at = time.monotonic()
    vm = supervisor.record.vm
    assert vm is not None
    cgroup = vm.cgroup()

    # suspend: the state is in a private file, QEMU and its cgroup are gone
    world.runtime.put(again(d, 2, state="Suspended"))
    await settle(supervisor, Phase.SUSPENDED)
    assert not alive(vm.pid, vm.start_ticks)
    assert cgroup is None or not any(p.exists() for p in cgroup.paths)
    state = supervisor.dir / STATE_FILE
    info = state.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert stat.S_IMODE(supervisor.dir.stat().st_mode) == 0o700
    suspension = supervisor.status().suspension
    assert suspension is not None
    assert suspension.state_bytes == info.st_size
    assert 1 << 20 < info.st_size < 128 << 20  # touched memory, not the guest's whole RAM
    assert suspension.reason == Reason.SUSPENDED_BY_USER

    # a node agent restart while suspended loses nothing
    await world.runtime.close()
    world.runtime = Runtime(
        world.state,
        vmm=world.runtime.vmm,
        preparer=world.preparer,
        emulation=True,
        timing=world.runtime.timing,
    )
    assert await world.runtime.recover() == {d.uid: False}
    supervisor = world.runtime.sandboxes[d.uid]
    assert supervisor.phase == Phase.SUSPENDED
    assert state.exists()
    await asyncio.sleep(1)  # suspended time must not count in the guest's uptime

    # resume: the same boot goes on
    world.runtime.put(again(d, 3, state="Running"))
    await settle(supervisor, Phase.RUNNING)
    assert not state.exists()
    uptime_after, boot_id_after = (await sh(supervisor, GUEST_FACTS)).split()
    elapsed = time.monotonic() - read_at
    assert boot_id_after == boot_id
    assert float(uptime_before) <= float(uptime_after) < float(uptime_before) + elapsed - 1
    assert (await sh(supervisor, f"cat /proc/{sleeper}/cmdline | tr '\\0' ' '")).startswith(
        "sleep 100000"
    )
    assert await sh(supervisor, "cat /tmp/marker /layer-marker") == "in-tmp\nin-layer\n"
    resumed = supervisor.status().suspension
    assert resumed is not None
    assert resumed.resumed_at is not None
    assert resumed.state_bytes == 0
    assert supervisor.record.vm is not None
    assert supervisor.record.vm.pid != vm.pid

    # and it suspends again, and delete removes the state with the sandbox
    world.runtime.put(again(d, 4, state="Suspended"))
    await settle(supervisor, Phase.SUSPENDED)
    assert state.exists()
    folder = supervisor.dir
    await world.runtime.remove(d.uid)
    assert not state.exists()
    assert not folder.exists()
