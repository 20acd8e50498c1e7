"""Asyncio client of a relay socket: the relay preamble, then sessions multiplexed by id.

The byte stream is a unix socket (``AgentClient.connect``) or the gateway's agent WebSocket
(``AgentClient.connect_websocket``: binary messages carry the same bytes, frames may be split
across messages). On connect the relay sends ``[id_start][id_end_exclusive][core.ready frame]``;
every session this client opens uses a fresh id from that range. One reader task routes
incoming frames to per-session queues; writes go through one lock so frames never interleave.
Exec sessions stream (``ExecSession``), filesystem ops are request/response with
``core.fs.data`` chunks of at most 3 MiB. Session queues are unbounded: a caller that opens
a session must consume it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import struct
from collections.abc import AsyncIterable, AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from kubesandbox_protocol.frame import (
    FLAG_SESSION_START,
    FLAG_TERMINAL,
    Frame,
    FrameError,
    read_frame,
)
from kubesandbox_protocol.messages import (
    MAX_FS_CHUNK,
    Body,
    BodyError,
    MessageType,
    decode_body,
    encode_body,
    exec_request,
    fs_op,
    open_options,
)

STDIN_CHUNK = 1024 * 1024
WS_MAX_MESSAGE = 8 * 1024 * 1024


class AgentError(Exception):
    """The agent answered with ``core.error``, or the connection broke mid-session."""

    def __init__(self, message: str, kind: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind


class ExecFailedError(AgentError):
    """``core.exec.failed``: the command could not be started."""

    def __init__(self, payload: Mapping[str, Any]) -> None:
        super().__init__(str(payload.get("message") or payload), kind=payload.get("kind"))
        self.errno = payload.get("errno")
        self.stage = payload.get("stage")


class FsError(AgentError):
    """A ``core.fs.response`` with ``ok: false``; the message is the agent's own text."""


class AgentConnectError(AgentError):
    """The WebSocket upgrade was refused (``status`` is the HTTP status, 0 if unreachable)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message, kind="connect")
        self.status = status


class ByteWriter(Protocol):
    """What the client writes through: ``asyncio.StreamWriter`` or the WebSocket adapter."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


