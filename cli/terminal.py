"""The local side of ``exec``: stdin read off the event loop, raw mode, the window size."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
from collections.abc import AsyncIterator, Iterator
from typing import BinaryIO

READ_SIZE = 64 * 1024


async def read_chunks(stream: BinaryIO) -> AsyncIterator[bytes]:
    """Chunks of ``stream`` as they arrive, then ``b""`` once at end of input.

    A daemon thread reads, so a command that exits while we wait for input never keeps the
    process alive (an executor thread would: ``asyncio.run`` joins them)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)

    def put(data: bytes) -> None:
        # Blocks the reader thread while the queue is full: input is read as fast as sent.
        future = asyncio.run_coroutine_threadsafe(queue.put(data), loop)
        with contextlib.suppress(Exception):
            future.result()

    try:
        fd: int | None = stream.fileno()
    except (OSError, ValueError, AttributeError):
        fd = None

    def read() -> bytes:
        # The raw descriptor when there is one: a daemon thread blocked inside a buffered
        # reader holds its lock, and the interpreter aborts at exit if it cannot take it.
        if fd is not None:
            return os.read(fd, READ_SIZE)
        read1 = getattr(stream, "read1", None)
        return bytes(read1(READ_SIZE) if read1 is not None else stream.read(READ_SIZE))

    def reader() -> None:
        while True:
            try:
                data = read()
            except (OSError, ValueError):
                data = b""
            put(bytes(data))
            if not data:
                return

    threading.Thread(target=reader, name="stdin-reader", daemon=True).start()
    while True:
        data = await queue.get()
        yield data
        if not data:
            return


def window_size(fd: int) -> tuple[int, int]:
    """(rows, cols) of the terminal on ``fd``, or of the environment's idea of it."""
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        size = shutil.get_terminal_size()
    return size.lines, size.columns


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """Puts the terminal on ``fd`` in raw mode (keys go through, Ctrl-C included) and
    restores it afterwards; does nothing when ``fd`` is not a terminal."""
    if not os.isatty(fd):
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
