"""The runtime on real QEMU microVMs (TCG), with the stand-in guest: one VM for the module
walks through pause, resume, stop, start, re-adoption by a second runtime, and a crash."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from kubesandbox_api.conditions import Phase, Reason
from kubesandbox_node.runtime.cgroups import CgroupManager
from kubesandbox_node.runtime.manager import Runtime
from kubesandbox_node.runtime.model import DesiredSandbox
from kubesandbox_node.runtime.supervisor import Supervisor, Timing
from kubesandbox_node.runtime.vmm import QemuHandle, QemuVMM
from kubesandbox_protocol import AgentClient
from tests.integration.node.runtime.standin import StandinPreparer

pytestmark = [pytest.mark.vm, pytest.mark.asyncio(loop_scope="module")]
TIMING = Timing(ready_timeout=120, policy_tick=0.2)


def make_runtime(state: Path, preparer: StandinPreparer) -> Runtime:
    vmm = QemuVMM(cgroups=CgroupManager(parent=f"kubesandbox-test-{os.getpid()}"), run_as="nobody")
    return Runtime(state, vmm=vmm, preparer=preparer, emulation=True, timing=TIMING)


class World:
    def __init__(self) -> None:
        self.state = Path(tempfile.mkdtemp(prefix="ksb-vmrt-"))
        self.preparer = StandinPreparer()
        self.runtime = make_runtime(self.state, self.preparer)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world() -> AsyncIterator[World]:
    w = World()
    try:
        yield w
    finally:
        for uid in list(w.runtime.sandboxes):
            await w.runtime.remove(uid)
        shutil.rmtree(w.state, ignore_errors=True)
        CgroupManager(parent=f"kubesandbox-test-{os.getpid()}").remove_parents()


async def until(supervisor: Supervisor, *phases: Phase, within: float = 150) -> None:
    async with asyncio.timeout(within):
        while supervisor.phase not in phases:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


def remove(path: Path) -> None:
    path.unlink()


def exists(path: str | Path) -> bool:
    return os.path.exists(path)


def proc_environ(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")


def handle(supervisor: Supervisor) -> QemuHandle:
    assert isinstance(supervisor.handle, QemuHandle)
    return supervisor.handle


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sandbox(world: World) -> Supervisor:
    desired = DesiredSandbox.model_validate(
        {"namespace": "default", "name": "vm", "uid": str(uuid.uuid4()), "generation": 1,
         "spec": {"image": {"oci": "busybox:1.36"}, "memory": 256,
                  "lifecycle": {"stopGracePeriodSeconds": 1}}}
    )  # fmt: skip
    supervisor = world.runtime.put(desired)
    await until(supervisor, Phase.RUNNING, Phase.CRASHED, Phase.FAILED)
    assert supervisor.status().phase == Phase.RUNNING, supervisor.record.message
    return supervisor


async def test_boots_in_its_own_cgroup_and_session(sandbox: Supervisor) -> None:
    vm = handle(sandbox).record
    group = vm.cgroup()
    assert group is not None
    assert vm.pid in group.pids()
    assert os.getsid(vm.pid) == vm.pid
    usage = group.usage()
    assert usage.memory_limit_bytes == vm.memory_limit_bytes
    assert usage.memory_bytes > 0
    environ = proc_environ(vm.pid)
    assert all(e.split(b"=")[0] in (b"PATH", b"LANG", b"LC_ALL", b"TMPDIR", b"") for e in environ)
    fds = os.listdir(f"/proc/{vm.pid}/fd")
    assert len(fds) < 40
    assert os.stat(f"/proc/{vm.pid}").st_uid == 65534  # -runas nobody


async def test_relay_socket_serves_the_ready_preamble(sandbox: Supervisor) -> None:
    async with await AgentClient.connect(sandbox.relay_socket) as client:
        assert client.ready["agent_version"] == "standin"


async def test_pause_and_resume_freeze_the_vcpus(sandbox: Supervisor) -> None:
    await sandbox.pause()
    assert (await handle(sandbox).query("query-status"))["status"] == "paused"
    assert sandbox.status().phase == Phase.PAUSED
    await sandbox.resume()
    assert (await handle(sandbox).query("query-status"))["status"] == "running"


async def test_a_second_runtime_re_adopts_without_reboot(world: World, sandbox: Supervisor) -> None:
    pid = handle(sandbox).record.pid
    await world.runtime.close()
    world.runtime = make_runtime(world.state, world.preparer)
    assert await world.runtime.recover() == {sandbox.uid: True}
    adopted = world.runtime.sandboxes[sandbox.uid]
    assert handle(adopted).record.pid == pid
    assert adopted.status().phase == Phase.RUNNING
    async with await AgentClient.connect(adopted.relay_socket) as client:
        assert client.ready["agent_version"] == "standin"


async def test_stop_keeps_files_and_start_boots_again(world: World, sandbox: Supervisor) -> None:
    supervisor = world.runtime.sandboxes[sandbox.uid]
    pid = handle(supervisor).record.pid
    await supervisor.stop(grace=1)
    assert supervisor.status().phase == Phase.STOPPED
    assert not exists(f"/proc/{pid}")
    assert exists(supervisor.dir / "vm" / "console.log")
    await supervisor.start()
    assert supervisor.status().phase == Phase.RUNNING
    assert handle(supervisor).record.pid != pid


def next_generation(supervisor: Supervisor, **lifecycle: str) -> DesiredSandbox:
    data = supervisor.desired.model_dump(by_alias=True)
    data["generation"] += 1
    data["spec"]["lifecycle"] = {**data["spec"]["lifecycle"], **lifecycle}
    return DesiredSandbox.model_validate(data)


async def test_running_right_after_a_kill_boots_again(world: World, sandbox: Supervisor) -> None:
    """The operator's next desired state arriving while the kill is still finishing (it used
    to be dropped: the VM stayed Stopped)."""
    supervisor = world.runtime.sandboxes[sandbox.uid]
    pid = handle(supervisor).record.pid
    world.runtime.put(next_generation(supervisor, state="Stopped", stopMode="Kill"))
    world.runtime.put(next_generation(supervisor, state="Running"))
    await until(supervisor, Phase.STOPPED, Phase.PULLING, Phase.BOOTING, within=20)
    await until(supervisor, Phase.RUNNING)
    assert not exists(f"/proc/{pid}")
    assert handle(supervisor).record.pid != pid
    async with await AgentClient.connect(supervisor.relay_socket) as client:
        assert client.ready["agent_version"] == "standin"


async def test_qemu_dying_is_a_crash(world: World, sandbox: Supervisor) -> None:
    supervisor = world.runtime.sandboxes[sandbox.uid]
    os.kill(handle(supervisor).record.pid, signal.SIGKILL)
    await until(supervisor, Phase.CRASHED, within=20)
    assert supervisor.record.exit_status is not None
    assert supervisor.record.exit_status.reason == Reason.VMM_EXITED


async def test_a_vm_without_a_record_is_reaped_as_an_orphan(
    world: World, sandbox: Supervisor
) -> None:
    lost = world.runtime.put(
        DesiredSandbox.model_validate(
            {"namespace": "default", "name": "lost", "uid": str(uuid.uuid4()),
             "spec": {"image": {"oci": "busybox:1.36"}, "memory": 128}}
        )
    )  # fmt: skip
    await until(lost, Phase.RUNNING)
    vm = handle(lost).record
    await world.runtime.close()
    remove(lost.dir / "record.json")
    world.runtime = make_runtime(world.state, world.preparer)
    assert lost.uid not in await world.runtime.recover()
    assert not exists(f"/proc/{vm.pid}")
    group = vm.cgroup()
    assert group is not None
    assert not any(exists(p) for p in group.paths)


async def test_remove_leaves_nothing(world: World, sandbox: Supervisor) -> None:
    supervisor = world.runtime.sandboxes[sandbox.uid]
    await supervisor.start()
    vm = handle(supervisor).record
    await world.runtime.remove(sandbox.uid)
    assert not exists(f"/proc/{vm.pid}")
    assert not exists(supervisor.dir)
    group = vm.cgroup()
    assert group is not None
    assert not any(exists(p) for p in group.paths)
