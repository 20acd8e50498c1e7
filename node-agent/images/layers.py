"""The layer cache: one read-only EROFS image per layer, keyed by its uncompressed digest.

``LayerCache.ensure`` unpacks a verified layer blob (``unpack``) into a scratch directory inside
the cache, checks the result's diff_id against the one the image config promised, writes an
index of the tree (``<hex>.index.json``, what rootfs assembly needs to know which paths exist
in the image without mounting it) and runs ``mkfs.erofs``; each artefact appears by ``rename``
from a temporary name, so a present ``<hex>.erofs`` is always complete. One asyncio lock per
digest makes concurrent requests for a layer build it once. Images are never modified; garbage
collection (``service``) deletes whole files.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubesandbox_node.images.digests import Digest, digest_hex
from kubesandbox_node.images.errors import LayerError
from kubesandbox_node.images.unpack import (
    OPAQUE_XATTR,
    UnpackLimits,
    remove_tree_at,
    unpack_layer,
)


@dataclass(frozen=True)
class IndexEntry:
    """One path of a layer, as unpacked (``kind``: f d l p w; ``w`` is a whiteout)."""

    path: str
    kind: str
    mode: int
    uid: int
    gid: int
    size: int = 0
    target: str = ""
    opaque: bool = False
    implicit: bool = False
    """A directory without an entry of its own in the tar (see ``UnpackStats.implicit_dirs``)."""


@dataclass(frozen=True)
class CachedLayer:
    diff_id: Digest
    image: Path
    index: Path
    size: int


class LayerCache:
    def __init__(self, root: Path, *, limits: UnpackLimits | None = None):
        self.root = root
        self.limits = limits or UnpackLimits()
        self._layers = root / "erofs"
        self._scratch = root / "scratch"
        self._layers.mkdir(parents=True, exist_ok=True)
        self._scratch.mkdir(parents=True, exist_ok=True)
        for stale in list(self._scratch.iterdir()):
            _remove_path(stale)
        for stale in self._layers.glob("*.tmp*"):
            stale.unlink(missing_ok=True)
        self._locks: dict[Digest, asyncio.Lock] = {}
        self.builds = 0

    def image_path(self, diff_id: Digest) -> Path:
        return self._layers / f"{digest_hex(diff_id)}.erofs"

    def index_path(self, diff_id: Digest) -> Path:
        return self._layers / f"{digest_hex(diff_id)}.index.json"

    def get(self, diff_id: Digest) -> CachedLayer | None:
        image = self.image_path(diff_id)
        try:
            size = image.stat().st_size
        except FileNotFoundError:
            return None
        return CachedLayer(diff_id, image, self.index_path(diff_id), size)

    def cached(self) -> Iterator[CachedLayer]:
        for image in self._layers.glob("*.erofs"):
            found = self.get(Digest("sha256:" + image.name.removesuffix(".erofs")))
            if found is not None:
                yield found

    def touch(self, diff_id: Digest) -> None:
        """Record a use (garbage collection removes the least recently used first)."""
        now = time.time()
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.image_path(diff_id), (now, now))

    def remove(self, diff_id: Digest) -> None:
        self.image_path(diff_id).unlink(missing_ok=True)
        self.index_path(diff_id).unlink(missing_ok=True)
        (self._layers / f"{digest_hex(diff_id)}.lock").unlink(missing_ok=True)

    async def ensure(self, diff_id: Digest, blob: Path, *, compression: str) -> CachedLayer:
        found = self.get(diff_id)
        if found is not None:
            return found
        lock = self._locks.setdefault(diff_id, asyncio.Lock())
        async with lock:
            found = self.get(diff_id)
            if found is not None:
                return found
            try:
                await asyncio.to_thread(self._build, diff_id, blob, compression)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise LayerError(
                        f"no space left in the layer cache ({self.root}) for {diff_id}",
                        temporary=True,
                    ) from None
                raise
            self.builds += 1
        built = self.get(diff_id)
        assert built is not None
        return built

    def _build(self, diff_id: Digest, blob: Path, compression: str) -> None:
        # the asyncio lock orders this process; the file lock another one sharing the cache
        # (a node agent restarted while its predecessor still finishes a build)
        lock_path = self._layers / f"{digest_hex(diff_id)}.lock"
        with lock_path.open("a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            if self.get(diff_id) is None:
                self._build_locked(diff_id, blob, compression)
        # the lock file stays (unlinking it would let a waiter and a newcomer both "hold" it);
        # ``remove`` deletes it with the layer

    def _build_locked(self, diff_id: Digest, blob: Path, compression: str) -> None:
        scratch = Path(tempfile.mkdtemp(prefix=f"{digest_hex(diff_id)[:16]}.", dir=self._scratch))
        tree = scratch / "tree"
        tree.mkdir(mode=0o755)
        try:
            stats = unpack_layer(blob, tree, compression=compression, limits=self.limits)
            if stats.diff_id != diff_id:
                raise LayerError(f"layer unpacks to {stats.diff_id}, the config says {diff_id}")
            entries = index_tree(tree, implicit=stats.implicit_dirs)
            index_tmp = self._layers / f"{digest_hex(diff_id)}.index.json.tmp{os.getpid()}"
            index_tmp.write_text(json.dumps([_entry_json(e) for e in entries]))
            image_tmp = self._layers / f"{digest_hex(diff_id)}.erofs.tmp{os.getpid()}"
            make_erofs(tree, image_tmp)
            os.chmod(image_tmp, 0o444)  # never written again; shared read-only by every VM
            os.replace(index_tmp, self.index_path(diff_id))
            os.replace(image_tmp, self.image_path(diff_id))
        finally:
            for leftover in self._layers.glob(f"{digest_hex(diff_id)}.*.tmp*"):
                leftover.unlink(missing_ok=True)
            _remove_path(scratch)


def make_erofs(tree: Path, image: Path) -> None:
    """``mkfs.erofs`` with owners, modes, xattrs and mtimes kept (uncompressed: fast to read).

    Per-file mtimes matter to guests (Python compares a ``.pyc``'s recorded source mtime, make
    compares targets), so no fixed timestamp is forced.
    """
    result = subprocess.run(
        ["mkfs.erofs", "--quiet", "--preserve-mtime", str(image), str(tree)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise LayerError(f"mkfs.erofs failed: {result.stderr.strip() or result.stdout.strip()}")


def index_tree(root: Path, *, implicit: set[str] | None = None) -> list[IndexEntry]:
    entries: list[IndexEntry] = []
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        _index_dir(root_fd, "", entries, implicit or set())
    finally:
        os.close(root_fd)
    return entries


def _index_dir(fd: int, prefix: str, out: list[IndexEntry], implicit: set[str]) -> None:
    with os.scandir(fd) as scan:
        names = sorted(entry.name for entry in scan)
    for name in names:
        info = os.stat(name, dir_fd=fd, follow_symlinks=False)
        path = f"{prefix}{name}"
        mode = stat.S_IMODE(info.st_mode)
        common: dict[str, Any] = {"mode": mode, "uid": info.st_uid, "gid": info.st_gid}
        if stat.S_ISDIR(info.st_mode):
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            try:
                try:
                    opaque = os.getxattr(child, OPAQUE_XATTR) == b"y"
                except OSError:
                    opaque = False
                out.append(
                    IndexEntry(path, "d", opaque=opaque, implicit=path in implicit, **common)
                )
                _index_dir(child, f"{path}/", out, implicit)
            finally:
                os.close(child)
        elif stat.S_ISREG(info.st_mode):
            out.append(IndexEntry(path, "f", size=info.st_size, **common))
        elif stat.S_ISLNK(info.st_mode):
            out.append(IndexEntry(path, "l", target=os.readlink(name, dir_fd=fd), **common))
        elif stat.S_ISCHR(info.st_mode) and info.st_rdev == 0:
            out.append(IndexEntry(path, "w", **common))
        elif stat.S_ISFIFO(info.st_mode):
            out.append(IndexEntry(path, "p", **common))


def _entry_json(entry: IndexEntry) -> dict[str, Any]:
    data: dict[str, Any] = {"p": entry.path, "k": entry.kind, "m": entry.mode}
    data.update(u=entry.uid, g=entry.gid)
    if entry.size:
        data["s"] = entry.size
    if entry.target:
        data["t"] = entry.target
    if entry.opaque:
        data["o"] = True
    if entry.implicit:
        data["i"] = True
    return data


def load_index(path: Path) -> list[IndexEntry]:
    raw = json.loads(path.read_text())
    return [
        IndexEntry(
            path=item["p"],
            kind=item["k"],
            mode=item["m"],
            uid=item["u"],
            gid=item["g"],
            size=item.get("s", 0),
            target=item.get("t", ""),
            opaque=item.get("o", False),
            implicit=item.get("i", False),
        )
        for item in raw
    ]


def _remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            remove_tree_at(parent, path.name)
        finally:
            os.close(parent)
    else:
        path.unlink(missing_ok=True)
