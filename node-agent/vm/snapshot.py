"""A VM's memory and device state to a file and back: QEMU migration over a passed fd.

``save_state`` pauses the vCPUs (QMP ``stop``), so the state is taken in one pass, with no
dirty pages to chase, and migrates to a file the node agent opened itself (``O_EXCL``, 0600,
under the sandbox's own 0700 directory) and handed over with ``getfd``: QEMU, which runs as
an unprivileged user, never opens a node path, and no shell runs (QEMU 7.2 has no ``file:``
URI, and ``exec:`` would start ``/bin/sh`` as QEMU's user). The bandwidth cap is lifted (QEMU's
default is 32 MiB/s) and the file is written under a temporary name, synced and renamed, so
a state file that exists is a complete one. After a successful save QEMU stays paused with
its disks flushed and released; the caller ends it.

``load_state`` is the other half for a QEMU started with ``-incoming defer`` and the same
command line: ``getfd`` + ``migrate-incoming``, and it returns once the whole state is in;
the VM stays paused until the caller sends ``cont``. Zero pages are not written, so a state
file is about the size of the memory the guest has touched, not of its RAM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

from kubesandbox_node.vm.qmp import QMPClient

MAX_BANDWIDTH = 1 << 40
"""Bytes per second: no cap (a paused VM has nothing to race)."""
MAX_DOWNTIME_MS = 600_000
POLL = 0.02
PARTIAL = ".partial"


class SnapshotError(RuntimeError):
    """Saving or loading the state failed; the message says QEMU's reason."""


async def _wait_migration(qmp: QMPClient, within: float) -> dict[str, object]:
    async with asyncio.timeout(within):
        while True:
            info = await qmp.execute("query-migrate")
            status = info.get("status") if isinstance(info, dict) else None
            if status == "completed":
                return dict(info)
            if status in ("failed", "cancelled"):
                raise SnapshotError(f"migration {status}: {info.get('error-desc', '')}".strip())
            await asyncio.sleep(POLL)


async def save_state(qmp: QMPClient, path: Path, *, within: float) -> int:
    """Pauses the VM and writes its state to ``path``; returns the file's size in bytes."""
    partial = path.with_name(path.name + PARTIAL)
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
    await qmp.execute("stop")
    await qmp.execute(
        "migrate-set-parameters",
        {"max-bandwidth": MAX_BANDWIDTH, "downtime-limit": MAX_DOWNTIME_MS},
    )
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(partial, flags, 0o600)
    try:
        try:
            await qmp.execute_with_fd("getfd", {"fdname": "suspend"}, fd)
            await qmp.execute("migrate", {"uri": "fd:suspend"})
            await _wait_migration(qmp, within)
        except TimeoutError:
            with contextlib.suppress(Exception):
                await qmp.execute("migrate_cancel")
            raise SnapshotError(f"saving the state took longer than {within:.0f}s") from None
        await asyncio.to_thread(_commit, fd, partial, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise
    finally:
        os.close(fd)
    return os.stat(path).st_size


def _commit(fd: int, partial: Path, path: Path) -> None:
    os.fsync(fd)
    os.replace(partial, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


async def load_state(qmp: QMPClient, path: Path, *, within: float) -> float:
    """Feeds ``path`` to a QEMU waiting with ``-incoming defer``; returns the seconds it took.
    The VM is left paused."""
    started = time.monotonic()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        await qmp.execute_with_fd("getfd", {"fdname": "incoming"}, fd)
        await qmp.execute("migrate-incoming", {"uri": "fd:incoming"})
        try:
            await _wait_migration(qmp, within)
        except TimeoutError:
            raise SnapshotError(f"loading the state took longer than {within:.0f}s") from None
    finally:
        os.close(fd)
    return time.monotonic() - started


def state_timeout(memory_mib: int) -> float:
    """A generous bound for saving or loading ``memory_mib`` of guest RAM (≥ 20 MiB/s)."""
    return 60.0 + memory_mib / 20
