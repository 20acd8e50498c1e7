"""A tiny in-process stand-in for the guest agent, for relay and client unit tests.

It speaks just enough generation-7 protocol over one stream: ``core.ready`` first, ping/pong,
an ``echo``/``cat``/``sleep`` exec and ``core.error`` for the rest. It records every frame it
got so tests can assert on what the relay forwarded (notably ``core.relay.client.disconnected``).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from kubesandbox_protocol.frame import FLAG_TERMINAL, Frame, FrameError, read_frame
from kubesandbox_protocol.messages import BodyError, MessageType, decode_body, encode_body


@dataclass
class FakeGuest:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    received: list[tuple[int, str, dict[str, object]]] = field(default_factory=list)
    stdin: dict[int, bytearray] = field(default_factory=dict)
    commands: dict[int, str] = field(default_factory=dict)
    got_frame: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, id: int, t: str, payload: dict[str, object], flags: int = 0) -> None:
        self.writer.write(Frame(id, flags, encode_body(t, payload)).encode())
        await self.writer.drain()

    async def run(self) -> None:
        await self.send(
            0,
            MessageType.READY,
            {"boot_time_ns": 1, "init_time_ns": 2, "ready_time_ns": 3, "agent_version": "fake"},
        )
        with contextlib.suppress(FrameError, ConnectionError, asyncio.IncompleteReadError):
            while (frame := await read_frame(self.reader)) is not None:
                await self._handle(frame)

    async def _handle(self, frame: Frame) -> None:
        try:
            body = decode_body(frame.body)
        except BodyError as exc:
            await self._error(frame.id, "malformed_message", str(exc))
            return
        self.received.append((frame.id, body.t, body.payload))
        self.got_frame.set()
        if body.t == MessageType.PING:
            await self.send(frame.id, MessageType.PONG, {}, FLAG_TERMINAL)
        elif body.t == MessageType.EXEC_REQUEST:
            self.commands[frame.id] = str(body.payload["cmd"])
            self.stdin[frame.id] = bytearray()
            await self.send(frame.id, MessageType.EXEC_STARTED, {"pid": 100 + frame.id % 1000})
            if body.payload["cmd"] == "echo":
                text = " ".join(str(a) for a in body.payload["args"]) + "\n"
                await self.send(frame.id, MessageType.EXEC_STDOUT, {"data": text.encode()})
                await self.send(frame.id, MessageType.EXEC_EXITED, {"code": 0}, FLAG_TERMINAL)
        elif body.t == MessageType.EXEC_STDIN and frame.id in self.stdin:
            data = body.payload.get("data") or b""
            assert isinstance(data, bytes)
            if data:
                self.stdin[frame.id] += data
            elif self.commands.get(frame.id) == "cat":
                await self.send(
                    frame.id, MessageType.EXEC_STDOUT, {"data": bytes(self.stdin[frame.id])}
                )
                await self.send(frame.id, MessageType.EXEC_EXITED, {"code": 0}, FLAG_TERMINAL)
        elif body.t == MessageType.EXEC_SIGNAL and frame.id in self.stdin:
            code = 128 + int(body.payload["signal"])
            await self.send(frame.id, MessageType.EXEC_EXITED, {"code": code}, FLAG_TERMINAL)
        elif body.t == "test.flood":
            count = int(body.payload["count"])
            chunk = b"x" * int(body.payload["size"])
            for _ in range(count):
                await self.send(frame.id, MessageType.EXEC_STDOUT, {"data": chunk})
            await self.send(frame.id, MessageType.EXEC_EXITED, {"code": 0}, FLAG_TERMINAL)
        elif body.t == MessageType.CLAIM:
            await self.send(frame.id, MessageType.CLAIMED, {}, FLAG_TERMINAL)
        elif body.t in (MessageType.RELAY_CLIENT_DISCONNECTED, MessageType.EXEC_STDIN):
            pass
        else:
            await self._error(frame.id, "unsupported_message_type", f"unknown type {body.t}")

    async def _error(self, id: int, kind: str, message: str) -> None:
        await self.send(id, MessageType.ERROR, {"kind": kind, "message": message}, FLAG_TERMINAL)

    def types(self) -> list[str]:
        return [t for _, t, _ in self.received]

    async def wait_for(
        self, t: str, within: float = 10.0, **fields: object
    ) -> tuple[int, str, dict[str, object]]:
        """The first received frame of type ``t`` whose payload has ``fields``."""
        async with asyncio.timeout(within):
            while True:
                for item in self.received:
                    if item[1] == t and all(item[2].get(k) == v for k, v in fields.items()):
                        return item
                self.got_frame.clear()
                await self.got_frame.wait()

    async def wait_client_gone(self, id_start: int) -> dict[str, object]:
        return (await self.wait_for(MessageType.RELAY_CLIENT_DISCONNECTED, id_start=id_start))[2]

    def stray_ready(self) -> bytes:
        return Frame(0, 0, encode_body(MessageType.READY, {"agent_version": "again"})).encode()


async def guest_pair() -> tuple[FakeGuest, asyncio.StreamReader, asyncio.StreamWriter]:
    """A fake guest on one end of a socketpair; returns it and the relay's end."""
    import socket

    a, b = socket.socketpair()
    g_reader, g_writer = await asyncio.open_connection(sock=a, limit=1 << 20)
    r_reader, r_writer = await asyncio.open_connection(sock=b, limit=1 << 20)
    return FakeGuest(g_reader, g_writer), r_reader, r_writer
