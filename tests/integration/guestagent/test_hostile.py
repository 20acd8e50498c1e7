"""Hostile and malformed frames are answered, never fatal: the agent keeps serving."""

from __future__ import annotations

import asyncio
import struct

import pytest

from kubesandbox_protocol import AgentClient
from kubesandbox_protocol.frame import FLAG_SESSION_START, Frame, read_frame
from kubesandbox_protocol.messages import MessageType, decode_body, encode_body
from tests.support.vms import BootedVM

pytestmark = [pytest.mark.vm, pytest.mark.asyncio(loop_scope="module")]


async def _answer(client: AgentClient, frame: Frame) -> dict[str, object]:
    session = client.open_session(frame.id)
    try:
        await client.send(frame.id, frame.flags, frame.body)
        while True:
            got, body = await session.next_body()
            if got.terminal:
                assert body.t == MessageType.ERROR, body
                return body.payload
    finally:
        session.close()


async def test_garbage_cbor_is_a_malformed_message(client: AgentClient) -> None:
    id = client.open_session().id
    client._sessions.pop(id)
    payload = await _answer(client, Frame(id, FLAG_SESSION_START, b"\xff\x00garbage"))
    assert payload["kind"] == "malformed_message"
    await client.ping()


async def test_unknown_type_is_unsupported(client: AgentClient) -> None:
    id = client.open_session().id
    client._sessions.pop(id)
    body = encode_body("core.nonsense.request", {"x": 1})
    payload = await _answer(client, Frame(id, FLAG_SESSION_START, body))
    assert payload["kind"] == "unsupported_message_type"
    await client.ping()


async def test_wrong_payload_shape_is_invalid_payload(client: AgentClient) -> None:
    id = client.open_session().id
    client._sessions.pop(id)
    body = encode_body(MessageType.EXEC_REQUEST, {"cmd": 12, "args": "nope"})
    payload = await _answer(client, Frame(id, FLAG_SESSION_START, body))
    assert payload["kind"] in {"invalid_payload", "malformed_message"}
    await client.ping()


async def test_higher_generation_is_accepted(client: AgentClient) -> None:
    answer = await client.request(MessageType.PING, {}, id=None)
    assert answer.t == MessageType.PONG
    session = client.open_session()
    try:
        await client.send(session.id, FLAG_SESSION_START, encode_body(MessageType.PING, v=99))
        _, body = await session.next_body()
        assert body.t == MessageType.PONG
    finally:
        session.close()


async def test_ids_out_of_range_are_rejected_by_the_relay(client: AgentClient) -> None:
    bad = client.id_end + 10
    payload = await _answer(client, Frame(bad, FLAG_SESSION_START, encode_body(MessageType.PING)))
    assert payload["kind"] == "invalid_session"
    await client.ping()


async def test_oversized_and_truncated_frames_cost_only_their_sender(agent_vm: BootedVM) -> None:
    async with await AgentClient.connect(agent_vm.socket) as bystander:
        for hostile in (
            struct.pack(">I", 0xFFFF_FFF0) + b"\0" * 9,
            struct.pack(">IIB", 100, 1, 2) + b"x",
        ):
            reader, writer = await asyncio.open_unix_connection(str(agent_vm.socket))
            await reader.readexactly(8)
            await read_frame(reader)
            writer.write(hostile)
            writer.write_eof()
            while await reader.read(65536):
                pass
            writer.close()
            await writer.wait_closed()
        await bystander.ping()
        assert (await bystander.run("/bin/echo", ["alive"])).stdout == b"alive\n"


async def test_stdin_for_an_unknown_session_does_not_hurt(client: AgentClient) -> None:
    id = client.open_session().id
    client._sessions.pop(id)
    await client.send(id, 0, encode_body(MessageType.EXEC_STDIN, {"data": b"x"}))
    await client.send(id, 0, encode_body(MessageType.EXEC_SIGNAL, {"signal": 9}))
    await client.ping()
    assert decode_body(encode_body(MessageType.PING)).t == MessageType.PING


async def _raw_port(
    vm: BootedVM,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connects to QEMU's end of the agent port, as a relay would, and waits until the agent
    answers a ping there. QEMU may refuse a connection that arrives while it is still tearing
    down the previous one: try again then."""
    ping = Frame(1, FLAG_SESSION_START, encode_body(MessageType.PING)).encode()
    for _ in range(5):
        reader, writer = await asyncio.open_unix_connection(str(vm.vm.spec.agent_socket))
        try:
            writer.write(ping)
            async with asyncio.timeout(10):
                while (frame := await read_frame(reader)) is not None:
                    if frame.id == 1 and decode_body(frame.body).t == MessageType.PONG:
                        return reader, writer
        except (ConnectionError, TimeoutError):
            pass
        writer.close()
    raise AssertionError("the agent never answered on a raw connection")


async def _expect_malformed(reader: asyncio.StreamReader) -> None:
    async with asyncio.timeout(10):
        while (frame := await read_frame(reader)) is not None:
            body = decode_body(frame.body)
            if body.t == MessageType.ERROR:
                assert body.payload["kind"] == "malformed_message"
                return
    raise AssertionError("no core.error for a corrupt stream")


async def test_a_corrupt_channel_from_the_host_side_does_not_kill_the_agent(
    agent_vm: BootedVM,
) -> None:
    """Bypass the relay (which refuses these itself) and corrupt the port stream."""
    await agent_vm.vm.relay.close()
    reader, writer = await _raw_port(agent_vm)
    for hostile in (
        struct.pack(">I", 0xFFFF_FFF0) + b"\xff" * 64,  # length far over the limit
        struct.pack(">I", 3) + b"\x00" * 16,  # length under the minimum
    ):
        writer.write(hostile)
        await writer.drain()
        await _expect_malformed(reader)
    writer.write(Frame(1, FLAG_SESSION_START, encode_body(MessageType.PING)).encode())
    async with asyncio.timeout(10):
        while (frame := await read_frame(reader)) is not None and frame.id != 1:
            pass
    assert frame is not None
    assert decode_body(frame.body).t == MessageType.PONG
    writer.close()
    await writer.wait_closed()
    await agent_vm.vm.reattach_relay()
    async with await AgentClient.connect(agent_vm.socket) as client:
        await client.ping()
        assert (await client.run("/bin/echo", ["survived"])).stdout == b"survived\n"
