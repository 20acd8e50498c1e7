"""One VM per test module, booted with the real guest agent (skips when it is not built)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from microsandbox.agent import AgentClient as SdkClient

from kubesandbox_protocol import AgentClient
from tests.support.vms import AgentUnavailableError, BootedVM, booted_vm, guest_agent_binary


@pytest.fixture(scope="session")
def agent_binary() -> Path:
    try:
        return guest_agent_binary()
    except AgentUnavailableError as exc:
        pytest.skip(f"guest agent not available: {exc}")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def agent_vm(agent_binary: Path) -> AsyncIterator[BootedVM]:
    async with booted_vm(agent_binary) as vm:
        yield vm


@pytest_asyncio.fixture(loop_scope="module")
async def client(agent_vm: BootedVM) -> AsyncIterator[AgentClient]:
    async with await AgentClient.connect(agent_vm.socket) as connected:
        yield connected


@pytest_asyncio.fixture(loop_scope="module")
async def sdk(agent_vm: BootedVM) -> AsyncIterator[SdkClient]:
    connected = await SdkClient.connect(str(agent_vm.socket), timeout=30)
    try:
        yield connected
    finally:
        await connected.close()
