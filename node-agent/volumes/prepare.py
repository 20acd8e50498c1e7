"""``spec.volumes`` turned into what the VM is started with.

- ``bind``: a host directory shared over virtio-fs, read-only or read-write as asked, and only
  under a prefix the node agent allows (``HostPathPolicy``).
- ``named``: a node-local volume ``<root>/<namespace>/<name>.ext4`` owned by the node agent: a
  sparse ext4 image created on first use and attached as a virtio-blk device (no host daemon;
  the data stays in one file the node agent owns). It outlives the sandbox and is deleted only
  through ``NamedVolumes.delete`` (the node agent's API), never with a sandbox.
  QEMU locks the image, so two running sandboxes cannot open it read-write at once: the second
  fails to boot with QEMU's lock error (share data between sandboxes with read-only mounts).
- ``tmpfs``: nothing on the host; the guest mounts a tmpfs of ``sizeMiB``.

Each host-backed volume gets a name (``vol0``, ``vol1`` ...): the virtio-fs tag of a bind
volume, the virtio serial of a named volume's device; the boot configuration hands it to the
guest.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kubesandbox_api.spec import Volume
from kubesandbox_node.rootfs.errors import RootfsError
from kubesandbox_node.rootfs.hostpaths import HostPathPolicy

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class PreparedVolume:
    mount_path: str
    kind: str
    """``virtiofs``, ``block`` or ``tmpfs`` (the boot configuration's volume kinds)."""
    host_path: Path | None = None
    tag: str | None = None
    read_only: bool = False
    size_mib: int | None = None


DEFAULT_NAMED_VOLUME_MIB = 4096
"""Apparent size of a new named volume; it is sparse, so only written blocks cost disk."""


class NamedVolumes:
    def __init__(self, root: Path, size_mib: int = DEFAULT_NAMED_VOLUME_MIB):
        self.root = root
        self.size_mib = size_mib
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, namespace: str, name: str, *, field: str) -> Path:
        for value, what in ((namespace, "namespace"), (name, "name")):
            if not _NAME.match(value):
                raise RootfsError(f"invalid volume {what} {value!r}", field=field)
        return self.root / namespace / f"{name}.ext4"

    def ensure(self, namespace: str, name: str, *, field: str) -> Path:
        """The volume's image, created (atomically, under a lock) on first use."""
        path = self.path(namespace, name, field=field)
        if path.is_file():
            return path
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        with (path.parent / f".{path.name}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if path.is_file():
                return path
            temporary = path.with_name(f".{path.name}.new")
            temporary.unlink(missing_ok=True)
            with temporary.open("wb") as image:
                image.truncate(self.size_mib * 1024 * 1024)
            made = subprocess.run(
                ["mkfs.ext4", "-q", "-F", "-L", name[:16], "-E", "root_owner=0:0", str(temporary)],
                capture_output=True,
                text=True,
                check=False,
            )
            if made.returncode != 0:
                temporary.unlink(missing_ok=True)
                raise RootfsError(
                    f"cannot create volume {name!r}: {made.stderr.strip()}", field=field
                )
            os.replace(temporary, path)
        return path

    def list(self, namespace: str) -> list[str]:
        folder = self.root / namespace
        if not folder.is_dir():
            return []
        return sorted(p.name.removesuffix(".ext4") for p in folder.glob("*.ext4"))

    def delete(self, namespace: str, name: str) -> None:
        path = self.path(namespace, name, field="volume")
        if path.is_file() and not path.is_symlink():
            path.unlink()


def prepare_volumes(
    volumes: Sequence[Volume],
    *,
    namespace: str,
    policy: HostPathPolicy,
    named: NamedVolumes,
    field: str = "spec.volumes",
) -> list[PreparedVolume]:
    prepared: list[PreparedVolume] = []
    seen: set[str] = set()
    for position, volume in enumerate(volumes):
        where = f"{field}[{position}]"
        mount_path = os.path.normpath(volume.mount_path)
        if mount_path == "/" or not mount_path.startswith("/"):
            raise RootfsError("mountPath must be an absolute path other than /", field=where)
        if mount_path in seen:
            raise RootfsError(f"{mount_path} is mounted twice", field=f"{where}.mountPath")
        seen.add(mount_path)
        tag = f"vol{position}"
        if volume.bind is not None:
            host = policy.check(volume.bind.path, field=f"{where}.bind.path", kind="dir")
            prepared.append(
                PreparedVolume(mount_path, "virtiofs", host, tag, read_only=volume.bind.read_only)
            )
        elif volume.named is not None:
            host = named.ensure(namespace, volume.named.name, field=f"{where}.named.name")
            prepared.append(
                PreparedVolume(mount_path, "block", host, tag, read_only=volume.named.read_only)
            )
        elif volume.tmpfs is not None:
            prepared.append(PreparedVolume(mount_path, "tmpfs", size_mib=volume.tmpfs.size_mib))
        else:  # pragma: no cover - the API's OneOf guarantees one of the above
            raise RootfsError("needs one of bind, named, tmpfs", field=where)
    return prepared
