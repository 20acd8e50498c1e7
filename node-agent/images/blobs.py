"""Content-addressed blob files with single-flight, atomic, verified downloads.

``ensure(digest, fetch)`` returns the path of a verified blob. However many callers ask for the
same digest at once, ``fetch`` runs once: the first caller starts a task, the others await the
same task (a future per digest). The fetcher writes into a temporary file in the store's
``tmp/``; only after the digest verified does it become ``sha256/<hex>`` by ``rename``, so a
crash leaves at worst a stray temporary file (removed on start) and never a wrong blob.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from kubesandbox_node.images.digests import Digest, digest_hex
from kubesandbox_node.images.errors import ImageError

Fetcher = Callable[[Path], Awaitable[None]]
"""Writes the blob's bytes into the given temporary path (verifying them) or raises."""


class BlobStore:
    def __init__(self, root: Path):
        self.root = root
        self._blobs = root / "sha256"
        self._tmp = root / "tmp"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        for stale in self._tmp.iterdir():
            stale.unlink(missing_ok=True)
        self._inflight: dict[Digest, asyncio.Task[Path]] = {}
        self.fetches = 0
        """How many fetches actually ran (tests and the benchmark read it)."""

    def path(self, digest: Digest) -> Path:
        return self._blobs / digest_hex(digest)

    def has(self, digest: Digest) -> bool:
        return self.path(digest).is_file()

    def remove(self, digest: Digest) -> None:
        self.path(digest).unlink(missing_ok=True)

    async def ensure(self, digest: Digest, fetch: Fetcher) -> Path:
        final = self.path(digest)
        if final.is_file():
            return final
        task = self._inflight.get(digest)
        if task is None:
            task = asyncio.create_task(self._download(digest, fetch))
            self._inflight[digest] = task
            task.add_done_callback(lambda _t: self._inflight.pop(digest, None))
        # shield: one caller being cancelled must not cancel the download the others await
        return await asyncio.shield(task)

    async def _download(self, digest: Digest, fetch: Fetcher) -> Path:
        final = self.path(digest)
        temp = self._tmp / f"{digest_hex(digest)}.{os.getpid()}.{id(asyncio.current_task())}"
        self.fetches += 1
        try:
            try:
                await fetch(temp)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise ImageError(f"download of {digest} failed: {exc}", temporary=True) from None
            with temp.open("rb") as handle:
                os.fsync(handle.fileno())
            os.replace(temp, final)
        finally:
            temp.unlink(missing_ok=True)
        return final
