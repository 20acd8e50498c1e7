"""``init``: a real init (busybox init reading /etc/inittab) becomes PID 1; the agent serves on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from kubesandbox_protocol import AgentClient
from tests.support.vms import BootedVM, booted_vm
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.vm, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def init_vm(agent_binary: Path) -> AsyncIterator[BootedVM]:
    async with booted_vm(agent_binary, init="/sbin/init") as vm:
        yield vm


async def test_real_init_is_pid_1_and_ran_its_inittab(init_vm: BootedVM) -> None:
    async with await AgentClient.connect(init_vm.socket) as client:
        comm = await client.run("/bin/cat", ["/proc/1/cmdline"])
        assert comm.stdout.split(b"\0")[0] in {b"/sbin/init", b"init"}

        async def marker_written() -> bool:
            return (await client.run("/bin/cat", ["/run/init-marker"])).code == 0

        await wait_until(marker_written, what="inittab sysinit marker")
        marker = await client.run("/bin/cat", ["/run/init-marker"])
        assert marker.stdout == b"handoff-sysinit-ran\n"


async def test_agent_keeps_serving_beside_init(init_vm: BootedVM) -> None:
    async with await AgentClient.connect(init_vm.socket) as client:
        result = await client.run("/bin/sh", ["-c", "ps -o pid,args | grep -c 'sleep 100000'"])
        assert int(result.stdout) >= 1
        await client.write_file("/tmp/after-handoff", b"ok")
        assert await client.read_file("/tmp/after-handoff") == b"ok"
