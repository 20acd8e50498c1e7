"""A small asyncio QMP client: greeting, capabilities, commands matched by id, events kept.

Commands and their answers are matched on the ``id`` QMP echoes back, so events (``STOP``,
``SHUTDOWN`` ...) arriving in between are never mistaken for answers; they are queued for
whoever wants them (``events``), with a bound so an unread queue cannot grow forever.
``execute_with_fd`` hands QEMU an open file descriptor with the command (``SCM_RIGHTS``), which
is how migration to and from a file reaches a QEMU that cannot open the node's paths itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import socket
from pathlib import Path
from typing import Any

MAX_EVENTS = 256


class QMPError(RuntimeError):
    def __init__(self, command: str, error: dict[str, Any]) -> None:
        super().__init__(f"QMP {command}: {error.get('class')}: {error.get('desc')}")
        self.error = error


class QMPClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue(MAX_EVENTS)
        self.greeting: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, path: Path) -> QMPClient:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 22)
        client = cls(reader, writer)
        client.greeting = json.loads(await reader.readline())
        client._task = asyncio.create_task(client._read_loop(), name=f"qmp-{path.name}")
        await client.execute("qmp_capabilities")
        return client

    async def _read_loop(self) -> None:
        try:
            while line := await self._reader.readline():
                message = json.loads(line)
                if "event" in message:
                    if self.events.full():
                        self.events.get_nowait()
                    self.events.put_nowait(message)
                    continue
                future = self._pending.pop(str(message.get("id")), None)
                if future is not None and not future.done():
                    future.set_result(message)
        except (OSError, ConnectionError, ValueError):
            pass
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("QMP connection closed"))
            self._pending.clear()

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        _, future, line = self._request(command, arguments)
        self._writer.write(line)
        await self._writer.drain()
        return self._answer(command, await future)

    async def execute_with_fd(self, command: str, arguments: dict[str, Any], fd: int) -> Any:
        """``command`` with ``fd`` attached (QEMU takes it with the command's bytes: ``getfd``,
        ``add-fd``). The caller keeps its own copy of ``fd`` and closes it."""
        await self._writer.drain()  # nothing of ours may still be queued before these bytes
        id, future, line = self._request(command, arguments)
        raw = self._writer.get_extra_info("socket")
        sock = socket.socket(fileno=os.dup(raw.fileno()))
        try:
            while True:
                try:
                    sent = socket.send_fds(sock, [line], [fd])
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.005)
            if sent < len(line):
                self._writer.write(line[sent:])
                await self._writer.drain()
        except BaseException:
            self._pending.pop(id, None)
            raise
        finally:
            sock.close()  # our duplicate only: the connection stays open
        return self._answer(command, await future)

    def _request(
        self, command: str, arguments: dict[str, Any] | None
    ) -> tuple[str, asyncio.Future[Any], bytes]:
        id = str(next(self._ids))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[id] = future
        request: dict[str, Any] = {"execute": command, "id": id}
        if arguments:
            request["arguments"] = arguments
        return id, future, json.dumps(request).encode() + b"\n"

    @staticmethod
    def _answer(command: str, answer: dict[str, Any]) -> Any:
        if "error" in answer:
            raise QMPError(command, answer["error"])
        return answer.get("return")

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self._writer.wait_closed()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
