"""The agent WebSocket served in-process by the relay (``kubesandbox_node.server.bridge``)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import ClientWebSocketResponse, WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer

from kubesandbox_node.relay import SLOT_STEP
from kubesandbox_node.relay.relay import ClientWriter
from kubesandbox_node.server.bridge import AgentBridge
from kubesandbox_protocol.frame import FLAG_SESSION_START, Frame, decode_frame
from kubesandbox_protocol.messages import MessageType, decode_body, encode_body, exec_request
from tests.support.relayenv import RelayEnv, relay_env


@asynccontextmanager
async def serving(relay: Any, *, limit: int = 1 << 20) -> AsyncIterator[TestClient[Any, Any]]:
    async def agent(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=8 << 20)
        await ws.prepare(request)
        await AgentBridge(ws, limit=limit).serve(relay)
        return ws

    app = web.Application()
    app.router.add_get("/agent", agent)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def greeting(ws: ClientWebSocketResponse) -> int:
    """Reads the relay's greeting; returns the first id of the client's range."""
    data = b""
    while len(data) < 12 or len(data) < 12 + struct.unpack(">I", data[8:12])[0]:
        data += await ws.receive_bytes(timeout=5)
    assert decode_body(decode_frame(data[8:]).body).t == MessageType.READY
    return int(struct.unpack(">I", data[:4])[0])


async def until(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not check():  # noqa: ASYNC110 (the relay and the fake guest have no event for it)
            await asyncio.sleep(0.01)


async def test_an_exec_over_the_bridge_and_the_guest_is_told_when_the_client_leaves() -> None:
    async with relay_env() as env, serving(env.relay) as client:
        async with client.ws_connect("/agent") as ws:
            first = await greeting(ws)
            assert env.relay.client_count == 1
            request = encode_body(MessageType.EXEC_REQUEST, exec_request("echo", ["bridged"]))
            await ws.send_bytes(Frame(first + 1, FLAG_SESSION_START, request).encode())
            out = b""
            while b"core.exec.exited" not in out:
                out += await ws.receive_bytes(timeout=5)
            assert b"bridged" in out
        # (the relay's first notice, at the guest's ready, covers every id)
        ours = {"id_start": first, "id_end_exclusive": first + SLOT_STEP}
        await until(lambda: (0, MessageType.RELAY_CLIENT_DISCONNECTED, ours) in env.guest.received)
        assert env.relay.client_count == 0


async def test_frames_outside_the_clients_range_are_refused_as_on_the_socket() -> None:
    async with relay_env() as env, serving(env.relay) as client:
        async with client.ws_connect("/agent") as ws:
            first = await greeting(ws)
            outside = first + SLOT_STEP + 1
            await ws.send_bytes(
                Frame(outside, FLAG_SESSION_START, encode_body(MessageType.PING)).encode()
            )
            answer = decode_frame(await ws.receive_bytes(timeout=5))
            assert answer.id == outside
            assert decode_body(answer.body).payload["kind"] == "invalid_session"
        assert MessageType.PING not in env.guest.types()


async def test_the_relay_closing_ends_the_websocket() -> None:
    env: RelayEnv
    async with (
        relay_env() as env,
        serving(env.relay) as client,
        client.ws_connect("/agent") as ws,
    ):
        await greeting(ws)
        await env.relay.close()
        message = await ws.receive(timeout=5)
        assert message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)


class StalledRelay:
    """Reads nothing until ``go`` is set, then everything; counts the client's bytes."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.read = 0

    async def attach(self, reader: asyncio.StreamReader, writer: ClientWriter) -> None:
        await self.go.wait()
        while chunk := await reader.read(1 << 16):
            self.read += len(chunk)


async def test_a_client_is_read_only_as_fast_as_the_relay_takes_its_bytes() -> None:
    relay = StalledRelay()
    message = b"x" * (1 << 20)
    count = 64
    sent = 0
    async with serving(relay, limit=1 << 16) as client, client.ws_connect("/agent") as ws:

        async def flood() -> None:
            nonlocal sent
            for _ in range(count):
                await ws.send_bytes(message)
                sent += 1

        flooding = asyncio.create_task(flood())
        await asyncio.sleep(1.5)
        # the bridge took at most twice its limit and one message, the sockets' buffers the
        # rest: the client is blocked long before its 64 MiB are out
        assert sent < count // 2, sent
        relay.go.set()
        await asyncio.wait_for(flooding, 30)
        await until(lambda: relay.read == count * len(message))
