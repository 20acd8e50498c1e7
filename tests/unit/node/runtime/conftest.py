from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest_asyncio

from kubesandbox_node.runtime.manager import Runtime
from kubesandbox_node.runtime.supervisor import Timing
from tests.unit.node.runtime.fakes import FakePreparer, FakeVMM


@dataclass
class Env:
    runtime: Runtime
    vmm: FakeVMM
    preparer: FakePreparer
    state: Path

    def fresh_runtime(self) -> Runtime:
        """A second node agent on the same state directory (a restart)."""
        return Runtime(
            self.state, vmm=self.vmm, preparer=self.preparer, emulation=True, timing=TIMING
        )


TIMING = Timing(ready_timeout=5, policy_tick=0.05)


@pytest_asyncio.fixture
async def env() -> AsyncIterator[Env]:
    # unix socket paths are limited to 108 bytes: pytest's tmp_path can be longer
    state = Path(tempfile.mkdtemp(prefix="ksb-rt-"))
    vmm, preparer = FakeVMM(), FakePreparer(state / "rootfs")
    runtime = Runtime(state, vmm=vmm, preparer=preparer, emulation=True, timing=TIMING)
    env = Env(runtime, vmm, preparer, state)
    try:
        yield env
    finally:
        for supervisor in list(env.runtime.sandboxes.values()):
            await supervisor.remove()
        shutil.rmtree(state, ignore_errors=True)
