"""An in-process stand-in for the gateway, for the CLI's unit tests.

It serves the few routes ``kubectl-sandbox`` calls (by-name, the lifecycle verbs, metrics)
under ``/ns/<namespace>``, checks the bearer token, and pipes the agent WebSocket to a real
relay (``kubesandbox_node.relay``) in front of ``FsGuest``: the fake guest of
tests/support/fakeguest.py plus an in-memory filesystem and an ``exit N`` command. Relay
bytes go to the client in small, unaligned pieces, so frames arrive split across messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import posixpath
import shutil
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from kubesandbox_node.relay import Relay
from kubesandbox_protocol.frame import FLAG_TERMINAL, Frame
from kubesandbox_protocol.messages import MessageType
from tests.support.fakeguest import FakeGuest

TOKEN = "good-token"
NAMESPACE = "team-a"
PIECE = 1000  # bytes per WebSocket message towards the client: frames get split


class FsGuest(FakeGuest):
    """The fake guest with files (Stat, List, Mkdir, OpenFile, Read, Write, CloseHandle) and
        ``exit N`` (exits with status N), ``missing`` (not found) and any ``SHELL -c SCRIPT``
    (prints SCRIPT)."""

    files: dict[str, bytearray]
    dirs: set[str]
    handles: dict[int, str]
    writes: dict[int, str]
    modes: dict[str, int]

    def setup_fs(self) -> None:
        self.files = {"/etc/hostname": bytearray(b"box\n")}
        self.dirs = {"/", "/etc", "/tmp"}
        self.handles = {}
        self.writes = {}
        self.modes = {}

    async def _handle(self, frame: Frame) -> None:
        from kubesandbox_protocol.messages import decode_body

        body = decode_body(frame.body)
        if body.t == MessageType.FS_REQUEST:
            self.received.append((frame.id, body.t, body.payload))
            self.got_frame.set()
            await self._fs(frame.id, body.payload["op"])
        elif body.t == MessageType.FS_DATA and frame.id in self.writes:
            data = body.payload.get("data") or b""
            assert isinstance(data, bytes)
            if data:
                self.files[self.writes[frame.id]] += data
            else:
                del self.writes[frame.id]
                await self._ok(frame.id, None)
        elif body.t == MessageType.EXEC_REQUEST and body.payload["cmd"] == "exit":
            self.received.append((frame.id, body.t, body.payload))
            code = int(str(body.payload["args"][0]))
            await self.send(frame.id, MessageType.EXEC_STARTED, {"pid": 7})
            await self.send(frame.id, MessageType.EXEC_STDERR, {"data": b"leaving\n"})
            await self.send(frame.id, MessageType.EXEC_EXITED, {"code": code}, FLAG_TERMINAL)
        elif body.t == MessageType.EXEC_REQUEST and body.payload["args"][:1] == ["-c"]:
            # a shell: prints its script, exits 0
            self.received.append((frame.id, body.t, body.payload))
            script = str(body.payload["args"][1]).encode()
            await self.send(frame.id, MessageType.EXEC_STARTED, {"pid": 8})
            await self.send(frame.id, MessageType.EXEC_STDOUT, {"data": script})
            await self.send(frame.id, MessageType.EXEC_EXITED, {"code": 0}, FLAG_TERMINAL)
        elif body.t == MessageType.EXEC_REQUEST and body.payload["cmd"] == "missing":
            self.received.append((frame.id, body.t, body.payload))
            await self.send(
                frame.id,
                MessageType.EXEC_FAILED,
                {"kind": "not_found", "message": "missing: command not found"},
                FLAG_TERMINAL,
            )
        else:
            await super()._handle(frame)

    async def _ok(self, id: int, data: Any) -> None:
        payload = {"ok": True, "error": None, "data": data}
        await self.send(id, MessageType.FS_RESPONSE, payload, FLAG_TERMINAL)

    async def _fail(self, id: int, error: str) -> None:
        payload = {"ok": False, "error": error, "data": None}
        await self.send(id, MessageType.FS_RESPONSE, payload, FLAG_TERMINAL)

    def _entry(self, path: str) -> dict[str, Any]:
        is_dir = path in self.dirs
        size = 0 if is_dir else len(self.files[path])
        mode = (0o40000 if is_dir else 0o100000) | self.modes.get(path, 0o755 if is_dir else 0o644)
        kind = "dir" if is_dir else "file"
        return {"path": path, "kind": kind, "size": size, "mode": mode, "modified": 1_700_000_000}

    async def _fs(self, id: int, op: dict[str, Any]) -> None:
        ((variant, args),) = op.items()
        path = posixpath.normpath(str(args.get("path") or "/"))
        if variant == "Stat":
            if path in self.dirs or path in self.files:
                await self._ok(id, {"Stat": self._entry(path)})
            else:
                await self._fail(id, f"{path}: No such file or directory (os error 2)")
        elif variant == "List":
            if path not in self.dirs:
                await self._fail(id, f"{path}: Not a directory (os error 20)")
                return
            children = [
                p
                for p in sorted(self.dirs | set(self.files))
                if p != path and posixpath.dirname(p) == path
            ]
            await self._ok(id, {"List": [self._entry(p) for p in children]})
        elif variant == "Mkdir":
            if path in self.files:
                await self._fail(id, f"{path}: File exists (os error 17)")
                return
            while path not in self.dirs:  # recursive, like the guest agent's
                self.dirs.add(path)
                self.modes[path] = int(args.get("mode") or 0o755)
                path = posixpath.dirname(path)
            await self._ok(id, None)
        elif variant == "OpenFile":
            options = args["options"]
            if path in self.dirs:
                await self._fail(id, f"{path}: Is a directory (os error 21)")
            elif options.get("write"):
                if posixpath.dirname(path) not in self.dirs:
                    await self._fail(id, f"{path}: No such file or directory (os error 2)")
                    return
                self.files[path] = bytearray()
                self.modes[path] = int(options.get("mode") or 0o644)
                self.handles[id] = path
                await self._ok(id, {"Handle": id})
            elif path in self.files:
                self.handles[id] = path
                await self._ok(id, {"Handle": id})
            else:
                await self._fail(id, f"{path}: No such file or directory (os error 2)")
        elif variant == "Write":
            self.writes[id] = self.handles[int(args["handle"])]
        elif variant == "Read":
            data = bytes(self.files[self.handles[int(args["handle"])]])
            for off in range(0, len(data), 3 * 1024 * 1024):
                chunk = data[off : off + 3 * 1024 * 1024]
                await self.send(id, MessageType.FS_DATA, {"data": chunk})
            await self._ok(id, None)
        elif variant == "CloseHandle":
            self.handles.pop(int(args["handle"]), None)
            await self._ok(id, None)
        else:
            await self._fail(id, f"{variant} is not supported by the fake guest")


@dataclass
class Fake:
    url: str
    guest: FsGuest
    sandboxes: dict[str, dict[str, Any]]
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    """(method, path, Authorization header) of every request."""
    log_queries: list[dict[str, str]] = field(default_factory=list)

    def add(self, name: str, status: str = "running", **fields: Any) -> dict[str, Any]:
        sandbox = {"id": str(uuid.uuid4()), "name": name, "slug": name, "status": status}
        sandbox.update(fields)
        self.sandboxes[name] = sandbox
        return sandbox


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _app(fake_ref: list[Fake], socket_path: Path) -> web.Application:
    def fake() -> Fake:
        return fake_ref[0]

    @web.middleware
    async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        fake().requests.append((request.method, request.path, header))
        if header != f"Bearer {TOKEN}":
            return _error(401, "unauthorized", "the token was not accepted")
        if request.match_info.get("ns") != NAMESPACE:
            ns = request.match_info.get("ns")
            return _error(403, "forbidden", f"cannot get sandboxes in namespace {ns}")
        result: web.StreamResponse = await handler(request)
        return result

    def by_id(request: web.Request) -> dict[str, Any] | None:
        for sandbox in fake().sandboxes.values():
            if sandbox["id"] == request.match_info["id"]:
                return sandbox
        return None

    async def get_by_name(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        sandbox = fake().sandboxes.get(name)
        if sandbox is None:
            return _error(404, "sandbox_not_found", f"sandbox {name} not found")
        pending = sandbox.pop("_next", None)
        response = web.json_response({k: v for k, v in sandbox.items() if k != "_next"})
        if pending is not None:
            sandbox.update(pending)
        return response

    async def verb(request: web.Request) -> web.Response:
        sandbox = by_id(request)
        if sandbox is None:
            return _error(404, "sandbox_not_found", "no such sandbox")
        action = request.match_info["verb"]
        if action == "start":
            assert request.query.get("wait_for") == "running"
            sandbox.update(status="running", status_reason=None)
        elif action == "stop":
            sandbox.update(status="stopping", _next={"status": "stopped"})
        elif action == "pause":
            sandbox.update(status="stopped", status_reason="paused")
        elif action == "suspend":
            sandbox.update(status="stopped", status_reason=None, phase="Suspended")
        elif action == "resume":
            sandbox.update(status="running", status_reason=None, phase="Running")
        elif action in ("kill", "drain"):
            sandbox.setdefault("verbs", []).append(action)
        else:
            return _error(404, "not_found", f"no verb {action}")
        return web.json_response({k: v for k, v in sandbox.items() if k != "_next"})

    async def metrics(request: web.Request) -> web.Response:
        if by_id(request) is None:
            return _error(404, "sandbox_not_found", "no such sandbox")
        return web.json_response({"cpu_percent": 12.5, "memory_bytes": 4096})

    async def logs(request: web.Request) -> web.StreamResponse:
        sandbox = by_id(request)
        if sandbox is None:
            return _error(404, "sandbox_not_found", "no such sandbox")
        fake().log_queries.append(dict(request.query))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for n, (source, text) in enumerate(sandbox.get("log", [])):
            data = {"ts": f"2026-12-04T06:00:0{n}.000Z", "source": source, "text": text}
            # a long entry arrives in pieces, as it may over TCP
            event = f"event: log\nid: c{n}\ndata: {json.dumps(data)}\n\n".encode()
            await response.write(event[:7])
            await response.write(event[7:])
        await response.write_eof()
        return response

    async def agent(request: web.Request) -> web.StreamResponse:
        if by_id(request) is None:
            return _error(404, "sandbox_not_found", "no such sandbox")
        ws = web.WebSocketResponse(max_msg_size=8 * 1024 * 1024)
        await ws.prepare(request)
        reader, writer = await asyncio.open_unix_connection(str(socket_path))

        async def downstream() -> None:
            while data := await reader.read(64 * 1024):
                for off in range(0, len(data), PIECE):
                    await ws.send_bytes(data[off : off + PIECE])
            await ws.close()

        task = asyncio.create_task(downstream())
        try:
            async for message in ws:
                if message.type == WSMsgType.BINARY:
                    writer.write(message.data)
                    await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await task
        return ws

    app = web.Application(middlewares=[auth])
    prefix = "/ns/{ns}/v1/sandboxes"
    app.router.add_get(prefix + "/by-name/{name}", get_by_name)
    app.router.add_post(prefix + "/{id}/{verb}", verb)
    app.router.add_get(prefix + "/{id}/metrics", metrics)
    app.router.add_get(prefix + "/{id}/agent", agent)
    app.router.add_get(prefix + "/{id}/logs", logs)
    return app


@contextlib.asynccontextmanager
async def fake_gateway() -> AsyncIterator[Fake]:
    directory = Path(tempfile.mkdtemp(prefix="ksb-cli-"))
    a, b = socket.socketpair()
    g_reader, g_writer = await asyncio.open_connection(sock=a, limit=1 << 20)
    r_reader, r_writer = await asyncio.open_connection(sock=b, limit=1 << 20)
    guest = FsGuest(g_reader, g_writer)
    guest.setup_fs()
    relay = Relay(directory / "agent.sock")
    await relay.start()
    guest_task = asyncio.create_task(guest.run())
    relay_task = asyncio.create_task(relay.serve_guest(r_reader, r_writer))
    ref: list[Fake] = []
    server = TestServer(_app(ref, directory / "agent.sock"))
    await server.start_server()
    try:
        await relay.wait_ready()
        ref.append(Fake(str(server.make_url("")).rstrip("/"), guest, {}))
        yield ref[0]
    finally:
        await server.close()
        await relay.close()
        await relay_task
        guest.writer.close()
        with contextlib.suppress(ConnectionError):
            await guest.writer.wait_closed()
        await guest_task
        shutil.rmtree(directory, ignore_errors=True)
