"""The merged view of a root filesystem (read-only lower tree + writable upper directory).

Patches are defined on what the guest will see: "``/etc/motd`` exists" means exists in the
overlay of the image's layers and what earlier patches wrote. ``RootView`` answers that
without mounting anything, and performs the writes in the upper directory the way overlayfs
itself would: directories copied up with the lower directory's owner and mode, a whiteout
(character device 0:0) where a lower path is removed, an opaque directory where a removed
directory is created again.

Paths are resolved like the guest's kernel would, inside the root: symlinks in the merged view
are followed (``/bin -> usr/bin``), ``..`` stops at ``/``, absolute link targets restart at the
root — so a patch to ``/bin/tool`` lands in ``usr/bin`` as the guest expects, and no link can
lead a write outside the staging directory (KubeVirt's ``safepath`` idea). Every upper-side
operation is relative to a directory fd and refuses to follow symlinks.

Without a lower tree and with ``whiteouts=False`` the same class patches a plain directory
(bind roots).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kubesandbox_node.images.unpack import OPAQUE_XATTR, remove_tree_at
from kubesandbox_node.rootfs.errors import PatchError
from kubesandbox_node.rootfs.lower import LowerNode, LowerReader, NoLower, dir_fd_flags

MAX_SYMLINK_HOPS = 40


@dataclass(frozen=True)
class Entry:
    kind: str
    """``f`` ``d`` ``l`` ``p`` (``o`` for anything else: sockets, devices)."""
    mode: int
    uid: int
    gid: int
    target: str
    in_upper: bool
    lower: LowerNode | None
    """The lower node this path shows or merges with (``None``: nothing visible below)."""
    covers_lower: bool = False
    """An upper entry over a lower one of the same name (removing it needs a whiteout)."""


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "f"
    if stat.S_ISDIR(mode):
        return "d"
    if stat.S_ISLNK(mode):
        return "l"
    if stat.S_ISFIFO(mode):
        return "p"
    return "o"


def _is_whiteout(info: os.stat_result) -> bool:
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == 0


class RootView:
    def __init__(
        self,
        upper: Path,
        lower: LowerNode | None = None,
        reader: LowerReader | None = None,
        *,
        whiteouts: bool = True,
    ):
        self.upper = upper
        self.lower = lower
        self.reader: LowerReader = reader or NoLower()
        self.whiteouts = whiteouts
        self._root_fd = os.open(upper, dir_fd_flags())

    def close(self) -> None:
        os.close(self._root_fd)

    def __enter__(self) -> RootView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading -------------------------------------------------------------------------

    def lookup(self, parts: tuple[str, ...]) -> Entry | None:
        """What the guest sees at ``parts`` (a resolved path: no symlinks among the parents)."""
        if not parts:
            root = os.fstat(self._root_fd)
            return Entry("d", stat.S_IMODE(root.st_mode), root.st_uid, root.st_gid, "", True, None)
        lower: LowerNode | None = self.lower
        upper_fd: int | None = os.dup(self._root_fd)
        try:
            for depth, name in enumerate(parts):
                last = depth == len(parts) - 1
                below = lower.children.get(name) if lower and lower.kind == "d" else None
                info: os.stat_result | None = None
                if upper_fd is not None:
                    try:
                        info = os.stat(name, dir_fd=upper_fd, follow_symlinks=False)
                    except FileNotFoundError:
                        info = None
                if info is not None and self.whiteouts and _is_whiteout(info):
                    return None
                if info is None:
                    if upper_fd is not None:
                        os.close(upper_fd)
                        upper_fd = None
                    if below is None:
                        return None
                    if last:
                        return Entry(
                            below.kind, below.mode, below.uid, below.gid, below.target, False, below
                        )
                    if below.kind != "d":
                        return None
                    lower = below
                    continue
                kind = _kind(info.st_mode)
                if last:
                    target = os.readlink(name, dir_fd=upper_fd) if kind == "l" else ""
                    visible_below = below if kind == "d" and below and below.kind == "d" else None
                    return Entry(
                        kind,
                        stat.S_IMODE(info.st_mode),
                        info.st_uid,
                        info.st_gid,
                        target,
                        True,
                        visible_below if not self._opaque(upper_fd, name) else None,
                        covers_lower=below is not None,
                    )
                if kind != "d":
                    return None
                assert upper_fd is not None
                child = os.open(name, dir_fd_flags(), dir_fd=upper_fd)
                opaque = self._opaque_fd(child)
                os.close(upper_fd)
                upper_fd = child
                lower = None if opaque or below is None or below.kind != "d" else below
            return None
        finally:
            if upper_fd is not None:
                os.close(upper_fd)

    def _opaque(self, parent: int | None, name: str) -> bool:
        if parent is None or not self.whiteouts:
            return False
        try:
            fd = os.open(name, dir_fd_flags(), dir_fd=parent)
        except OSError:
            return False
        try:
            return self._opaque_fd(fd)
        finally:
            os.close(fd)

    def _opaque_fd(self, fd: int) -> bool:
        if not self.whiteouts:
            return False
        try:
            return os.getxattr(fd, OPAQUE_XATTR) == b"y"
        except OSError:
            return False

    def resolve(self, path: str, *, follow_last: bool, field: str) -> tuple[str, ...]:
        """``path`` resolved in the merged view, confined to the root."""
        if not path.startswith("/"):
            raise PatchError(f"{path!r} is not absolute", field=field)
        pending = [p for p in path.split("/") if p not in ("", ".")]
        resolved: list[str] = []
        hops = 0
        while pending:
            name = pending.pop(0)
            if name == "..":
                if resolved:
                    resolved.pop()
                continue
            if name in ("", "."):
                continue
            if len(name.encode()) > 255:
                raise PatchError(f"path component longer than 255 bytes in {path!r}", field=field)
            candidate = (*resolved, name)
            if not pending and not follow_last:
                resolved = list(candidate)
                break
            entry = self.lookup(candidate)
            if entry is not None and entry.kind == "l":
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise PatchError(f"too many levels of symbolic links in {path!r}", field=field)
                if entry.target.startswith("/"):
                    resolved = []
                pending = [p for p in entry.target.split("/") if p] + pending
                continue
            resolved = list(candidate)
        return tuple(resolved)

    def read(self, parts: tuple[str, ...], entry: Entry, *, field: str) -> bytes:
        if entry.in_upper:
            with self.upper_dir(parts[:-1], create=False, field=field) as parent:
                fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
                with os.fdopen(fd, "rb") as handle:
                    return handle.read()
        assert entry.lower is not None
        return self.reader.read(entry.lower.layer, entry.lower.path)

    # --- writing -------------------------------------------------------------------------

    @contextmanager
    def upper_dir(self, parts: tuple[str, ...], *, create: bool, field: str) -> Iterator[int]:
        """An fd of the upper directory at ``parts``, creating (copying up) what is missing."""
        fd = os.dup(self._root_fd)
        try:
            for depth in range(len(parts)):
                name = parts[depth]
                try:
                    child = os.open(name, dir_fd_flags(), dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    child = self._make_upper_dir(fd, parts[: depth + 1], field=field)
                except OSError as exc:
                    if exc.errno not in (errno.ENOTDIR, errno.ELOOP) or not create:
                        raise
                    child = self._make_upper_dir(fd, parts[: depth + 1], field=field)
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    def _make_upper_dir(self, parent: int, parts: tuple[str, ...], *, field: str) -> int:
        name = parts[-1]
        where = "/" + "/".join(parts)
        try:
            info: os.stat_result | None = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            info = None
        recreate = False
        if info is not None:
            if not (self.whiteouts and _is_whiteout(info)):
                raise PatchError(f"{where} exists and is not a directory", field=field)
            os.unlink(name, dir_fd=parent)
            recreate = True
        entry = None if recreate else self.lookup(parts)
        if entry is not None and entry.kind != "d":
            raise PatchError(f"{where} exists and is not a directory", field=field)
        mode, uid, gid = (entry.mode, entry.uid, entry.gid) if entry else (0o755, 0, 0)
        os.mkdir(name, 0o700, dir_fd=parent)
        fd = os.open(name, dir_fd_flags(), dir_fd=parent)
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        if recreate:  # the lower directory was removed: its old children must stay hidden
            os.setxattr(fd, OPAQUE_XATTR, b"y")
        return fd

    def clear_upper(self, parent: int, name: str) -> None:
        """Remove whatever the upper directory has at ``name`` (never following links)."""
        try:
            info = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(info.st_mode):
            remove_tree_at(parent, name)
        else:
            os.unlink(name, dir_fd=parent)

    def write_whiteout(self, parent: int, name: str) -> None:
        os.mknod(name, stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=parent)

    def create_file(
        self, parent: int, name: str, data: bytes, *, mode: int, uid: int = 0, gid: int = 0
    ) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, flags, 0o600, dir_fd=parent)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)

    def append_file(self, parent: int, name: str, data: bytes) -> None:
        fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def chmod_dir(self, parts: tuple[str, ...], mode: int, *, field: str) -> None:
        with self.upper_dir(parts, create=True, field=field) as fd:
            os.fchmod(fd, mode)
