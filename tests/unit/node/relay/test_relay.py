import asyncio
import shutil
import struct
import tempfile
from pathlib import Path

from microsandbox.agent import AgentClient as SdkClient

from kubesandbox_node.relay import SLOT_COUNT, SLOT_STEP, Relay
from kubesandbox_protocol import AgentClient
from kubesandbox_protocol.frame import FLAG_SESSION_START, Frame, read_frame
from kubesandbox_protocol.messages import MessageType, decode_body, encode_body
from tests.support.fakeguest import guest_pair
from tests.support.relayenv import relay_env


async def _raw_connect(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int, int]:
    reader, writer = await asyncio.open_unix_connection(path)
    start, end = struct.unpack(">II", await reader.readexactly(8))
    ready = await read_frame(reader)
    assert ready is not None
    assert decode_body(ready.body).t == MessageType.READY
    return reader, writer, start, end


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await writer.wait_closed()


async def test_each_client_gets_its_own_slot_and_the_ready_frame() -> None:
    async with relay_env() as env:
        a = await _raw_connect(str(env.socket))
        b = await _raw_connect(str(env.socket))
        assert (a[2], a[3]) == (0, SLOT_STEP)
        assert (b[2], b[3]) == (SLOT_STEP, 2 * SLOT_STEP)
        assert env.relay.client_count == 2
        await _close(a[1])
        await _close(b[1])


