"""The sandbox log over HTTP: the Server-Sent Events microsandbox's SDK reads.

Observed with the real SDK (0.7.11, docs/msb-compat.md §7): ``log_stream(follow=True)`` sends
``GET /v1/sandboxes/{id}/logs?sources=stdout,stderr,output`` with ``Accept: text/event-stream``
(and ``Last-Event-ID: <cursor>`` for ``from_cursor``), and decodes events

    event: log
    id: <cursor>
    data: {"ts": "<RFC 3339>", "source": "stdout|stderr|output|system", "text": "..."}

The ``id`` must be a cursor it can decode (base64 of a tagged position, see
:mod:`.execlog`); it hands it back as ``LogEntry.cursor``. ``session_id`` is sent too (the SDK
0.7.11 does not read it from the cloud backend; other clients, ``kubectl sandbox logs``, do).
The node agent serves this shape and the gateway passes it through unchanged.

Query: ``sources`` (comma-separated; ``all``; default ``stdout,stderr,output``), ``follow``
(default ``true``, the only way the SDK reads this route, without the parameter: keep the
stream open and send new entries as they are written, until the client goes or the sandbox
is removed; ``false``: end after what is written now), ``tail`` (start with the last N
entries instead of the first one kept). ``Last-Event-ID`` (or ``cursor``) resumes just after
that entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable

from aiohttp import web

from kubesandbox_node.logs.execlog import (
    CursorError,
    Entry,
    ExecLog,
    Position,
    Source,
    decode_cursor,
    encode_cursor,
)

DEFAULT_SOURCES = frozenset({Source.STDOUT, Source.STDERR, Source.OUTPUT})
KEEPALIVE_SECONDS = 15.0
MAX_TAIL = 100_000
BATCH = 500


class BadQuery(ValueError):
    """A query parameter the caller got wrong; the message names it."""


def parse_sources(raw: str | None) -> frozenset[Source]:
    if not raw:
        return DEFAULT_SOURCES
    wanted: set[Source] = set()
    for part in raw.split(","):
        part = part.strip()
        if part == "all":
            wanted.update(Source)
        elif part:
            try:
                wanted.add(Source(part))
            except ValueError:
                names = ", ".join([*(s.value for s in Source), "all"])
                raise BadQuery(f"sources: {part[:40]!r} is not one of {names}") from None
    return frozenset(wanted) or DEFAULT_SOURCES


def parse_query(
    request: web.Request,
) -> tuple[frozenset[Source], bool, int | None, Position | None]:
    sources = parse_sources(request.query.get("sources"))
    follow = request.query.get("follow", "true").lower()
    if follow not in ("true", "false", "1", "0"):
        raise BadQuery("follow must be true or false")
    tail = request.query.get("tail")
    count = None
    if tail:
        if not tail.isdigit() or int(tail) > MAX_TAIL:
            raise BadQuery(f"tail must be a whole number of entries up to {MAX_TAIL}")
        count = int(tail)
    token = request.headers.get("Last-Event-ID") or request.query.get("cursor")
    since = None
    if token:
        try:
            since = decode_cursor(token[:200])
        except CursorError as error:
            raise BadQuery(f"Last-Event-ID: {error}") from error
    return sources, follow in ("true", "1"), count, since


def event(entry: Entry) -> bytes:
    data = {
        "ts": entry.ts,
        "source": entry.source.value,
        "session_id": entry.session,
        "text": entry.data.decode("utf-8", errors="replace"),
    }
    return (
        f"event: log\nid: {encode_cursor(entry.after)}\n"
        f"data: {json.dumps(data, separators=(',', ':'))}\n\n"
    ).encode()


async def serve(request: web.Request, log: ExecLog) -> web.StreamResponse:
    sources, follow, tail, since = parse_query(request)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    position = None if since is None else await asyncio.to_thread(log.clamp, since)
    if tail is not None and since is None:
        entries = await asyncio.to_thread(log.tail, tail, sources) if tail else []
        await send(response, entries, sources)
        position = entries[-1].after if entries else log.end()
    while True:
        changed = log.changed()
        batch = await asyncio.to_thread(log.read, position, limit=BATCH)
        await send(response, batch, sources)
        if batch:
            position = batch[-1].after
            continue
        if not follow or log.closed:
            break
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(KEEPALIVE_SECONDS):
                await changed.wait()
                continue
        await response.write(b": keep-alive\n\n")  # a gone client fails here
    await response.write_eof()
    return response


async def send(
    response: web.StreamResponse, entries: Iterable[Entry], sources: frozenset[Source]
) -> None:
    chunk = b"".join(event(e) for e in entries if e.source in sources)
    if chunk:
        await response.write(chunk)
