"""A writer of ``newc`` cpio archives, the format the kernel unpacks as an initramfs.

Written here rather than shelling out to ``cpio`` so that archives are reproducible (owner 0,
mtime 0, sorted, fixed inode numbers) and can hold device nodes (``/dev/console``) without
root. The kernel unpacks every archive it is given in order, later ones over earlier ones.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from typing import BinaryIO

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    path: str  # inside the archive, without a leading slash
    mode: int  # full st_mode, type bits included
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)
    uid: int = 0
    gid: int = 0


def directory(path: str, perm: int = 0o755) -> Entry:
    return Entry(path.strip("/"), stat.S_IFDIR | perm)


def file(path: str, data: bytes, perm: int = 0o644) -> Entry:
    return Entry(path.strip("/"), stat.S_IFREG | perm, data)


def symlink(path: str, target: str) -> Entry:
    return Entry(path.strip("/"), stat.S_IFLNK | 0o777, target.encode())


def char_device(path: str, major: int, minor: int, perm: int = 0o600) -> Entry:
    return Entry(path.strip("/"), stat.S_IFCHR | perm, rdev=(major, minor))


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(ino: int, entry: Entry, name: bytes, size: int) -> bytes:
    fields = (
        ino,
        entry.mode,
        entry.uid,
        entry.gid,
        1,  # nlink
        0,  # mtime: reproducible archives
        size,
        0,
        0,  # dev major/minor
        entry.rdev[0],
        entry.rdev[1],
        len(name) + 1,
        0,  # check
    )
    return MAGIC + b"".join(b"%08X" % f for f in fields)


def write(out: BinaryIO, entries: list[Entry]) -> None:
    """Writes ``entries`` (parents are the caller's job) then the trailer."""
    offset = 0

    def emit(chunk: bytes) -> None:
        nonlocal offset
        out.write(chunk)
        offset += len(chunk)

    for ino, entry in enumerate([*entries, Entry(TRAILER, 0)], start=1):
        name = entry.path.encode()
        head = _header(ino if entry.path != TRAILER else 0, entry, name, len(entry.data))
        emit(head + name + b"\0")
        emit(_pad(offset))
        if entry.data:
            emit(entry.data)
            emit(_pad(offset))


def archive(entries: list[Entry]) -> bytes:
    import io

    buf = io.BytesIO()
    write(buf, entries)
    return buf.getvalue()


def with_parents(entries: list[Entry]) -> list[Entry]:
    """Adds missing parent directories (0755) before their children, sorted by path."""
    by_path = {e.path: e for e in entries}
    for e in entries:
        parts = e.path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            by_path.setdefault(parent, directory(parent))
    return [by_path[p] for p in sorted(by_path)]
