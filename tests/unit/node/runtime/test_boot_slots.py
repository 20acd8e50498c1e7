"""Boot slots: a burst of sandboxes boots a few at a time, not all at once (under TCG, all at
once made every boot of a hundred sandboxes miss the ready timeout together)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from kubesandbox_api.conditions import Phase
from kubesandbox_node.runtime.manager import Runtime
from kubesandbox_node.runtime.model import DesiredSandbox
from kubesandbox_node.runtime.supervisor import Supervisor, Timing, boot_slots
from kubesandbox_node.vm.machine import BootError
from kubesandbox_node.vm.spec import VMSpec
from tests.unit.node.runtime.fakes import FakeHandle, FakePreparer, FakeVMM


@dataclass
class GatedVMM(FakeVMM):
    """A fake VMM whose boots last until the test opens the gate; counts boots in flight."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: int = 0
    most: int = 0

    async def start(self, spec: VMSpec, relay_socket: Path, *, ready_timeout: float) -> FakeHandle:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await self.gate.wait()
            return await super().start(spec, relay_socket, ready_timeout=ready_timeout)
        finally:
            self.in_flight -= 1


@dataclass
class Node:
    runtime: Runtime
    vmm: GatedVMM


@pytest_asyncio.fixture
async def node() -> AsyncIterator[Node]:
    state = Path(tempfile.mkdtemp(prefix="ksb-slots-"))  # short: unix socket paths
    vmm = GatedVMM()
    timing = Timing(ready_timeout=5, policy_tick=0.05, concurrent_boots=2)
    runtime = Runtime(
        state, vmm=vmm, preparer=FakePreparer(state / "rootfs"), emulation=True, timing=timing
    )
    try:
        yield Node(runtime, vmm)
    finally:
        vmm.gate.set()
        for supervisor in list(runtime.sandboxes.values()):
            await supervisor.remove()
        shutil.rmtree(state, ignore_errors=True)


def desired(name: str) -> DesiredSandbox:
    return DesiredSandbox.model_validate(
        {"namespace": "default", "name": name, "uid": str(uuid.uuid4()), "generation": 1,
         "spec": {"image": {"oci": "busybox:1.36"}}}
    )  # fmt: skip


async def until(check: Callable[[], bool], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_a_burst_boots_two_at_a_time_and_the_rest_say_they_wait(node: Node) -> None:
    supervisors: list[Supervisor] = [node.runtime.put(desired(f"s{i}")) for i in range(5)]
    await until(lambda: node.vmm.in_flight == 2)
    waiting = [s for s in supervisors if s.record.message and "boot slot" in s.record.message]
    await asyncio.sleep(0.1)  # time for a third boot to start, if it could
    assert node.vmm.in_flight == 2
    assert len(waiting) == 3, [(s.phase, s.record.message) for s in supervisors]
    assert {s.phase for s in waiting} == {Phase.BOOTING}

    node.vmm.gate.set()
    await until(lambda: all(s.phase == Phase.RUNNING for s in supervisors))
    assert node.vmm.most == 2
    assert len(node.vmm.handles) == 5


async def test_a_failed_boot_gives_its_slot_back(node: Node) -> None:
    node.vmm.boot_error = BootError("QEMU exited with status 1 before the agent was ready", "")
    node.vmm.gate.set()
    failed = [node.runtime.put(desired(f"f{i}")) for i in range(3)]
    await until(lambda: all(s.phase == Phase.CRASHED for s in failed))
    node.vmm.boot_error = None
    ok = node.runtime.put(desired("ok"))
    await until(lambda: ok.phase == Phase.RUNNING)


@pytest.mark.parametrize(
    ("limit", "emulation", "expected"),
    [(None, True, 4), (None, False, 16), (0, True, 0), (3, True, 3), (-1, False, 0)],
)
def test_how_many_boot_at_once(limit: int | None, emulation: bool, expected: int) -> None:
    assert boot_slots(limit, emulation=emulation, cpus=2) == expected
