"""Byte-level framing of the agent protocol: ``[len u32 BE][id u32 BE][flags u8][body]``.

``len`` counts id + flags + body, so it is at least 5 and at most ``MAX_FRAME_LEN``; anything
else is a fatal stream error (the stream cannot be resynchronised). The body is opaque here:
the relay routes on the header alone and never rewrites it, so this module knows nothing of
CBOR (that is ``messages``). ``FrameDecoder`` is incremental and bounded: it never holds more
than one maximal frame plus one read's worth of bytes.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass

FLAG_TERMINAL = 0x01
FLAG_SESSION_START = 0x02
FLAG_SHUTDOWN = 0x04
FLAG_BULK = 0x08

HEADER = struct.Struct(">IIB")
LEN_PREFIX = 4
MIN_FRAME_LEN = 5
MAX_FRAME_LEN = 4 * 1024 * 1024
U32_MAX = 0xFFFF_FFFF


class FrameError(ValueError):
    """The byte stream violates the framing; the connection it came from must be closed."""


@dataclass(frozen=True, slots=True)
class Frame:
    id: int
    flags: int
    body: bytes

    @property
    def terminal(self) -> bool:
        return bool(self.flags & FLAG_TERMINAL)

    @property
    def session_start(self) -> bool:
        return bool(self.flags & FLAG_SESSION_START)

    def encode(self) -> bytes:
        return encode_frame(self.id, self.flags, self.body)


def encode_frame(id: int, flags: int, body: bytes) -> bytes:
    length = MIN_FRAME_LEN + len(body)
    if length > MAX_FRAME_LEN:
        raise FrameError(f"frame of {length} bytes exceeds the {MAX_FRAME_LEN}-byte limit")
    if not 0 <= id <= U32_MAX or not 0 <= flags <= 0xFF:
        raise FrameError(f"frame id {id} or flags {flags} out of range")
    return HEADER.pack(length, id, flags) + body


def check_length(length: int) -> None:
    if length < MIN_FRAME_LEN or length > MAX_FRAME_LEN:
        raise FrameError(
            f"frame length {length} outside [{MIN_FRAME_LEN}, {MAX_FRAME_LEN}]: stream is corrupt"
        )


def decode_frame(data: bytes) -> Frame:
    """Decodes exactly one whole frame (length prefix included)."""
    if len(data) < HEADER.size:
        raise FrameError(f"{len(data)} bytes is shorter than a frame header")
    length, id, flags = HEADER.unpack_from(data)
    check_length(length)
    if len(data) != LEN_PREFIX + length:
        raise FrameError(f"frame says {length} bytes but {len(data) - LEN_PREFIX} follow")
    return Frame(id, flags, bytes(data[HEADER.size :]))


class FrameDecoder:
    """Splits a byte stream into frames; feed it whatever arrived, take the whole frames."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while len(self._buf) >= LEN_PREFIX:
            (length,) = struct.unpack_from(">I", self._buf)
            check_length(length)
            end = LEN_PREFIX + length
            if len(self._buf) < end:
                break
            _, id, flags = HEADER.unpack_from(self._buf)
            frames.append(Frame(id, flags, bytes(self._buf[HEADER.size : end])))
            del self._buf[:end]
        return frames

    @property
    def pending(self) -> int:
        return len(self._buf)


async def read_frame(reader: asyncio.StreamReader) -> Frame | None:
    """Reads one frame; ``None`` on a clean EOF between frames, ``FrameError`` when corrupt."""
    raw = await read_raw_frame(reader)
    if raw is None:
        return None
    id, flags = struct.unpack_from(">IB", raw, LEN_PREFIX)
    return Frame(id, flags, raw[LEN_PREFIX + 5 :])


async def read_raw_frame(reader: asyncio.StreamReader) -> bytes | None:
    """One frame's bytes as they were on the wire (what the relay forwards unchanged);
    ``None`` on a clean EOF between frames, ``FrameError`` when the stream is corrupt."""
    try:
        prefix = await reader.readexactly(LEN_PREFIX)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise FrameError("stream ended inside a frame length prefix") from exc
        return None
    (length,) = struct.unpack(">I", prefix)
    check_length(length)
    try:
        return prefix + await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise FrameError(f"stream ended inside a {length}-byte frame") from exc
