"""Disk-image roots: a per-sandbox qcow2 overlay over a read-only base image.

The base (qcow2, raw or vmdk; given in the spec or detected from its content by
``qemu-img info``) is never opened for writing: the sandbox's disk is a new qcow2 whose
backing file is the base, so two sandboxes never share a writable disk. A base that itself
has a backing file must keep the whole chain under the allowed prefixes (a qcow2 header could
otherwise name any file on the node).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubesandbox_node.rootfs.errors import RootfsError
from kubesandbox_node.rootfs.hostpaths import HostPathPolicy

FORMATS = ("qcow2", "raw", "vmdk")


@dataclass(frozen=True)
class DiskRoot:
    overlay: Path
    base: Path
    base_format: str
    fstype: str | None
    """From the spec; ``None`` lets the guest probe."""


def image_info(path: Path, *, field: str) -> dict[str, Any]:
    result = subprocess.run(
        ["qemu-img", "info", "--output=json", "--backing-chain", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RootfsError(f"qemu-img cannot read {path}: {result.stderr.strip()}", field=field)
    chain: list[dict[str, Any]] = json.loads(result.stdout)
    return {"format": chain[0].get("format"), "chain": chain}


def prepare_disk_root(
    overlay: Path,
    path: str,
    *,
    format: str | None,
    fstype: str | None,
    policy: HostPathPolicy,
    field: str = "spec.image.disk",
) -> DiskRoot:
    base = policy.check(path, field=f"{field}.path", kind="file")
    info = image_info(base, field=f"{field}.path")
    detected = info["format"]
    for layer in info["chain"][1:]:
        backing = layer.get("filename", "")
        policy.check(backing, field=f"{field}.path (backing file {backing})", kind="file")
    if format is None:
        if detected not in FORMATS:
            raise RootfsError(
                f"{path} is {detected!r}, not one of {FORMATS}", field=f"{field}.path"
            )
        format = detected
    elif format != detected and format != "raw":
        raise RootfsError(
            f"{path} is {detected}, not {format} as spec.image.disk.format says",
            field=f"{field}.format",
        )
    if overlay.exists():  # a restart: keep what the sandbox wrote
        return DiskRoot(overlay, base, format, fstype)
    temp = overlay.with_name(f".{overlay.name}.tmp{os.getpid()}")
    result = subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", format, "-b", str(base), str(temp)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        temp.unlink(missing_ok=True)
        raise RootfsError(f"qemu-img create failed: {result.stderr.strip()}", field=field)
    os.replace(temp, overlay)
    return DiskRoot(overlay, base, format, fstype)
