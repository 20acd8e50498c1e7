"""Booting test VMs: the real kernel and boot image, the real guest agent, TCG here.

``guest_agent_binary()`` finds the agent the way ``make deps`` does (``$KUBESANDBOX_GUEST_AGENT``
or the last stdout line of ``guest-agent/build.sh``); tests skip with the reason when it is not
built. ``booted_vm()`` boots one VM with a busybox overlay root and yields it with its relay
socket; the caller decides the scope (the guest-agent suites boot one per module).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from kubesandbox_node.bootimage import cpio, initramfs
from kubesandbox_node.bootimage.paths import cache_root
from kubesandbox_node.vm import Drive, Share, VirtualMachine, VMSpec, boot
from kubesandbox_node.vm.bootconfig import BootConfig, OverlayRoot, Volume
from kubesandbox_node.vm.host import choose_accel, tsc_khz
from tests.support.images import cached_busybox_layer, ext4_upper

REPO = Path(__file__).resolve().parents[2]
BOOT_TIMEOUT = float(os.environ.get("KUBESANDBOX_TEST_BOOT_TIMEOUT", "120"))


class AgentUnavailableError(RuntimeError):
    pass


def guest_agent_binary() -> Path:
    configured = os.environ.get("KUBESANDBOX_GUEST_AGENT")
    if configured:
        return Path(configured)
    script = REPO / "guest-agent" / "build.sh"
    if not script.is_file():
        raise AgentUnavailableError("guest-agent/build.sh does not exist yet")
    result = subprocess.run(
        ["bash", str(script)],
        cwd=REPO,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    lines = result.stdout.decode().strip().splitlines()
    if result.returncode != 0 or not lines or not Path(lines[-1].strip()).is_file():
        raise AgentUnavailableError(
            f"guest-agent/build.sh failed ({result.returncode}): {result.stderr.decode()[-500:]}"
        )
    return Path(lines[-1].strip())


@dataclass
class BootedVM:
    vm: VirtualMachine
    socket: Path
    directory: Path


@contextlib.asynccontextmanager
async def booted_vm(
    agent: Path | bytes,
    *,
    init: str | None = None,
    env: Sequence[str] = ("PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"),
    extra: Sequence[cpio.Entry] = (),
    memory_mib: int = 512,
    cpus: int = 1,
    upper_mib: int = 512,
    with_disks: bool = True,
    shares: Sequence[Share] = (),
    volumes: Sequence[Volume] = (),
    ready_timeout: float = BOOT_TIMEOUT,
) -> AsyncIterator[BootedVM]:
    image = initramfs.build(agent, extra=extra)
    directory = Path(tempfile.mkdtemp(prefix="ksb-vm-"))
    try:
        drives: tuple[Drive, ...] = ()
        if with_disks:
            upper = ext4_upper(directory / "upper.ext4", upper_mib)
            drives = (
                Drive("layer0", cached_busybox_layer()),
                Drive("upper", upper, read_only=False),
            )
        config = BootConfig(
            hostname="guest",
            root=OverlayRoot(layers=["layer0"], upper="upper"),
            env=list(env),
            init=init,
            volumes=list(volumes),
            log_level="debug",
        )
        initrd = initramfs.write_initrd(image, config, directory / "initrd.cpio")
        accel = await choose_accel(image.kernel, cache_root(), allow_emulation=True)
        spec = VMSpec(
            name=directory.name,
            accel=accel,
            kernel=image.kernel,
            initrd=initrd,
            state_dir=directory,
            cpus=cpus,
            memory_mib=memory_mib,
            tsc_khz=tsc_khz(),
            drives=drives,
            shares=tuple(shares),
        )
        vm = await boot(spec, directory / "agent.sock", ready_timeout=ready_timeout)
        try:
            yield BootedVM(vm, directory / "agent.sock", directory)
        finally:
            await vm.stop(grace=10)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
