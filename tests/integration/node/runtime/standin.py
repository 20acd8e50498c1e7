"""A preparer for VM tests that boots the busybox ``ready`` stand-in (no Rust agent needed):
real kernel, real initramfs, real QEMU, real relay; the stand-in sends ``core.ready`` and
then sleeps, ignoring ``core.shutdown``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from kubesandbox_api.status import ImageStatus
from kubesandbox_node.bootimage import initramfs, standin
from kubesandbox_node.bootimage.initramfs import BootImage
from kubesandbox_node.runtime.model import DesiredSandbox
from kubesandbox_node.vm import bootconfig
from kubesandbox_node.vm.bootconfig import BootConfig, OverlayRoot
from kubesandbox_node.vm.host import tsc_khz
from kubesandbox_node.vm.spec import VMSpec


def standin_image() -> BootImage:
    init, extra = standin.entries("ready")
    return initramfs.build(init, extra=extra)


@dataclass
class StandinPreparer:
    image_: BootImage = field(default_factory=standin_image)
    removed: list[str] = field(default_factory=list)
    updated: list[int] = field(default_factory=list)
    forked: list[tuple[str, str]] = field(default_factory=list)
    rotated: list[dict[str, str]] = field(default_factory=list)

    async def image(self, desired: DesiredSandbox) -> ImageStatus | None:
        return None

    async def build(self, desired: DesiredSandbox, vm_dir: Path) -> VMSpec:
        config = BootConfig(root=OverlayRoot(layers=[], upper="upper"))
        await asyncio.to_thread(vm_dir.mkdir, parents=True, exist_ok=True)
        initrd = await asyncio.to_thread(
            initramfs.write_initrd, self.image_, config, vm_dir / "initrd.cpio"
        )
        return VMSpec(
            name=desired.uid,
            kernel=self.image_.kernel,
            initrd=initrd,
            state_dir=vm_dir,
            cpus=desired.spec.cpus,
            memory_mib=desired.spec.memory_mib,
            tsc_khz=tsc_khz(),
        )

    async def claim_env(self, desired: DesiredSandbox) -> list[str]:
        return [f"{v.name}={v.value}" for v in desired.spec.env if v.value is not None]

    async def update_live(self, previous: DesiredSandbox, desired: DesiredSandbox) -> None:
        self.updated.append(desired.generation)

    async def fork(
        self, desired: DesiredSandbox, source_uid: str
    ) -> tuple[bootconfig.Network | None, list[str]]:
        self.forked.append((source_uid, desired.uid))
        return None, []

    async def remove(self, desired: DesiredSandbox) -> None:
        self.removed.append(desired.uid)

    async def egress_trust(self, desired: DesiredSandbox, relay_socket: Path) -> None:
        return None

    def rotate_secrets(self, desired: DesiredSandbox) -> None:
        self.rotated.append(dict(desired.resolved.secrets))

    async def claim_network(self, member: DesiredSandbox, claimant: DesiredSandbox) -> None:
        """The stand-in boots without a network: no egress to set up."""

    def share_image(self, source_uid: str, uid: str) -> None:
        """No image layers to pin: the stand-in boots from the test's rootfs image."""

    def release_image(self, uid: str) -> None:
        """Likewise."""
