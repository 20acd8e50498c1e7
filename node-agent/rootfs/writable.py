"""The sandbox's writable layer: a sparse ext4 image holding ``upper/`` and ``work/``.

The staging directory is populated first (patches, scripts: ``patches``), then
``mkfs.ext4 -d`` copies it — owners, modes, xattrs such as ``trusted.overlay.opaque`` and
whiteout devices included — into a sparse file of the requested size. The guest agent mounts
it and uses ``upper/`` and ``work/`` as overlayfs upper and work directories
(docs/boot-config.md). The image appears by ``rename`` when complete.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from kubesandbox_node.rootfs.errors import RootfsError

DEFAULT_SIZE_MIB = 4096
MIN_SIZE_MIB = 64


def make_staging(staging: Path) -> Path:
    """Create ``staging/upper`` and ``staging/work``; returns the upper directory."""
    staging.mkdir(mode=0o700, parents=True, exist_ok=True)
    upper = staging / "upper"
    upper.mkdir(mode=0o755, exist_ok=True)
    (staging / "work").mkdir(mode=0o700, exist_ok=True)
    os.chmod(upper, 0o755)  # noqa: S103  (the guest's / : world-readable like any root)
    return upper


def build_ext4(staging: Path, image: Path, *, size_mib: int) -> None:
    if size_mib < MIN_SIZE_MIB:
        raise RootfsError(f"at least {MIN_SIZE_MIB} MiB", field="spec.rootfsSizeMiB")
    temp = image.with_name(f".{image.name}.tmp{os.getpid()}")
    try:
        with temp.open("wb") as handle:
            handle.truncate(size_mib * 1024 * 1024)  # sparse: no block is written here
        result = subprocess.run(
            [
                *("mkfs.ext4", "-q", "-F", "-L", "upper", "-m", "0"),
                *("-E", "root_owner=0:0,lazy_itable_init=1,nodiscard"),
                *("-d", str(staging), str(temp)),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            message = (result.stderr or result.stdout).strip()
            if "Could not allocate" in message or "No space" in message:
                raise RootfsError(
                    f"patches and scripts do not fit into {size_mib} MiB",
                    field="spec.rootfsSizeMiB",
                )
            raise RootfsError(f"mkfs.ext4 failed: {message}")
        os.replace(temp, image)
    finally:
        temp.unlink(missing_ok=True)
