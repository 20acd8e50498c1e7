"""The sandbox log: microsandbox's ``exec.log``, kept per sandbox on the node.

What it holds (microsandbox's sources): ``stdout`` and ``stderr`` of every exec session,
``output`` for sessions with a terminal (stdout and stderr are one stream there), and ``system``
lines the node agent writes (the sandbox booting, ready, stopping, stopped, crashed; sessions
starting and ending). :mod:`.recorder` fills it from the relay's frames and the supervisor's
phases; the node agent's API serves it (docs/node-agent-api.md, ``GET …/logs``).

On disk: JSON lines in numbered segments ``log/exec.00000001.log`` … in the sandbox's state
directory, so it goes when the sandbox's files go. One line per entry:
``{"ts": "<RFC 3339, ms>", "src": "stdout", "sid": <session id or null>, "data": "<base64>"}``
(base64 because guest output is bytes, and a chunk may end inside a UTF-8 character).

Bounded: a segment is closed once it passes ``segment_bytes`` and a new one begun; only the
newest ``segments`` are kept (the oldest is deleted when one is begun), so a chatty guest costs
at most ``segment_bytes * segments`` (+ one entry) of disk per sandbox, whatever it writes: 4
segments of 4 MiB by default. A single entry holds at most ``MAX_CHUNK`` bytes of output;
longer output is split.

Positions are cursors: ``(segment, byte offset)`` just after an entry. :func:`encode_cursor`
makes the opaque token microsandbox's SDK expects (base64 of ``0x01`` + two big-endian u64,
observed: docs/msb-compat.md) and :func:`decode_cursor` reads it back. Reading from a cursor
whose segment was rotated away starts at the oldest entry still kept.

Writes are appends of whole lines with one ``write`` on an ``O_APPEND`` descriptor; readers
read completed lines only. Followers wait on :meth:`ExecLog.changed`, which every append and
:meth:`ExecLog.close` wakes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import os
import struct
from collections.abc import Container, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

SEGMENT_BYTES = 4 << 20
SEGMENTS = 4
MAX_CHUNK = 64 << 10
PREFIX = "exec."
SUFFIX = ".log"
CURSOR_TAG = 1
CURSOR = struct.Struct(">BQQ")


class Source(StrEnum):
    STDOUT = "stdout"
    STDERR = "stderr"
    OUTPUT = "output"
    """Output of a session with a terminal: stdout and stderr are one stream."""
    SYSTEM = "system"


@dataclass(frozen=True)
class Position:
    segment: int
    offset: int


@dataclass(frozen=True)
class Entry:
    ts: str
    source: Source
    session: int | None
    data: bytes
    after: Position
    """Where the next entry starts: the cursor of this one."""


class CursorError(ValueError):
    pass


def encode_cursor(position: Position) -> str:
    return base64.b64encode(CURSOR.pack(CURSOR_TAG, position.segment, position.offset)).decode()


def decode_cursor(token: str) -> Position:
    """The position a cursor names; :class:`CursorError` when it is not one of ours."""
    try:
        raw = base64.b64decode(token.encode(), validate=True)
    except (binascii.Error, ValueError) as error:
        raise CursorError("the cursor is not base64") from error
    if len(raw) != CURSOR.size or raw[0] != CURSOR_TAG:
        raise CursorError("the cursor is not a sandbox log position")
    _, segment, offset = CURSOR.unpack(raw)
    return Position(segment, offset)


def now_ts() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ExecLog:
    """One sandbox's log directory: appends, bounded rotation, reads from a position."""

    def __init__(
        self, folder: Path, *, segment_bytes: int = SEGMENT_BYTES, segments: int = SEGMENTS
    ) -> None:
        self.folder = folder
        self.segment_bytes = segment_bytes
        self.segments = max(1, segments)
        self.closed = False
        self._changed = asyncio.Event()
        self._fd: int | None = None
        self._current = 0
        self._size = 0

    # ---- writing --------------------------------------------------------------------------

    def append(self, source: Source, data: bytes, session: int | None = None) -> None:
        """Records ``data`` (split into entries of at most ``MAX_CHUNK`` bytes)."""
        if self.closed or not data:
            return
        ts = now_ts()
        for start in range(0, len(data), MAX_CHUNK):
            chunk = data[start : start + MAX_CHUNK]
            line = {
                "ts": ts,
                "src": source.value,
                "sid": session,
                "data": base64.b64encode(chunk).decode(),
            }
            self._write((json.dumps(line, separators=(",", ":")) + "\n").encode())
        self._wake()

    def system(self, text: str) -> None:
        self.append(Source.SYSTEM, text.encode() + (b"" if text.endswith("\n") else b"\n"))

    def _write(self, line: bytes) -> None:
        if self._fd is None:
            self._open_newest()
        elif self._size > 0 and self._size + len(line) > self.segment_bytes:
            self._rotate()
        assert self._fd is not None
        try:
            os.write(self._fd, line)
        except OSError:
            return  # a full or vanished disk loses log lines, never the sandbox
        self._size += len(line)

    def _open_newest(self) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        existing = self._segment_numbers()
        self._current = existing[-1] if existing else 1
        self._open(self._current)

    def _rotate(self) -> None:
        self._close_fd()
        self._current += 1
        self._open(self._current)
        for number in self._segment_numbers()[: -self.segments]:
            with contextlib.suppress(FileNotFoundError):
                self._path(number).unlink()

    def _open(self, number: int) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        self._fd = os.open(self._path(number), flags, 0o600)
        self._size = os.fstat(self._fd).st_size

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def close(self) -> None:
        """No more entries; followers finish what is written and end."""
        self.closed = True
        self._close_fd()
        self._wake()

    # ---- reading --------------------------------------------------------------------------

    def changed(self) -> asyncio.Event:
        """Set at the next append (or close); take it *before* reading, then wait on it."""
        return self._changed

    def start(self) -> Position:
        numbers = self._segment_numbers()
        return Position(numbers[0] if numbers else 1, 0)

    def end(self) -> Position:
        numbers = self._segment_numbers()
        if not numbers:
            return Position(1, 0)
        last = numbers[-1]
        return Position(last, self._path(last).stat().st_size)

    def clamp(self, position: Position) -> Position:
        """``position``, or the end when it lies beyond it (a cursor of a log that was
        removed and begun again, or one made up): reading resumes with what comes next."""
        end = self.end()
        if (position.segment, position.offset) > (end.segment, end.offset):
            return end
        return position

    def read(self, since: Position | None = None, *, limit: int = 1000) -> list[Entry]:
        """Up to ``limit`` complete entries after ``since`` (the start when ``None``)."""
        return list(_take(self._entries(since), limit))

    def tail(self, count: int, sources: Container[Source] = tuple(Source)) -> list[Entry]:
        """The last ``count`` entries of ``sources`` (reads every kept segment: a bounded
        amount)."""
        last: list[Entry] = []
        for entry in self._entries(None):
            if entry.source not in sources:
                continue
            last.append(entry)
            if len(last) > count:
                del last[0]
        return last

    def _entries(self, since: Position | None) -> Iterator[Entry]:
        numbers = self._segment_numbers()
        if not numbers:
            return
        position = since or Position(numbers[0], 0)
        if position.segment < numbers[0]:
            position = Position(numbers[0], 0)  # rotated away: the oldest still kept
        for number in numbers:
            if number < position.segment:
                continue
            offset = position.offset if number == position.segment else 0
            yield from self._segment_entries(number, offset)

    def _segment_entries(self, number: int, offset: int) -> Iterator[Entry]:
        try:
            with self._path(number).open("rb") as segment:
                segment.seek(offset)
                for line in segment:
                    if not line.endswith(b"\n"):
                        return  # being written: not complete yet
                    offset += len(line)
                    entry = _parse(line, Position(number, offset))
                    if entry is not None:
                        yield entry
        except FileNotFoundError:
            return

    def _segment_numbers(self) -> list[int]:
        numbers = []
        with contextlib.suppress(FileNotFoundError):
            for path in self.folder.iterdir():
                name = path.name
                if name.startswith(PREFIX) and name.endswith(SUFFIX):
                    digits = name[len(PREFIX) : -len(SUFFIX)]
                    if digits.isdigit():
                        numbers.append(int(digits))
        return sorted(numbers)

    def _path(self, number: int) -> Path:
        return self.folder / f"{PREFIX}{number:08d}{SUFFIX}"


def _take(entries: Iterator[Entry], limit: int) -> Iterator[Entry]:
    for count, entry in enumerate(entries):
        if count >= limit:
            return
        yield entry


def _parse(line: bytes, after: Position) -> Entry | None:
    try:
        raw = json.loads(line)
        session = raw.get("sid")
        return Entry(
            ts=str(raw["ts"]),
            source=Source(raw["src"]),
            session=int(session) if session is not None else None,
            data=base64.b64decode(raw["data"]),
            after=after,
        )
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None  # a damaged line is skipped, not fatal
