"""``spec.volumes`` turned into what the VM is started with.

- ``bind``: a host directory shared over virtio-9p, read-only or read-write as asked, and only
  under a prefix the node agent allows (``HostPathPolicy``).
- ``named``: a node-local directory ``<root>/<namespace>/<name>`` owned by the node agent,
  created on first use, shared over virtio-9p; it outlives the sandbox and is deleted only
  through ``NamedVolumes.delete`` (the node agent's API), never with a sandbox.
- ``tmpfs``: nothing on the host; the guest mounts a tmpfs of ``sizeMiB``.

Each host-backed volume gets a 9p mount tag (``vol0``, ``vol1`` ...), which the boot
configuration hands to the guest.
"""

from __future__ import annotations

import os
import re
import shutil
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
    """``9p`` or ``tmpfs`` (the boot configuration's volume kinds)."""
    host_path: Path | None = None
    tag: str | None = None
    read_only: bool = False
    size_mib: int | None = None


class NamedVolumes:
    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, namespace: str, name: str, *, field: str) -> Path:
        for value, what in ((namespace, "namespace"), (name, "name")):
            if not _NAME.match(value):
                raise RootfsError(f"invalid volume {what} {value!r}", field=field)
        return self.root / namespace / name

    def ensure(self, namespace: str, name: str, *, field: str) -> Path:
        path = self.path(namespace, name, field=field)
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
        return path

    def list(self, namespace: str) -> list[str]:
        folder = self.root / namespace
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def delete(self, namespace: str, name: str) -> None:
        path = self.path(namespace, name, field="volume")
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)


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
                PreparedVolume(mount_path, "9p", host, tag, read_only=volume.bind.read_only)
            )
        elif volume.named is not None:
            host = named.ensure(namespace, volume.named.name, field=f"{where}.named.name")
            prepared.append(
                PreparedVolume(mount_path, "9p", host, tag, read_only=volume.named.read_only)
            )
        elif volume.tmpfs is not None:
            prepared.append(PreparedVolume(mount_path, "tmpfs", size_mib=volume.tmpfs.size_mib))
        else:  # pragma: no cover - the API's OneOf guarantees one of the above
            raise RootfsError("needs one of bind, named, tmpfs", field=where)
    return prepared
