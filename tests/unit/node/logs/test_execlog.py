from __future__ import annotations

import base64
from pathlib import Path

import pytest

from kubesandbox_node.logs.execlog import (
    MAX_CHUNK,
    CursorError,
    ExecLog,
    Position,
    Source,
    decode_cursor,
    encode_cursor,
)


def test_entries_come_back_in_order_with_sources_and_sessions(tmp_path: Path) -> None:
    log = ExecLog(tmp_path / "log")
    log.system("sandbox Running")
    log.append(Source.STDOUT, b"hello\n", session=7)
    log.append(Source.STDERR, b"\xff\xfe oops\n", session=7)
    entries = log.read()
    assert [(e.source, e.session, e.data) for e in entries] == [
        (Source.SYSTEM, None, b"sandbox Running\n"),
        (Source.STDOUT, 7, b"hello\n"),
        (Source.STDERR, 7, b"\xff\xfe oops\n"),
    ]
    assert entries[0].ts.endswith("Z")
    assert log.read(entries[0].after) == entries[1:]
    assert log.read(entries[-1].after) == []


def test_a_chatty_guest_is_bounded_by_rotation(tmp_path: Path) -> None:
    log = ExecLog(tmp_path / "log", segment_bytes=4096, segments=3)
    for n in range(2000):
        log.append(Source.STDOUT, f"line {n:05d} ".encode() * 4, session=1)
    files = sorted((tmp_path / "log").iterdir())
    assert len(files) == 3
    assert sum(f.stat().st_size for f in files) <= 3 * 4096 + 1024
    kept = log.read(limit=10_000)
    assert kept[-1].data.startswith(b"line 01999")
    assert not any(e.data.startswith(b"line 00000") for e in kept)


def test_a_cursor_of_a_rotated_segment_starts_at_the_oldest_kept(tmp_path: Path) -> None:
    log = ExecLog(tmp_path / "log", segment_bytes=1024, segments=2)
    log.append(Source.STDOUT, b"first\n")
    early = log.read()[0].after
    for _ in range(100):
        log.append(Source.STDOUT, b"x" * 100)
    resumed = log.read(early, limit=10_000)
    assert resumed
    assert resumed[0].after.segment > early.segment


def test_large_output_is_split_into_bounded_entries(tmp_path: Path) -> None:
    log = ExecLog(tmp_path / "log")
    log.append(Source.OUTPUT, b"a" * (MAX_CHUNK * 2 + 5), session=3)
    assert [len(e.data) for e in log.read()] == [MAX_CHUNK, MAX_CHUNK, 5]


def test_tail_and_damaged_lines(tmp_path: Path) -> None:
    log = ExecLog(tmp_path / "log")
    for n in range(5):
        log.append(Source.STDOUT, f"{n}\n".encode())
    segment = next((tmp_path / "log").iterdir())
    with segment.open("ab") as out:
        out.write(b'{"not": "an entry"}\nhalf a li')
    assert [e.data for e in log.tail(2)] == [b"3\n", b"4\n"]


def test_cursors_are_what_the_sdk_decodes(tmp_path: Path) -> None:
    token = encode_cursor(Position(3, 1234))
    raw = base64.b64decode(token)
    assert len(raw) == 17  # tag 1 + 16 bytes: the only tagged length the SDK 0.7.11 accepts
    assert raw[0] == 1
    assert decode_cursor(token) == Position(3, 1234)
    for bad in ("AA==", "not base64!", base64.b64encode(b"\x01short").decode()):
        with pytest.raises(CursorError):
            decode_cursor(bad)


async def test_followers_are_woken_by_appends_and_close(tmp_path: Path) -> None:
    log = ExecLog(tmp_path / "log")
    changed = log.changed()
    assert not changed.is_set()
    log.append(Source.STDOUT, b"x")
    assert changed.is_set()
    closing = log.changed()
    log.close()
    assert closing.is_set()
    log.append(Source.STDOUT, b"after close")
    assert [e.data for e in log.read()] == [b"x"]


def test_a_cursor_beyond_the_end_resumes_with_what_comes_next(tmp_path: Path) -> None:
    log = ExecLog(tmp_path / "log")
    log.append(Source.STDOUT, b"old\n")
    beyond = log.clamp(Position(99, 5))
    assert beyond == log.end()
    log.append(Source.STDOUT, b"new\n")
    assert [e.data for e in log.read(beyond)] == [b"new\n"]
    inside = log.read()[0].after
    assert log.clamp(inside) == inside
