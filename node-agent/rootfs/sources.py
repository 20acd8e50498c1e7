"""Copy sources of ``copyFile``/``copyDir`` patches, resolved before the rootfs is built.

The node agent reads the Secrets and ConfigMaps a sandbox's patches name (``required_objects``
says which) and hands their data to ``ResolvedSources``; node paths are read here, only under
the allowed prefixes, without following symlinks inside a copied directory, and bounded in
size. The storage code itself never talks to Kubernetes.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kubesandbox_api.spec import ContentSource, CopyDirPatch, CopyFilePatch, DirectorySource, Patch
from kubesandbox_node.rootfs.errors import PatchError
from kubesandbox_node.rootfs.hostpaths import HostPathPolicy

MAX_SOURCE_BYTES = 64 * 1024 * 1024
MAX_DIR_FILES = 10_000


@dataclass(frozen=True)
class RequiredObjects:
    secrets: frozenset[str]
    config_maps: frozenset[str]


def required_objects(patches: Sequence[Patch]) -> RequiredObjects:
    """The Secrets and ConfigMaps (in the sandbox's namespace) that the patches copy from."""
    secrets: set[str] = set()
    config_maps: set[str] = set()
    for patch in patches:
        op = patch.operation
        if isinstance(op, CopyFilePatch):
            if op.source.secret_key_ref is not None:
                secrets.add(op.source.secret_key_ref.name)
            if op.source.config_map_key_ref is not None:
                config_maps.add(op.source.config_map_key_ref.name)
        elif isinstance(op, CopyDirPatch):
            if op.source.secret is not None:
                secrets.add(op.source.secret.name)
            if op.source.config_map is not None:
                config_maps.add(op.source.config_map.name)
    return RequiredObjects(frozenset(secrets), frozenset(config_maps))


@dataclass
class ResolvedSources:
    """``PatchSources`` over data already read from the API (base64-decoded bytes by key)."""

    secrets: Mapping[str, Mapping[str, bytes]] = field(default_factory=dict)
    config_maps: Mapping[str, Mapping[str, bytes]] = field(default_factory=dict)
    host_paths: HostPathPolicy = field(default_factory=HostPathPolicy)

    def file(self, source: ContentSource, *, field: str) -> bytes:
        if source.secret_key_ref is not None:
            ref = source.secret_key_ref
            return self._key(self.secrets, "Secret", ref.name, ref.key, ref.optional, field)
        if source.config_map_key_ref is not None:
            ref = source.config_map_key_ref
            return self._key(self.config_maps, "ConfigMap", ref.name, ref.key, ref.optional, field)
        assert source.host_path is not None
        path = self.host_paths.check(source.host_path, field=f"{field}.hostPath", kind="file")
        return _read_file(path, field=f"{field}.hostPath")

    def directory(self, source: DirectorySource, *, field: str) -> Mapping[str, bytes]:
        if source.secret is not None:
            return self._object(self.secrets, "Secret", source.secret.name, field)
        if source.config_map is not None:
            return self._object(self.config_maps, "ConfigMap", source.config_map.name, field)
        assert source.host_path is not None
        path = self.host_paths.check(source.host_path, field=f"{field}.hostPath", kind="dir")
        return _read_tree(path, field=f"{field}.hostPath")

    @staticmethod
    def _object(
        objects: Mapping[str, Mapping[str, bytes]], kind: str, name: str, field: str
    ) -> Mapping[str, bytes]:
        if name not in objects:
            raise PatchError(f"{kind} {name!r} not found in the sandbox's namespace", field=field)
        return objects[name]

    @classmethod
    def _key(
        cls,
        objects: Mapping[str, Mapping[str, bytes]],
        kind: str,
        name: str,
        key: str,
        optional: bool,
        field: str,
    ) -> bytes:
        if optional and (name not in objects or key not in objects[name]):
            return b""
        data = cls._object(objects, kind, name, field)
        if key not in data:
            raise PatchError(f"{kind} {name!r} has no key {key!r}", field=field)
        return data[key]


def _read_file(path: Path, *, field: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(MAX_SOURCE_BYTES + 1)
    if len(data) > MAX_SOURCE_BYTES:
        raise PatchError(f"{path} is larger than {MAX_SOURCE_BYTES} bytes", field=field)
    return data


def _read_tree(root: Path, *, field: str) -> dict[str, bytes]:
    """Regular files below ``root`` by relative path; symlinks and special files are skipped."""
    files: dict[str, bytes] = {}
    total = 0
    for directory, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(filenames):
            full = Path(directory, name)
            if not stat.S_ISREG(full.lstat().st_mode):
                continue
            data = _read_file(full, field=field)
            total += len(data)
            files[str(full.relative_to(root))] = data
            if len(files) > MAX_DIR_FILES or total > MAX_SOURCE_BYTES:
                raise PatchError(
                    f"{root} holds more than {MAX_DIR_FILES} files or {MAX_SOURCE_BYTES} bytes",
                    field=field,
                )
        dirnames.sort()
    return files
