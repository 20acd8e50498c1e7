"""Starting the host processes a VM needs (QEMU, virtiofsd) the one careful way: their own
session (a node agent restart or its signals do not reach them), no inherited file
descriptors, stdin from /dev/null, a scrubbed environment, and their output to a log file."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path

SAFE_ENV = ("PATH", "LANG", "LC_ALL", "TMPDIR")


async def spawn(argv: Sequence[str], log: Path) -> asyncio.subprocess.Process:
    env = {k: os.environ[k] for k in SAFE_ENV if k in os.environ}
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            close_fds=True,
            start_new_session=True,
            env=env,
        )
