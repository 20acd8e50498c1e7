"""One call per sandbox: its rootfs source, patches and scripts in, what to boot out.

- OCI image: the pinned EROFS layers (from ``images.service``) plus a new sparse ext4 writable
  layer with the patches and scripts baked in → ``OverlayRoot``.
- Disk image: a qcow2 overlay over the base (``disk``) → ``DiskRoot``; patches and scripts are
  refused, as the seeds say (the guest sees a raw block device we do not interpret).
- Bind: the host directory as ``/`` → ``HostDirRoot``; patches and scripts are applied to the
  directory itself once, on first preparation.

The per-sandbox state lives in ``<root>/<uid>/``. A second ``prepare`` (a restart after Stop)
reuses the writable layer or overlay as it is: patches are applied once, before the first
boot, and what the sandbox wrote survives. ``delete`` removes the directory.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kubesandbox_api.spec import ImageSource, Patch
from kubesandbox_node.images.layers import CachedLayer, load_index
from kubesandbox_node.images.pins import SANDBOX_UID
from kubesandbox_node.rootfs.disk import DiskRoot, prepare_disk_root
from kubesandbox_node.rootfs.errors import PatchError, RootfsError
from kubesandbox_node.rootfs.hostpaths import HostPathPolicy
from kubesandbox_node.rootfs.lower import (
    ErofsReader,
    LowerReader,
    merge_layers,
    shadowed_directories,
)
from kubesandbox_node.rootfs.patches import PatchSources, apply_patches, write_scripts
from kubesandbox_node.rootfs.view import RootView
from kubesandbox_node.rootfs.writable import DEFAULT_SIZE_MIB, build_ext4, make_staging

UPPER_IMAGE = "upper.ext4"
DISK_OVERLAY = "root.qcow2"
BIND_MARKER = ".bind-prepared"


@dataclass(frozen=True)
class OverlayRoot:
    layers: list[Path]
    """EROFS images, lowest first (the boot configuration's ``root.layers`` order)."""
    upper: Path
    """The ext4 image with ``upper/`` and ``work/``."""


@dataclass(frozen=True)
class HostDirRoot:
    path: Path
    read_only: bool = False


PreparedRoot = OverlayRoot | DiskRoot | HostDirRoot


class SandboxRootfs:
    def __init__(
        self,
        root: Path,
        policy: HostPathPolicy,
        *,
        default_size_mib: int = DEFAULT_SIZE_MIB,
    ):
        self.root = root
        self.policy = policy
        self.default_size_mib = default_size_mib
        self.root.mkdir(parents=True, exist_ok=True)

    def sandbox_dir(self, uid: str) -> Path:
        if not SANDBOX_UID.match(uid):
            raise RootfsError(f"not a sandbox uid: {uid!r}", field="metadata.uid")
        return self.root / uid

    async def prepare(
        self,
        uid: str,
        source: ImageSource,
        *,
        layers: Sequence[CachedLayer] = (),
        patches: Sequence[Patch] = (),
        scripts: Mapping[str, str] | None = None,
        sources: PatchSources | None = None,
        size_mib: int | None = None,
    ) -> PreparedRoot:
        scripts = scripts or {}
        folder = self.sandbox_dir(uid)
        folder.mkdir(mode=0o700, exist_ok=True)
        if source.disk is not None:
            if patches:
                raise PatchError(
                    "patches are not supported with disk-image roots (spec.image.disk)",
                    field="spec.patches",
                )
            if scripts:
                raise PatchError(
                    "scripts are not supported with disk-image roots (spec.image.disk)",
                    field="spec.scripts",
                )
            disk = source.disk
            return await asyncio.to_thread(
                prepare_disk_root,
                folder / DISK_OVERLAY,
                disk.path,
                format=disk.format.value if disk.format else None,
                fstype=disk.fstype,
                policy=self.policy,
            )
        if source.bind is not None:
            host = self.policy.check(source.bind.path, field="spec.image.bind.path", kind="dir")
            marker = folder / BIND_MARKER
            if not marker.exists():
                await asyncio.to_thread(self._patch_dir, host, patches, scripts, sources)
                marker.touch()
            return HostDirRoot(host)
        upper = folder / UPPER_IMAGE
        if not upper.exists():
            await asyncio.to_thread(
                self._build_upper,
                folder,
                list(layers),
                patches,
                scripts,
                sources,
                size_mib or self.default_size_mib,
            )
        return OverlayRoot([layer.image for layer in layers], upper)

    def delete(self, uid: str) -> None:
        folder = self.sandbox_dir(uid)
        if folder.is_dir():
            shutil.rmtree(folder)

    def _patch_dir(
        self,
        host: Path,
        patches: Sequence[Patch],
        scripts: Mapping[str, str],
        sources: PatchSources | None,
    ) -> None:
        with RootView(host, whiteouts=False) as view:
            apply_patches(view, patches, sources)
            write_scripts(view, scripts)

    def _build_upper(
        self,
        folder: Path,
        layers: list[CachedLayer],
        patches: Sequence[Patch],
        scripts: Mapping[str, str],
        sources: PatchSources | None,
        size_mib: int,
        reader: LowerReader | None = None,
    ) -> None:
        staging = folder / "staging"
        if staging.exists():
            shutil.rmtree(staging)
        upper_dir = make_staging(staging)
        try:
            lower = merge_layers([load_index(layer.index) for layer in layers])
            reader = reader or ErofsReader([layer.image for layer in layers])
            with RootView(upper_dir, lower, reader) as view:
                for parts in shadowed_directories(lower):
                    with view.upper_dir(parts, create=True, field="spec.image.oci"):
                        pass  # created with the lower directory's real owner and mode
                apply_patches(view, patches, sources)
                write_scripts(view, scripts)
            build_ext4(staging, folder / UPPER_IMAGE, size_mib=size_mib)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
