"""Disk snapshots of stopped sandboxes (``SandboxSnapshot``, docs/snapshots.md).

A snapshot is a directory ``<stateDir>/snapshots/<snapshot uid>/`` on the node that ran its
source: ``upper.ext4``, a copy of the source's writable layer (``cp --reflink=auto
--sparse=always``: copy-on-write where the filesystem has reflinks, else a sparse copy of the
written blocks), and ``snapshot.json``: the source, its pinned image (manifest and layer
digests) and the sizes. No memory: the source is stopped. The image's layers stay pinned for
the snapshot (the source may be deleted first) until it is removed.

A Sandbox started from the snapshot gets its own copy of ``upper.ext4`` as its writable layer
(:meth:`SandboxPreparer.build`), over the same pinned layers: the snapshot itself is never
written, so any number of sandboxes start from it.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from kubesandbox_api.status import ImageStatus

UPPER = "upper.ext4"
INFO = "snapshot.json"
_UID = re.compile(r"^[0-9a-fA-F-]{8,64}$")


class SnapshotRefused(Exception):
    """The snapshot cannot be taken (or found); the message says why."""


class SnapshotInfo(BaseModel):
    """What ``snapshot.json`` holds, and what the node agent answers about a snapshot."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    uid: str
    namespace: str
    source_uid: str
    image: ImageStatus
    size_bytes: int
    """Blocks the copy occupies (less than its apparent size when sparse or reflinked)."""
    apparent_bytes: int
    captured_at: datetime


class SnapshotStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def dir(self, uid: str) -> Path:
        if not _UID.match(uid):
            raise SnapshotRefused(f"not a snapshot uid: {uid[:80]!r}")
        return self.root / uid

    def upper(self, uid: str) -> Path:
        """The captured writable layer of snapshot ``uid`` (which must exist)."""
        path = self.dir(uid) / UPPER
        if not (self.dir(uid) / INFO).is_file():
            raise SnapshotRefused(f"snapshot {uid} is not on this node")
        return path

    def get(self, uid: str) -> SnapshotInfo | None:
        try:
            text = (self.dir(uid) / INFO).read_text()
        except FileNotFoundError:
            return None
        return SnapshotInfo.model_validate_json(text)

    async def capture(
        self,
        uid: str,
        namespace: str,
        source_uid: str,
        copy: Callable[[Path], Awaitable[ImageStatus]],
    ) -> SnapshotInfo:
        """Takes snapshot ``uid`` with ``copy`` (which writes ``upper.ext4`` into the
        directory it is given and returns the source's pinned image); idempotent: a snapshot
        already taken is answered as it is."""
        done = self.get(uid)
        if done is not None:
            return done
        final = self.dir(uid)
        partial = self.root / f".{uid}.partial"
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        await asyncio.to_thread(shutil.rmtree, partial, True)
        partial.mkdir(mode=0o700)
        try:
            image = await copy(partial)
            stat = (partial / UPPER).stat()
            info = SnapshotInfo(
                uid=uid,
                namespace=namespace,
                source_uid=source_uid,
                image=image,
                size_bytes=stat.st_blocks * 512,
                apparent_bytes=stat.st_size,
                captured_at=datetime.now(UTC),
            )
            (partial / INFO).write_text(info.model_dump_json(by_alias=True))
            os.replace(partial, final)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, partial, True)
            raise
        return info

    async def remove(self, uid: str) -> bool:
        """Deletes snapshot ``uid``'s files; whether there were any."""
        folder = self.dir(uid)
        if not folder.exists():
            return False
        await asyncio.to_thread(shutil.rmtree, folder, True)
        return True