class _WebSocketWriter:
    """Writes go out as binary messages (one per ``drain``); ``close`` ends the socket, the
    pump feeding the reader and, when it owns it, the HTTP session."""

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        pump: asyncio.Task[None],
        session: aiohttp.ClientSession | None,
    ) -> None:
        self._ws = ws
        self._pump = pump
        self._session = session
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        self._pending.append(bytes(data))

    async def drain(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        if self._ws.closed:
            raise ConnectionResetError("the agent WebSocket is closed")
        await self._ws.send_bytes(data)

    def close(self) -> None:
        self._pending.clear()

    async def wait_closed(self) -> None:
        try:
            await self._ws.close()
        finally:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
            if self._session is not None:
                await self._session.close()


async def _pump_websocket(
    ws: aiohttp.ClientWebSocketResponse, reader: asyncio.StreamReader
) -> None:
    try:
        async for message in ws:
            if message.type == aiohttp.WSMsgType.BINARY:
                reader.feed_data(message.data)
            elif message.type == aiohttp.WSMsgType.ERROR:
                reader.set_exception(ConnectionResetError(f"agent WebSocket: {ws.exception()}"))
                return
    finally:
        if reader.exception() is None:
            reader.feed_eof()


@dataclass
class ExecResult:
    code: int
    stdout: bytes = b""
    stderr: bytes = b""
    pid: int | None = None
    stdin_errors: list[dict[str, Any]] = field(default_factory=list)


_CLOSED = object()


class _Session:
    def __init__(self, client: AgentClient, id: int) -> None:
        self.client = client
        self.id = id
        self.queue: asyncio.Queue[Frame | object] = asyncio.Queue()
        self.done = False

    async def next_body(self) -> tuple[Frame, Body]:
        item = await self.queue.get()
        if item is _CLOSED or not isinstance(item, Frame):
            self.done = True
            raise AgentError(f"connection to the relay closed during session {self.id}")
        if item.terminal:
            self.done = True
        try:
            return item, decode_body(item.body)
        except BodyError as exc:
            raise AgentError(f"undecodable frame from the agent: {exc}") from exc

    def close(self) -> None:
        self.client._sessions.pop(self.id, None)


class ExecSession:
    """A running command: feed stdin, send signals, read output events until it exits."""

    def __init__(self, session: _Session) -> None:
        self._s = session
        self.pid: int | None = None
        self.result: ExecResult | None = None

    @property
    def id(self) -> int:
        return self._s.id

    async def write_stdin(self, data: bytes) -> None:
        for off in range(0, len(data), STDIN_CHUNK):
            await self._send(MessageType.EXEC_STDIN, {"data": data[off : off + STDIN_CHUNK]})

    async def close_stdin(self) -> None:
        await self._send(MessageType.EXEC_STDIN, {"data": b""})

    async def signal(self, signal: int) -> None:
        await self._send(MessageType.EXEC_SIGNAL, {"signal": signal})

    async def resize(self, rows: int, cols: int) -> None:
        await self._send(MessageType.EXEC_RESIZE, {"rows": rows, "cols": cols})

    async def _send(self, t: MessageType, payload: Mapping[str, Any]) -> None:
        await self._s.client.send(self._s.id, 0, encode_body(t, payload))

    async def events(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Yields ``(type, payload)`` until the terminal frame; records pid and result."""
        while not self._s.done:
            _, body = await self._s.next_body()
            if body.t == MessageType.EXEC_STARTED:
                self.pid = body.payload.get("pid")
            yield body.t, body.payload
        self._s.close()

    async def wait(self) -> ExecResult:
        """Collects stdout/stderr until exit; raises ``ExecFailedError`` / ``AgentError``."""
        out, err = bytearray(), bytearray()
        stdin_errors: list[dict[str, Any]] = []
        code: int | None = None
        async for t, p in self.events():
            if t == MessageType.EXEC_STDOUT:
                out += p.get("data") or b""
            elif t == MessageType.EXEC_STDERR:
                err += p.get("data") or b""
            elif t == MessageType.EXEC_STDIN_ERROR:
                stdin_errors.append(p)
            elif t == MessageType.EXEC_EXITED:
                code = int(p["code"])
            elif t == MessageType.EXEC_FAILED:
                raise ExecFailedError(p)
            elif t == MessageType.ERROR:
                raise AgentError(str(p.get("message")), kind=p.get("kind"))
        if code is None:
            raise AgentError(f"exec session {self.id} ended without an exit status")
        self.result = ExecResult(code, bytes(out), bytes(err), self.pid, stdin_errors)
        return self.result


class AgentClient:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: ByteWriter,
        id_start: int,
        id_end: int,
        ready: Frame,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.id_start = id_start
        self.id_end = id_end
        self.ready_frame = ready
        self.ready: dict[str, Any] = decode_body(ready.body).payload
        self._sessions: dict[int, _Session] = {}
        self._ids: Iterator[int] = itertools.cycle(range(max(id_start, 1), id_end))
        self._write_lock = asyncio.Lock()
        self._closed = False
        self._reader_task = asyncio.create_task(self._read_loop(), name="agent-client-reader")

    @classmethod
    async def connect(cls, path: str | Path, *, connect_timeout: float = 30.0) -> AgentClient:
        async with asyncio.timeout(connect_timeout):
            reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 20)
            return await cls._handshake(reader, writer, f"relay at {path}")

    @classmethod
    async def connect_websocket(
        cls,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        ssl: Any = None,
        session: aiohttp.ClientSession | None = None,
        connect_timeout: float = 30.0,
    ) -> AgentClient:
        """Connects to an agent WebSocket (the gateway's ``.../sandboxes/{id}/agent``) that
        carries the relay byte stream. ``session`` is used if given (and left open), else the
        client owns one. A refused upgrade raises ``AgentConnectError`` with its status."""
        own = session is None
        http = session or aiohttp.ClientSession()
        try:
            async with asyncio.timeout(connect_timeout):
                try:
                    ws = await http.ws_connect(
                        url,
                        headers=dict(headers or {}),
                        ssl=ssl if ssl is not None else True,
                        max_msg_size=WS_MAX_MESSAGE,
                        autoping=True,
                    )
                except aiohttp.WSServerHandshakeError as exc:
                    raise AgentConnectError(
                        f"agent WebSocket {url} refused: HTTP {exc.status} {exc.message}",
                        exc.status,
                    ) from exc
                except aiohttp.ClientError as exc:
                    raise AgentConnectError(f"agent WebSocket {url} unreachable: {exc}") from exc
                reader = asyncio.StreamReader(limit=1 << 20)
                pump = asyncio.create_task(_pump_websocket(ws, reader), name="agent-ws-pump")
                writer = _WebSocketWriter(ws, pump, http if own else None)
                own = False  # the writer closes the session from now on
                return await cls._handshake(reader, writer, f"agent WebSocket {url}")
        finally:
            if own:
                await http.close()

    @classmethod
    async def _handshake(
        cls, reader: asyncio.StreamReader, writer: ByteWriter, where: str
    ) -> AgentClient:
        try:
            id_start, id_end = struct.unpack(">II", await reader.readexactly(8))
            ready = await read_frame(reader)
        except (asyncio.IncompleteReadError, FrameError, ConnectionError) as exc:
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()
            raise AgentError(f"{where} closed before its preamble") from exc
        except BaseException:
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()
            raise
        if ready is None or id_end <= max(id_start, 1):
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()
            raise AgentError(f"{where} sent an unusable preamble")
        return cls(reader, writer, id_start, id_end, ready)

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self._writer.wait_closed()
        self._reader_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader_task

    async def _read_loop(self) -> None:
        try:
            while True:
                frame = await read_frame(self._reader)
                if frame is None:
                    break
                session = self._sessions.get(frame.id)
                if session is not None:
                    session.queue.put_nowait(frame)
        except (FrameError, OSError, ConnectionError):
            pass
        finally:
            for session in list(self._sessions.values()):
                session.queue.put_nowait(_CLOSED)

    # --- raw access ------------------------------------------------------------------------

    async def send(self, id: int, flags: int, body: bytes) -> None:
        await self.send_bytes(Frame(id, flags, body).encode())

    async def send_bytes(self, data: bytes) -> None:
        """Writes bytes as they are (tests use it to send hostile frames)."""
        if self._closed:
            raise AgentError("client is closed")
        async with self._write_lock:
            self._writer.write(data)
            await self._writer.drain()

    def open_session(self, id: int | None = None) -> _Session:
        if id is None:
            for _ in range(self.id_end - max(self.id_start, 1)):
                id = next(self._ids)
                if id not in self._sessions:
                    break
            else:
                raise AgentError("every session id of this client is in use")
        session = _Session(self, id)
        self._sessions[id] = session
        return session

    async def request(
        self, t: str, payload: Mapping[str, Any] | None = None, *, id: int | None = None
    ) -> Body:
        """One request, one terminal answer (ping, touch, fs ops without data)."""
        session = self.open_session(id)
        try:
            await self.send(session.id, FLAG_SESSION_START, encode_body(t, payload))
            while True:
                frame, body = await session.next_body()
                if frame.terminal:
                    return body
        finally:
            session.close()

    async def ping(self) -> None:
        body = await self.request(MessageType.PING)
        if body.t != MessageType.PONG:
            raise AgentError(f"ping answered with {body.t}: {body.payload}")

    # --- exec ------------------------------------------------------------------------------

    async def exec(
        self,
        cmd: str,
        args: Sequence[str] = (),
        *,
        env: Mapping[str, str] | Sequence[str] = (),
        cwd: str | None = None,
        user: str | None = None,
        tty: bool = False,
        rows: int = 24,
        cols: int = 80,
        rlimits: Sequence[Mapping[str, Any]] = (),
        stdin: bytes | None = None,
        keep_stdin_open: bool = False,
    ) -> ExecSession:
        """Starts a command. ``stdin`` bytes are sent and stdin closed, as the SDK does;
        ``keep_stdin_open`` leaves it open for ``write_stdin``/``close_stdin``."""
        session = self.open_session()
        request = exec_request(
            cmd, args, env=env, cwd=cwd, user=user, tty=tty, rows=rows, cols=cols, rlimits=rlimits
        )
        await self.send(
            session.id, FLAG_SESSION_START, encode_body(MessageType.EXEC_REQUEST, request)
        )
        handle = ExecSession(session)
        if stdin:
            await handle.write_stdin(stdin)
        if not keep_stdin_open:
            await handle.close_stdin()
        return handle

    async def run(
        self,
        cmd: str,
        args: Sequence[str] = (),
        *,
        stdin: bytes | None = None,
        **kwargs: Any,
    ) -> ExecResult:
        session = await self.exec(cmd, args, stdin=stdin, **kwargs)
        return await session.wait()

    # --- filesystem ------------------------------------------------------------------------

    async def _fs(self, variant: str, **fields: Any) -> Any:
        body = await self.request(MessageType.FS_REQUEST, fs_op(variant, **fields))
        return _fs_result(body, f"{variant} {fields.get('path') or fields.get('src') or ''}")

    async def stat(self, path: str, *, follow_symlink: bool = True) -> dict[str, Any]:
        data = await self._fs("Stat", path=path, follow_symlink=follow_symlink)
        return dict(data["Stat"])

    async def list_dir(self, path: str) -> list[dict[str, Any]]:
        data = await self._fs("List", path=path)
        return [dict(e) for e in data["List"]]

    async def mkdir(self, path: str, *, mode: int | None = None, user: str | None = None) -> None:
        await self._fs("Mkdir", path=path, mode=mode, user=user)

    async def remove(self, path: str) -> None:
        await self._fs("Remove", path=path)

    async def remove_dir(self, path: str, *, recursive: bool = False) -> None:
        await self._fs("RemoveDir", path=path, recursive=recursive)

    async def copy(self, src: str, dst: str) -> None:
        await self._fs("Copy", src=src, dst=dst)

    async def rename(self, src: str, dst: str) -> None:
        await self._fs("Rename", src=src, dst=dst)

    async def open_file(self, path: str, **options: Any) -> int:
        data = await self._fs("OpenFile", path=path, options=open_options(**options))
        return int(data["Handle"])

    async def close_handle(self, handle: int) -> None:
        await self._fs("CloseHandle", handle=handle)

    async def write_file(
        self, path: str, data: bytes | AsyncIterable[bytes], *, mode: int | None = None
    ) -> int:
        """Writes (create + truncate) ``data`` to ``path``; returns the bytes sent."""
        handle = await self.open_file(path, write=True, create=True, truncate=True, mode=mode)
        try:
            length = len(data) if isinstance(data, bytes) else None
            session = self.open_session()
            try:
                request = fs_op("Write", handle=handle, offset=0, len=length)
                await self.send(
                    session.id, FLAG_SESSION_START, encode_body(MessageType.FS_REQUEST, request)
                )
                sent = 0
                async for chunk in _chunks(data):
                    if not session.queue.empty():
                        break  # the agent answered early: that is an error, read it below
                    await self.send(
                        session.id, 0, encode_body(MessageType.FS_DATA, {"data": chunk})
                    )
                    sent += len(chunk)
                else:
                    await self.send(session.id, 0, encode_body(MessageType.FS_DATA, {"data": b""}))
                while True:
                    frame, body = await session.next_body()
                    if frame.terminal:
                        _fs_result(body, f"Write {path}")
                        return sent
            finally:
                session.close()
        finally:
            await self.close_handle(handle)

    async def read_file_chunks(self, path: str) -> AsyncIterator[bytes]:
        handle = await self.open_file(path, read=True)
        try:
            session = self.open_session()
            try:
                request = fs_op("Read", handle=handle, offset=0, len=None)
                await self.send(
                    session.id, FLAG_SESSION_START, encode_body(MessageType.FS_REQUEST, request)
                )
                while True:
                    frame, body = await session.next_body()
                    if body.t == MessageType.FS_DATA:
                        data = body.payload.get("data") or b""
                        if data:
                            yield data
                    if frame.terminal:
                        _fs_result(body, f"Read {path}")
                        return
            finally:
                session.close()
        finally:
            await self.close_handle(handle)

    async def read_file(self, path: str) -> bytes:
        out = bytearray()
        async for chunk in self.read_file_chunks(path):
            out += chunk
        return bytes(out)


def _fs_result(body: Body, what: str) -> Any:
    if body.t == MessageType.ERROR:
        raise AgentError(f"{what}: {body.payload.get('message')}", kind=body.payload.get("kind"))
    if body.t != MessageType.FS_RESPONSE:
        raise AgentError(f"{what}: unexpected answer {body.t}")
    if not body.payload.get("ok"):
        raise FsError(f"{what}: {body.payload.get('error') or 'failed'}")
    return body.payload.get("data")


async def _chunks(data: bytes | AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    if isinstance(data, bytes):
        for off in range(0, len(data), MAX_FS_CHUNK):
            yield data[off : off + MAX_FS_CHUNK]
        return
    async for piece in data:
        for off in range(0, len(piece), MAX_FS_CHUNK):
            yield piece[off : off + MAX_FS_CHUNK]


__all__ = [
    "FLAG_TERMINAL",
    "AgentClient",
    "AgentConnectError",
    "AgentError",
    "ByteWriter",
    "ExecFailedError",
    "ExecResult",
    "ExecSession",
    "FsError",
]
