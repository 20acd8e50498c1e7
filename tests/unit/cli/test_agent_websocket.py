"""``AgentClient.connect_websocket``: the relay byte stream over the gateway's agent
WebSocket, with frames split across messages."""

import asyncio
import hashlib
import os

import pytest

from kubesandbox_protocol.client import AgentClient, AgentConnectError, AgentError
from tests.unit.cli.fakegateway import NAMESPACE, TOKEN, Fake, fake_gateway

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def agent_url(fake: Fake, sandbox_id: str, namespace: str = NAMESPACE) -> str:
    base = fake.url.replace("http://", "ws://")
    return f"{base}/ns/{namespace}/v1/sandboxes/{sandbox_id}/agent"


async def test_exec_and_ping_over_a_websocket() -> None:
    async with fake_gateway() as fake:
        box = fake.add("box")
        client = await AgentClient.connect_websocket(agent_url(fake, box["id"]), headers=AUTH)
        async with client:
            assert client.ready["agent_version"] == "fake"
            await client.ping()
            result = await client.run("echo", ["over", "ws"])
            assert (result.code, result.stdout) == (0, b"over ws\n")
            data = os.urandom(2 * 1024 * 1024 + 17)  # many 1000-byte WebSocket pieces back
            result = await client.run("cat", stdin=data)
            assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(data).digest()


async def test_files_round_trip_in_chunks_over_a_websocket() -> None:
    data = os.urandom(7 * 1024 * 1024 + 5)  # three fs.data chunks each way
    async with fake_gateway() as fake:
        box = fake.add("box")
        url = agent_url(fake, box["id"])
        async with await AgentClient.connect_websocket(url, headers=AUTH) as client:
            assert await client.write_file("/tmp/blob", data) == len(data)
            assert (await client.stat("/tmp/blob"))["size"] == len(data)
            assert await client.read_file("/tmp/blob") == data


async def test_a_refused_upgrade_reports_its_status() -> None:
    async with fake_gateway() as fake:
        box = fake.add("box")
        with pytest.raises(AgentConnectError) as refused:
            await AgentClient.connect_websocket(
                agent_url(fake, box["id"]), headers={"Authorization": "Bearer wrong"}
            )
        assert refused.value.status == 401
        with pytest.raises(AgentConnectError) as forbidden:
            await AgentClient.connect_websocket(
                agent_url(fake, box["id"], namespace="other"), headers=AUTH
            )
        assert forbidden.value.status == 403


async def test_an_unreachable_gateway_fails_with_status_zero() -> None:
    with pytest.raises(AgentConnectError) as failed:
        await AgentClient.connect_websocket(
            "ws://127.0.0.1:9/ns/x/v1/sandboxes/y/agent", connect_timeout=5
        )
    assert failed.value.status == 0


async def test_a_session_open_when_the_socket_closes_ends_with_an_error() -> None:
    async with fake_gateway() as fake:
        box = fake.add("box")
        client = await AgentClient.connect_websocket(agent_url(fake, box["id"]), headers=AUTH)
        session = await client.exec("sleep", ["100"], keep_stdin_open=True)
        await client._writer.wait_closed()  # the socket goes away under the session
        with pytest.raises(AgentError, match="closed"):
            async with asyncio.timeout(10):
                await session.wait()
        await client.close()
