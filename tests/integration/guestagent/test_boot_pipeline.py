"""The boot pipeline without the Rust agent: kernel, base + per-sandbox initramfs, modules,
microvm wiring, relay, watchdog, QMP. A busybox stand-in writes a canned ``core.ready``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from microsandbox.agent import AgentClient as SdkClient

from kubesandbox_node.bootimage import standin
from kubesandbox_node.vm import BootError
from kubesandbox_protocol import AgentClient
from kubesandbox_protocol.messages import MessageType, decode_body
from tests.support.vms import BootedVM, booted_vm

pytestmark = [pytest.mark.vm, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def standin_vm() -> AsyncIterator[BootedVM]:
    init, extra = standin.entries("ready")
    async with booted_vm(init, extra=extra, with_disks=False) as vm:
        yield vm


async def test_ready_frame_reaches_our_client_through_the_relay(standin_vm: BootedVM) -> None:
    async with await AgentClient.connect(standin_vm.socket) as client:
        assert client.ready["agent_version"] == "standin"
        assert client.id_end > client.id_start


async def test_ready_frame_reaches_the_real_sdk(standin_vm: BootedVM) -> None:
    sdk = await SdkClient.connect(str(standin_vm.socket), timeout=10)
    try:
        assert decode_body(sdk.ready_bytes()).t == MessageType.READY
    finally:
        await sdk.close()


async def test_modules_loaded_and_agent_port_found(standin_vm: BootedVM) -> None:
    console = standin_vm.vm.console()
    assert "standin: agent port is vport" in console
    assert "failed" not in console


async def test_qmp_reports_a_running_guest(standin_vm: BootedVM) -> None:
    status = await standin_vm.vm.qmp.execute("query-status")
    assert status["status"] == "running"


async def test_watchdog_kills_a_guest_that_never_gets_ready() -> None:
    init, extra = standin.entries("floor")
    with pytest.raises(BootError) as caught:
        async with booted_vm(init, extra=extra, with_disks=False, ready_timeout=12):
            pass
    assert "not ready after" in caught.value.reason
    assert standin.FLOOR_MARKER in caught.value.console
