"""The boot pipeline without the Rust agent: kernel, base + per-sandbox initramfs, modules,
microvm wiring, relay, watchdog, QMP. A busybox stand-in writes a canned ``core.ready``."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from microsandbox.agent import AgentClient as SdkClient

from kubesandbox_node.bootimage import initramfs, standin
from kubesandbox_node.vm import BootError, VMSpec, boot
from kubesandbox_node.vm.host import kvm_usable
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


async def test_qemu_that_cannot_start_is_a_boot_error_with_its_output(tmp_path: Path) -> None:
    init, extra = standin.entries("ready")
    image = initramfs.build(init, extra=extra)
    spec = VMSpec(
        name="broken",
        kernel=tmp_path / "no-such-kernel",
        initrd=image.initramfs,
        state_dir=Path(tempfile.mkdtemp(prefix="ksb-broken-")),
    )
    try:
        with pytest.raises(BootError, match="QEMU exited") as caught:
            await boot(spec, spec.state_dir / "agent.sock", ready_timeout=30)
        assert "no-such-kernel" in caught.value.qemu_log
    finally:
        shutil.rmtree(spec.state_dir, ignore_errors=True)


async def test_kvm_probe_gives_a_cached_verdict(tmp_path: Path) -> None:
    init, extra = standin.entries("ready")
    image = initramfs.build(init, extra=extra)
    first = await kvm_usable(image.kernel, tmp_path)
    assert await kvm_usable(image.kernel, tmp_path) == first
    if not os.access("/dev/kvm", os.W_OK):
        assert first is False
    else:
        assert len(os.listdir(tmp_path)) == 1


def _open_files(pid: str) -> dict[int, str]:
    found = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):  # the listing's own fd is gone already
            found[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
    return found


def _environment_names(pid: int) -> set[str]:
    with open(f"/proc/{pid}/environ", "rb") as environ:
        return {e.split(b"=", 1)[0].decode() for e in environ.read().split(b"\0") if e}


async def test_qemu_gets_devnull_stdin_no_inherited_fds_and_a_scrubbed_environment(
    standin_vm: BootedVM,
) -> None:
    pid = standin_vm.vm.pid
    fds = _open_files(str(pid))
    assert fds[0] == "/dev/null"
    assert fds[1] == fds[2] == str(standin_vm.vm.spec.qemu_log)
    ours = set(_open_files("self").values())
    leaked = {t for t in fds.values() if t in ours and not t.startswith(("/dev/", "anon_inode:"))}
    assert not leaked
    assert _environment_names(pid) <= {"PATH", "LANG", "LC_ALL", "TMPDIR"}