async def test_guest_frames_are_routed_back_by_slot() -> None:
    async with (
        relay_env() as env,
        await AgentClient.connect(env.socket) as one,
        await AgentClient.connect(env.socket) as two,
    ):
        results = await asyncio.gather(
            one.run("echo", ["one"]), two.run("echo", ["two"]), one.run("echo", ["three"])
        )
        assert [r.stdout for r in results] == [b"one\n", b"two\n", b"three\n"]
        ids = [id for id, t, _ in env.guest.received if t == MessageType.EXEC_REQUEST]
        assert {id // SLOT_STEP for id in ids} == {0, 1}


async def test_ids_outside_the_clients_range_are_rejected_not_forwarded() -> None:
    async with relay_env() as env:
        reader, writer, _, end = await _raw_connect(str(env.socket))
        for bad in (0, end, end + 5):
            writer.write(Frame(bad, FLAG_SESSION_START, encode_body(MessageType.PING)).encode())
            answer = await read_frame(reader)
            assert answer is not None
            assert answer.id == bad
            body = decode_body(answer.body)
            assert (body.t, body.payload["kind"]) == ("core.error", "invalid_session")
        writer.write(Frame(1, FLAG_SESSION_START, encode_body(MessageType.PING)).encode())
        pong = await read_frame(reader)
        assert pong is not None
        assert decode_body(pong.body).t == MessageType.PONG
        assert MessageType.PING in env.guest.types()
        assert env.guest.types().count(MessageType.PING) == 1
        await _close(writer)


async def test_oversized_length_closes_only_that_client() -> None:
    async with relay_env() as env:
        reader, writer, _, _ = await _raw_connect(str(env.socket))
        async with await AgentClient.connect(env.socket) as bystander:
            writer.write(struct.pack(">I", 0x7FFFFFFF) + b"\0" * 16)
            error = await read_frame(reader)
            assert error is not None
            assert decode_body(error.body).payload["kind"] == "malformed_message"
            assert await reader.read() == b""
            await bystander.ping()
        await _close(writer)


async def test_clients_cannot_forge_relay_messages() -> None:
    async with relay_env() as env, await AgentClient.connect(env.socket) as client:
        forged = {"id_start": 5, "id_end_exclusive": 6}
        body = await client.request(MessageType.RELAY_CLIENT_DISCONNECTED, forged)
        assert body.payload["kind"] == "unsupported_message_type"
        await client.ping()
        assert forged not in [p for _, _, p in env.guest.received]


async def test_disconnect_is_reported_to_the_guest_with_the_range() -> None:
    async with relay_env() as env:
        client = await AgentClient.connect(env.socket)
        start, end = client.id_start, client.id_end
        await client.close()
        expected = {"id_start": start, "id_end_exclusive": end}
        await env.guest.wait_for(MessageType.RELAY_CLIENT_DISCONNECTED, **expected)
        assert env.relay.client_count == 0


async def test_slot_is_reused_after_disconnect_and_129th_client_is_refused() -> None:
    async with relay_env() as env:
        conns = [await _raw_connect(str(env.socket)) for _ in range(SLOT_COUNT)]
        reader, writer = await asyncio.open_unix_connection(str(env.socket))
        assert await reader.read() == b""
        await _close(writer)
        await _close(conns[5][1])
        await env.guest.wait_client_gone(5 * SLOT_STEP)
        again = await _raw_connect(str(env.socket))
        assert again[2] == 5 * SLOT_STEP
        for conn in [*conns[:5], *conns[6:], again]:
            await _close(conn[1])


async def test_a_client_that_does_not_read_is_dropped_and_others_continue() -> None:
    limits = {"client_buffer_bytes": 256 * 1024, "slow_client_timeout": 0.5}
    async with relay_env(**limits) as env, await AgentClient.connect(env.socket) as healthy:
        _, writer, start, _ = await _raw_connect(str(env.socket))
        flood = {"count": 200, "size": 64 * 1024}  # 12.5 MiB never read
        request = Frame(start + 1, FLAG_SESSION_START, encode_body("test.flood", flood))
        writer.write(request.encode())
        await writer.drain()
        await env.guest.wait_client_gone(start)
        assert env.relay.client_count == 1
        assert (await healthy.run("echo", ["still", "here"])).stdout == b"still here\n"
        await _close(writer)


async def test_the_real_sdk_connects_and_runs_through_the_relay() -> None:
    async with relay_env() as env:
        sdk = await SdkClient.connect(str(env.socket), timeout=10)
        try:
            assert decode_body(sdk.ready_bytes()).t == MessageType.READY
            pong = await sdk.request(FLAG_SESSION_START, encode_body(MessageType.PING, v=10))
            assert decode_body(pong["body"]).t == MessageType.PONG
            request = {"cmd": "echo", "args": ["sdk"], "env": [], "tty": False}
            stream = await sdk.stream(
                FLAG_SESSION_START, encode_body(MessageType.EXEC_REQUEST, request, v=10)
            )
            types = [decode_body(f["body"]).t async for f in stream]
            assert types == ["core.exec.started", "core.exec.stdout", "core.exec.exited"]
        finally:
            await sdk.close()


async def test_a_new_relay_ends_every_orphaned_session_before_admitting_clients() -> None:
    async with relay_env() as env:
        everything = {"id_start": 0, "id_end_exclusive": 0xFFFFFFFF}
        await env.guest.wait_for(MessageType.RELAY_CLIENT_DISCONNECTED, **everything)
        assert env.guest.received[0][2] == everything


async def test_a_repeated_ready_is_kept_for_new_clients_and_not_routed() -> None:
    async with relay_env() as env, await AgentClient.connect(env.socket) as early:
        env.guest.writer.write(env.guest.stray_ready())
        await env.guest.writer.drain()
        await early.ping()  # the guest handled frames after the stray ready
        async with await AgentClient.connect(env.socket) as late:
            assert late.ready["agent_version"] == "again"
        assert early.ready["agent_version"] == "fake"


async def test_a_relay_given_the_known_ready_frame_serves_without_a_new_one() -> None:
    directory = Path(tempfile.mkdtemp(prefix="ksb-relay-"))
    guest, reader, writer = await guest_pair()
    relay = Relay(directory / "agent.sock")
    await relay.start()
    known = guest.stray_ready()
    served = asyncio.create_task(relay.serve_guest(reader, writer, known_ready=known))
    try:
        async with await AgentClient.connect(relay.socket_path) as client:
            assert client.ready["agent_version"] == "again"
    finally:
        await relay.close()
        await served
        guest.writer.close()
        await guest.writer.wait_closed()
        shutil.rmtree(directory, ignore_errors=True)
