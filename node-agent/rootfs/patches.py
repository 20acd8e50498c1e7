"""``spec.patches`` and ``spec.scripts`` applied to a root view, with the seeds' semantics.

- Patches apply in list order; each sees what the image and the earlier patches made.
- ``text``, ``file``, ``copyFile``, ``copyDir`` and ``symlink`` fail on a path that already
  exists unless ``replace: true`` (a directory is never replaced by a file).
- ``mkdir`` (with parents) and ``remove`` are idempotent; removing a path the image's layers
  have writes a whiteout, so the guest no longer sees it.
- ``append`` appends to a file (copying an image file up first) or creates it.
- Copy sources are bytes the node agent resolved from ConfigMaps, Secrets or allowed node
  paths (``PatchSources``); this module never talks to Kubernetes.
- Scripts become ``/.msb/scripts/NAME`` with mode 0755, replacing what the image has there.

Every error names the patch's field (``spec.patches[2].copyFile.path``).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping, Sequence
from typing import Protocol

from kubesandbox_api.spec import (
    AppendPatch,
    ContentSource,
    CopyDirPatch,
    CopyFilePatch,
    DirectorySource,
    FilePatch,
    MkdirPatch,
    Patch,
    RemovePatch,
    SymlinkPatch,
    TextPatch,
)
from kubesandbox_node.rootfs.errors import PatchError
from kubesandbox_node.rootfs.view import RootView

SCRIPTS_DIR = "/.msb/scripts"
_SCRIPT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,254}$")
_CAMEL = {"copy_file": "copyFile", "copy_dir": "copyDir"}


class PatchSources(Protocol):
    """Bytes of copy sources, resolved by the node agent before the rootfs is built."""

    def file(self, source: ContentSource, *, field: str) -> bytes: ...

    def directory(self, source: DirectorySource, *, field: str) -> Mapping[str, bytes]:
        """Relative path → bytes (a ConfigMap's or Secret's keys are flat names)."""
        ...


class NoSources:
    def file(self, source: ContentSource, *, field: str) -> bytes:
        raise PatchError("copy sources are not available here", field=field)

    def directory(self, source: DirectorySource, *, field: str) -> Mapping[str, bytes]:
        raise PatchError("copy sources are not available here", field=field)


def apply_patches(
    view: RootView,
    patches: Sequence[Patch],
    sources: PatchSources | None = None,
    *,
    field: str = "spec.patches",
) -> None:
    sources = sources or NoSources()
    for position, patch in enumerate(patches):
        chosen = patch.chosen()
        where = f"{field}[{position}].{_CAMEL.get(chosen, chosen)}"
        op = patch.operation
        if isinstance(op, TextPatch):
            _write(view, op.path, op.content.encode(), op.mode, op.replace, field=where)
        elif isinstance(op, FilePatch):
            try:
                data = base64.b64decode(op.data, validate=True)
            except binascii.Error:
                raise PatchError("data is not valid base64", field=f"{where}.data") from None
            _write(view, op.path, data, op.mode, op.replace, field=where)
        elif isinstance(op, CopyFilePatch):
            data = sources.file(op.source, field=f"{where}.source")
            _write(view, op.path, data, op.mode, op.replace, field=where)
        elif isinstance(op, CopyDirPatch):
            files = sources.directory(op.source, field=f"{where}.source")
            _copy_dir(view, op.path, files, op.replace, field=where)
        elif isinstance(op, SymlinkPatch):
            _symlink(view, op.path, op.target, op.replace, field=where)
        elif isinstance(op, MkdirPatch):
            mkdir(view, op.path, op.mode, field=where)
        elif isinstance(op, RemovePatch):
            remove(view, op.path, field=where)
        elif isinstance(op, AppendPatch):
            append(view, op.path, op.content.encode(), field=where)
        else:  # pragma: no cover - the API's OneOf guarantees one of the above
            raise PatchError(f"unknown patch operation {chosen!r}", field=where)


def write_scripts(
    view: RootView, scripts: Mapping[str, str], *, field: str = "spec.scripts"
) -> None:
    if not scripts:
        return
    mkdir(view, "/.msb", 0o755, field=field)
    mkdir(view, SCRIPTS_DIR, 0o755, field=field)
    for name, content in sorted(scripts.items()):
        where = f"{field}[{name!r}]"
        if not _SCRIPT_NAME.match(name):
            raise PatchError("script names are file names (letters, digits, . _ -)", field=where)
        _write(view, f"{SCRIPTS_DIR}/{name}", content.encode(), 0o755, True, field=where)


def _write(
    view: RootView, path: str, data: bytes, mode: int | None, replace: bool, *, field: str
) -> None:
    parts = view.resolve(path, follow_last=False, field=f"{field}.path")
    if not parts:
        raise PatchError("cannot write the root directory", field=f"{field}.path")
    entry = view.lookup(parts)
    if entry is not None:
        if not replace:
            raise PatchError(
                f"{path} already exists (in the image or an earlier patch); "
                "set replace: true to overwrite it",
                field=f"{field}.path",
            )
        if entry.kind == "d":
            raise PatchError(
                f"{path} is a directory; it cannot be replaced by a file", field=f"{field}.path"
            )
    replacing_file = entry is not None and entry.kind == "f"
    final_mode = mode if mode is not None else (entry.mode if entry and replacing_file else 0o644)
    owner = (entry.uid, entry.gid) if entry and replacing_file else (0, 0)
    with view.upper_dir(parts[:-1], create=True, field=f"{field}.path") as parent:
        view.clear_upper(parent, parts[-1])
        view.create_file(parent, parts[-1], data, mode=final_mode, uid=owner[0], gid=owner[1])


def _symlink(view: RootView, path: str, target: str, replace: bool, *, field: str) -> None:
    parts = view.resolve(path, follow_last=False, field=f"{field}.path")
    if not parts:
        raise PatchError("cannot replace the root directory", field=f"{field}.path")
    entry = view.lookup(parts)
    if entry is not None:
        if not replace:
            raise PatchError(
                f"{path} already exists; set replace: true to replace it", field=f"{field}.path"
            )
        if entry.kind == "d":
            raise PatchError(
                f"{path} is a directory; it cannot be replaced by a symlink", field=f"{field}.path"
            )
    with view.upper_dir(parts[:-1], create=True, field=f"{field}.path") as parent:
        view.clear_upper(parent, parts[-1])
        os.symlink(target, parts[-1], dir_fd=parent)


def mkdir(view: RootView, path: str, mode: int | None, *, field: str) -> None:
    parts = view.resolve(path, follow_last=True, field=f"{field}.path")
    entry = view.lookup(parts)
    if entry is not None:
        if entry.kind != "d":
            raise PatchError(f"{path} exists and is not a directory", field=f"{field}.path")
        if mode is not None and entry.mode != mode:
            view.chmod_dir(parts, mode, field=f"{field}.path")
        return
    with view.upper_dir(parts, create=True, field=f"{field}.path") as fd:
        os.fchmod(fd, mode if mode is not None else 0o755)


def remove(view: RootView, path: str, *, field: str) -> None:
    parts = view.resolve(path, follow_last=False, field=f"{field}.path")
    if not parts:
        raise PatchError("cannot remove the root directory", field=f"{field}.path")
    entry = view.lookup(parts)
    if entry is None:
        return
    below_visible = entry.covers_lower or not entry.in_upper
    with view.upper_dir(parts[:-1], create=True, field=f"{field}.path") as parent:
        view.clear_upper(parent, parts[-1])
        if view.whiteouts and below_visible:
            view.write_whiteout(parent, parts[-1])


def append(view: RootView, path: str, data: bytes, *, field: str) -> None:
    parts = view.resolve(path, follow_last=True, field=f"{field}.path")
    if not parts:
        raise PatchError("cannot append to the root directory", field=f"{field}.path")
    entry = view.lookup(parts)
    if entry is not None and entry.kind != "f":
        raise PatchError(f"{path} is not a regular file", field=f"{field}.path")
    with view.upper_dir(parts[:-1], create=True, field=f"{field}.path") as parent:
        if entry is None:
            view.clear_upper(parent, parts[-1])  # a whiteout of an earlier remove
            view.create_file(parent, parts[-1], data, mode=0o644)
        elif entry.in_upper:
            view.append_file(parent, parts[-1], data)
        else:  # copy up from the image, keeping owner and mode, then append
            existing = view.read(parts, entry, field=f"{field}.path")
            view.create_file(
                parent, parts[-1], existing + data, mode=entry.mode, uid=entry.uid, gid=entry.gid
            )


def _copy_dir(
    view: RootView, path: str, files: Mapping[str, bytes], replace: bool, *, field: str
) -> None:
    parts = view.resolve(path, follow_last=True, field=f"{field}.path")
    entry = view.lookup(parts)
    if entry is not None:
        if entry.kind != "d":
            raise PatchError(f"{path} exists and is not a directory", field=f"{field}.path")
        if not replace:
            raise PatchError(
                f"{path} already exists; set replace: true to merge into it",
                field=f"{field}.path",
            )
    mkdir(view, path, None, field=field)
    base = "/" + "/".join(parts)
    for relative, data in sorted(files.items()):
        clean = [p for p in relative.split("/") if p not in ("", ".")]
        if not clean or ".." in clean:
            raise PatchError(
                f"source entry {relative!r} is not a relative path", field=f"{field}.source"
            )
        _write(view, f"{base.rstrip('/')}/{'/'.join(clean)}", data, None, replace, field=field)
