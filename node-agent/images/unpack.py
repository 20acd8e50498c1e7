"""Unpacking a layer tar into a directory, treating the tar as hostile.

Every file system operation is relative to an open directory fd and refuses to follow symlinks
(``O_NOFOLLOW``, ``follow_symlinks=False``), so no entry can write outside the destination,
whatever it is named or whatever was unpacked before it: a path component that is a symlink
is an error, not a detour. Entry names with ``..`` or a leading ``/`` are refused; hard links
must point at an entry already unpacked from the same layer; device nodes are refused; sizes,
entry counts and the compression ratio are bounded (``UnpackLimits``). Symlink *targets* are
stored as written: they are only ever resolved inside the guest's root.

OCI whiteouts become overlayfs whiteouts: ``.wh.NAME`` a character device 0:0 named ``NAME``,
``.wh..wh..opq`` the xattr ``trusted.overlay.opaque=y`` on its directory. ``trusted.*``
xattrs in the tar itself are dropped, so a layer cannot forge overlay metadata.

The tar is parsed with the standard library's ``tarfile`` in streaming mode; nothing of
``tarfile``'s own extraction is used. Next: ``layers`` turns the directory into EROFS.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO, cast

from kubesandbox_node.images.digests import Digest
from kubesandbox_node.images.errors import LayerError

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1024 * 1024
_ALLOWED_XATTRS = ("user.", "security.capability")
_DIR_CACHE_SIZE = 512


@dataclass(frozen=True)
class UnpackLimits:
    max_entries: int = 1_000_000
    max_total_bytes: int = 32 * 1024**3
    max_file_bytes: int = 16 * 1024**3
    max_ratio: int = 100
    """Uncompressed bytes may not exceed ``max_ratio`` times the compressed blob ..."""
    ratio_floor: int = 256 * 1024**2
    """... once past this many bytes (small blobs of zeros compress absurdly and are harmless)."""
    max_path_bytes: int = 4096
    max_symlink_bytes: int = 4095


@dataclass
class UnpackStats:
    entries: int = 0
    bytes: int = 0
    whiteouts: int = 0
    opaque_dirs: int = 0
    diff_id: Digest | None = None
    implicit_dirs: set[str] = field(default_factory=set)
    """Directories created only because an entry lay below them (no entry of their own):
    their owner and mode are not the layer's to decide (see ``rootfs.lower``)."""


class _CountingReader:
    """Hashes the decompressed stream (the diff_id) and enforces the size and ratio limits."""

    def __init__(self, inner: IO[bytes], limits: UnpackLimits, compressed_size: int):
        self.inner = inner
        self.hash = hashlib.sha256()
        self.total = 0
        self.ceiling = max(limits.ratio_floor, limits.max_ratio * max(compressed_size, 1))
        self.ceiling = min(self.ceiling, limits.max_total_bytes + 1024**2)

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size if size >= 0 else _CHUNK)
        self.total += len(data)
        if self.total > self.ceiling:
            raise LayerError(
                f"layer expands to more than {self.ceiling} bytes (compression ratio or size "
                "limit exceeded)"
            )
        self.hash.update(data)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


@contextmanager
def open_decompressed(blob: Path, compression: str) -> Iterator[IO[bytes]]:
    """The layer blob as a stream of tar bytes; ``compression`` is gzip, zstd, none or auto."""
    if compression == "auto":
        with blob.open("rb") as probe:
            magic = probe.read(4)
        compression = (
            "gzip"
            if magic[:2] == b"\x1f\x8b"
            else "zstd"
            if magic == b"\x28\xb5\x2f\xfd"
            else "none"
        )
    with blob.open("rb") as raw:
        if compression == "gzip":
            with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
                yield cast(IO[bytes], unzipped)
        elif compression == "zstd":
            process = subprocess.Popen(
                ["zstd", "-d", "-c", "-q"], stdin=raw, stdout=subprocess.PIPE
            )
            assert process.stdout is not None
            try:
                yield process.stdout
            finally:
                process.stdout.close()
                process.kill()
                process.wait()
        else:
            yield raw


def unpack_layer(
    blob: Path,
    dest: Path,
    *,
    compression: str = "auto",
    limits: UnpackLimits | None = None,
) -> UnpackStats:
    """Unpack ``blob`` into the empty directory ``dest``; the diff_id is in the result."""
    limits = limits or UnpackLimits()
    compressed_size = blob.stat().st_size
    with open_decompressed(blob, compression) as stream:
        reader = _CountingReader(stream, limits, compressed_size)
        unpacker = _Unpacker(dest, limits)
        try:
            unpacker.run(reader)
            reader.drain()
        except (tarfile.TarError, EOFError, gzip.BadGzipFile, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise LayerError(f"malformed layer: {exc}") from None
        finally:
            unpacker.close()
    unpacker.stats.diff_id = Digest("sha256:" + reader.hash.hexdigest())
    return unpacker.stats


def split_member_name(name: str, *, limits: UnpackLimits, what: str = "entry") -> tuple[str, ...]:
    if "\x00" in name:
        raise LayerError(f"{what} name contains NUL", field=repr(name))
    if len(name.encode()) > limits.max_path_bytes:
        raise LayerError(f"{what} name longer than {limits.max_path_bytes} bytes", field=name[:80])
    if name.startswith("/"):
        raise LayerError(f"{what} has an absolute path", field=name)
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise LayerError(f"{what} has a '..' component", field=name)
    if any(len(p.encode()) > 255 for p in parts):
        raise LayerError(f"{what} has a component longer than 255 bytes", field=name)
    return parts


@dataclass
class _Unpacker:
    dest: Path
    limits: UnpackLimits
    stats: UnpackStats = field(default_factory=UnpackStats)
    _dir_attrs: list[tuple[tuple[str, ...], tarfile.TarInfo]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root_fd = os.open(self.dest, _DIR_FLAGS)
        self._dir_cache: dict[tuple[str, ...], int] = {}

    def close(self) -> None:
        self._forget_dirs()
        os.close(self.root_fd)

    def run(self, stream: _CountingReader) -> None:
        with tarfile.open(fileobj=stream, mode="r|") as archive:  # type: ignore[call-overload]
            for member in archive:
                self.stats.entries += 1
                if self.stats.entries > self.limits.max_entries:
                    raise LayerError(f"layer has more than {self.limits.max_entries} entries")
                self._member(archive, member)
        for parts, member in reversed(self._dir_attrs):
            try:
                with self._open_dir(parts, create=False) as fd:
                    self._apply_attrs(fd, member)
            except (FileNotFoundError, LayerError):
                continue  # a later entry replaced the directory

    def _member(self, archive: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = split_member_name(member.name, limits=self.limits)
        if not parts:  # the layer's root directory itself: keep ours
            return
        name = parts[-1]
        if name == OPAQUE_MARKER:
            with self._open_dir(parts[:-1], create=True) as fd:
                os.setxattr(fd, OPAQUE_XATTR, b"y")
            self.stats.opaque_dirs += 1
            return
        if name.startswith(WHITEOUT_PREFIX):
            hidden = name[len(WHITEOUT_PREFIX) :]
            if hidden.startswith(WHITEOUT_PREFIX):  # other AUFS metadata (.wh..wh.plnk...)
                return
            if hidden in ("", ".", ".."):
                raise LayerError("whiteout names no entry", field=member.name)
            with self._open_dir(parts[:-1], create=True) as parent:
                self._clear(parent, hidden, keep_dir=False)
                os.mknod(hidden, stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=parent)
            self.stats.whiteouts += 1
            return
        if member.issparse():
            raise LayerError("sparse files are not supported", field=member.name)
        with self._open_dir(parts[:-1], create=True) as parent:
            if member.isdir():
                self.stats.implicit_dirs.discard("/".join(parts))
                existing = self._clear(parent, name, keep_dir=True)
                if existing is None:
                    os.mkdir(name, 0o700, dir_fd=parent)
                self._dir_attrs.append((parts, member))
            elif member.isreg():
                self._regular(archive, member, parent, name)
            elif member.issym():
                if len(member.linkname.encode()) > self.limits.max_symlink_bytes or (
                    "\x00" in member.linkname
                ):
                    raise LayerError("symlink target too long or contains NUL", field=member.name)
                self._clear(parent, name, keep_dir=False)
                os.symlink(member.linkname, name, dir_fd=parent)
                os.chown(name, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
                os.utime(name, (member.mtime, member.mtime), dir_fd=parent, follow_symlinks=False)
            elif member.islnk():
                self._hardlink(member, parent, name)
            elif member.isfifo():
                self._clear(parent, name, keep_dir=False)
                os.mkfifo(name, 0o600, dir_fd=parent)
                os.chown(name, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
                os.chmod(name, member.mode & 0o7777, dir_fd=parent, follow_symlinks=False)
            elif member.ischr() or member.isblk():
                raise LayerError("device nodes are not allowed in layers", field=member.name)
            else:
                raise LayerError(f"unsupported tar entry type {member.type!r}", field=member.name)

    def _regular(
        self, archive: tarfile.TarFile, member: tarfile.TarInfo, parent: int, name: str
    ) -> None:
        if member.size > self.limits.max_file_bytes:
            raise LayerError(
                f"file of {member.size} bytes exceeds {self.limits.max_file_bytes}",
                field=member.name,
            )
        self.stats.bytes += member.size
        if self.stats.bytes > self.limits.max_total_bytes:
            raise LayerError(f"layer holds more than {self.limits.max_total_bytes} bytes")
        self._clear(parent, name, keep_dir=False)
        fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=parent)
        try:
            source: BinaryIO | None = archive.extractfile(member)  # type: ignore[assignment]
            if source is not None:
                while chunk := source.read(_CHUNK):
                    os.write(fd, chunk)
            self._apply_attrs(fd, member)
        finally:
            os.close(fd)

    def _hardlink(self, member: tarfile.TarInfo, parent: int, name: str) -> None:
        target = split_member_name(member.linkname.lstrip("/"), limits=self.limits, what="link")
        if not target:
            raise LayerError("hard link to the layer root", field=member.name)
        try:
            with self._open_dir(target[:-1], create=False) as source_dir:
                info = os.stat(target[-1], dir_fd=source_dir, follow_symlinks=False)
                if not (stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode)):
                    raise LayerError("hard link to a non-file", field=member.name)
                self._clear(parent, name, keep_dir=False)
                os.link(
                    target[-1],
                    name,
                    src_dir_fd=source_dir,
                    dst_dir_fd=parent,
                    follow_symlinks=False,
                )
        except FileNotFoundError:
            raise LayerError(
                f"hard link target {member.linkname!r} is not in this layer", field=member.name
            ) from None

    def _apply_attrs(self, fd: int, member: tarfile.TarInfo) -> None:
        os.fchown(fd, member.uid, member.gid)
        os.fchmod(fd, member.mode & 0o7777)  # after chown, which clears set-id bits
        for key, value in member.pax_headers.items():
            if key.startswith("SCHILY.xattr."):
                xattr = key[len("SCHILY.xattr.") :]
                if xattr.startswith(_ALLOWED_XATTRS):
                    os.setxattr(fd, xattr, value.encode("utf-8", "surrogateescape"))
        os.utime(fd, (member.mtime, member.mtime))

    @contextmanager
    def _open_dir(self, parts: tuple[str, ...], *, create: bool) -> Iterator[int]:
        """An fd of the directory at ``parts``, for the duration of the block.

        Directory fds are cached (a layer's entries revisit the same directories); the block
        gets its own ``dup`` so that cache evictions never close an fd still in use.
        """
        fd = os.dup(self._dir_fd(parts, create=create))
        try:
            yield fd
        finally:
            os.close(fd)

    def _dir_fd(self, parts: tuple[str, ...], *, create: bool) -> int:
        if not parts:
            return self.root_fd
        cached = self._dir_cache.get(parts)
        if cached is not None:
            return cached
        parent = self._dir_fd(parts[:-1], create=create)
        component = parts[-1]
        try:
            fd = os.open(component, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
            os.mkdir(component, 0o755, dir_fd=parent)
            fd = os.open(component, _DIR_FLAGS, dir_fd=parent)
            self.stats.implicit_dirs.add("/".join(parts))
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise LayerError(
                    "path goes through a symlink or a non-directory", field="/".join(parts)
                ) from None
            raise
        if len(self._dir_cache) >= _DIR_CACHE_SIZE:
            self._forget_dirs()
        self._dir_cache[parts] = fd
        return fd

    def _forget_dirs(self) -> None:
        for fd in self._dir_cache.values():
            os.close(fd)
        self._dir_cache.clear()

    def _clear(self, parent: int, name: str, *, keep_dir: bool) -> os.stat_result | None:
        """Remove what is at ``name`` (tar's replace semantics); keep a directory if asked."""
        try:
            info = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if stat.S_ISDIR(info.st_mode):
            if keep_dir:
                return info
            remove_tree_at(parent, name)
            self._forget_dirs()  # cached fds below it would point into a deleted tree
        else:
            os.unlink(name, dir_fd=parent)
        return None


def remove_tree_at(parent: int, name: str) -> None:
    """``rm -rf`` of ``name`` under the directory fd ``parent``, never following symlinks."""
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    try:
        with os.scandir(fd) as entries:
            children = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
        for child, is_dir in children:
            if is_dir:
                remove_tree_at(fd, child)
            else:
                os.unlink(child, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent)
