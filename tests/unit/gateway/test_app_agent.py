"""The agent WebSocket pipe and the node agent verbs, against a fake node agent over HTTP."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestServer

from kubesandbox_node.server import tls
from tests.unit.gateway import fakes
from tests.unit.gateway.conftest import (
    ALICE_TOKEN,
    APP_FIXTURES,
    NOBODY_TOKEN,
    SA_TOKEN,
    AppClient,
    announce_node_agent,
    bearer,
    gateway_logs,
    running_sandbox,
)

pytestmark = APP_FIXTURES


@pytest.fixture
async def node_agent(kube: fakes.FakeKube) -> AsyncIterator[fakes.FakeNodeAgent]:
    agent = fakes.FakeNodeAgent(token=SA_TOKEN)
    async with TestServer(agent.app) as server:
        announce_node_agent(kube, str(server.make_url("")).rstrip("/"))
        yield agent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def handshake_error(
    client: AppClient, path: str, token: str
) -> aiohttp.WSServerHandshakeError:
    with pytest.raises(aiohttp.WSServerHandshakeError) as raised:
        await client.ws_connect(path, headers=bearer(token))
    return raised.value


# ---- the agent WebSocket -----------------------------------------------------------------


async def test_bytes_flow_both_ways_with_the_callers_token(
    client: AppClient, kube: fakes.FakeKube, node_agent: fakes.FakeNodeAgent
) -> None:
    uid = running_sandbox(kube)["metadata"]["uid"]
    async with client.ws_connect(f"/v1/sandboxes/{uid}/agent", headers=bearer(SA_TOKEN)) as ws:
        assert ws.protocol is None  # no subprotocol, as the SDK expects
        greeting = await ws.receive(timeout=5)
        assert greeting.type == WSMsgType.BINARY
        assert greeting.data.endswith(b"ready")
        # A frame split across two messages is just bytes to the pipe.
        await ws.send_bytes(b"\x00\x00\x00\x09half")
        await ws.send_bytes(b"-frame")
        assert (await ws.receive(timeout=5)).data == b"echo:\x00\x00\x00\x09half"
        assert (await ws.receive(timeout=5)).data == b"echo:-frame"
    assert node_agent.agent_sockets == 1


async def test_messages_of_8_mib_pass(
    client: AppClient, kube: fakes.FakeKube, node_agent: fakes.FakeNodeAgent
) -> None:
    uid = running_sandbox(kube)["metadata"]["uid"]
    payload = os.urandom(8 << 20)
    async with client.ws_connect(
        f"/ns/team-a/v1/sandboxes/{uid}/agent", headers=bearer(SA_TOKEN), max_msg_size=16 << 20
    ) as ws:
        await ws.receive(timeout=5)
        await ws.send_bytes(payload)
        answer = await ws.receive(timeout=30)
        assert answer.type == WSMsgType.BINARY
        assert answer.data == b"echo:" + payload


async def test_the_node_agent_closing_closes_the_client(
    client: AppClient, kube: fakes.FakeKube, node_agent: fakes.FakeNodeAgent
) -> None:
    uid = running_sandbox(kube)["metadata"]["uid"]
    async with client.ws_connect(f"/v1/sandboxes/{uid}/agent", headers=bearer(SA_TOKEN)) as ws:
        await ws.receive(timeout=5)
        await ws.send_bytes(b"close-please")
        closing = await ws.receive(timeout=5)
        assert closing.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)


async def test_a_client_that_drops_its_connection_frees_the_relay(
    client: AppClient,
    kube: fakes.FakeKube,
    node_agent: fakes.FakeNodeAgent,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The SDK drops the TCP connection after each call, without a close handshake."""
    uid = running_sandbox(kube)["metadata"]["uid"]
    with gateway_logs(monkeypatch) as logs:
        reader, writer = await asyncio.open_connection(client.host, client.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /v1/sandboxes/{uid}/agent HTTP/1.1\r\nHost: x\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Authorization: Bearer {SA_TOKEN}\r\n\r\n"
            ).encode()
        )
        status_line = await asyncio.wait_for(reader.readline(), 5)
        assert status_line.startswith(b"HTTP/1.1 101")
        await asyncio.wait_for(reader.readuntil(b"ready"), 5)  # the relay's greeting
        writer.transport.abort()
        for _ in range(200):
            if node_agent.agent_sockets_closed:
                break
            await asyncio.sleep(0.01)
        assert node_agent.agent_sockets_closed == 1
        for _ in range(200):
            if any(e.get("status") == "client gone" for e in logs):
                break
            await asyncio.sleep(0.01)
    gone = [e for e in logs if e["event"] == "request" and e.get("status") == "client gone"]
    assert [e["path"] for e in gone] == [f"/v1/sandboxes/{uid}/agent"]


async def test_agent_needs_create_on_sandboxes_exec(
    client: AppClient, kube: fakes.FakeKube, node_agent: fakes.FakeNodeAgent, auth: fakes.FakeAuth
) -> None:
    uid = running_sandbox(kube)["metadata"]["uid"]
    auth.grant("system:serviceaccount:team-a:nobody", "create", "team-a")  # not exec
    error = await handshake_error(client, f"/v1/sandboxes/{uid}/agent", NOBODY_TOKEN)
    assert error.status == 403
    error = await handshake_error(client, f"/ns/team-a/v1/sandboxes/{uid}/agent", ALICE_TOKEN)
    assert error.status == 403
    assert node_agent.agent_sockets == 0


async def test_agent_of_a_sandbox_that_is_not_running_is_409(
    client: AppClient, kube: fakes.FakeKube, node_agent: fakes.FakeNodeAgent
) -> None:
    sandbox = running_sandbox(kube)
    kube.sandbox("team-a", "s1")["status"] = {"phase": "Stopped", "nodeName": "node-1"}
    error = await handshake_error(
        client, f"/v1/sandboxes/{sandbox['metadata']['uid']}/agent", SA_TOKEN
    )
    assert error.status == 409


async def test_agent_of_an_idle_suspended_sandbox_goes_to_the_node_agent_which_wakes_it(
    client: AppClient, kube: fakes.FakeKube, node_agent: fakes.FakeNodeAgent
) -> None:
    uid = running_sandbox(kube)["metadata"]["uid"]
    kube.sandbox("team-a", "s1")["status"] = {"phase": "Suspended", "nodeName": "node-1"}
    async with client.ws_connect(f"/v1/sandboxes/{uid}/agent", headers=bearer(SA_TOKEN)) as ws:
        assert (await ws.receive(timeout=5)).data.endswith(b"ready")
    assert node_agent.agent_sockets == 1


async def test_agent_of_a_sandbox_suspended_on_purpose_is_409(
    client: AppClient, kube: fakes.FakeKube, node_agent: fakes.FakeNodeAgent
) -> None:
    uid = running_sandbox(kube)["metadata"]["uid"]
    sandbox = kube.sandbox("team-a", "s1")
    sandbox["spec"]["lifecycle"] = {"state": "Suspended"}
    sandbox["status"] = {"phase": "Suspended", "nodeName": "node-1"}
    error = await handshake_error(client, f"/v1/sandboxes/{uid}/agent", SA_TOKEN)
    assert error.status == 409
    assert node_agent.agent_sockets == 0


async def test_agent_of_an_unknown_sandbox_is_404(
    client: AppClient, node_agent: fakes.FakeNodeAgent
) -> None:
    error = await handshake_error(
        client, "/v1/sandboxes/00000000-0000-0000-0000-000000000000/agent", SA_TOKEN
    )
    assert error.status == 404


async def test_node_agent_refusing_the_token_is_403(
    client: AppClient, kube: fakes.FakeKube, node_agent: fakes.FakeNodeAgent
) -> None:
    uid = running_sandbox(kube)["metadata"]["uid"]
    node_agent.refuse_with = 403
    error = await handshake_error(client, f"/v1/sandboxes/{uid}/agent", SA_TOKEN)
    assert error.status == 403


async def test_unreachable_node_agent_is_502_before_the_upgrade(
    client: AppClient, kube: fakes.FakeKube
) -> None:
    uid = running_sandbox(kube)["metadata"]["uid"]
    announce_node_agent(kube, f"http://127.0.0.1:{free_port()}")
    response = await client.get(f"/v1/sandboxes/{uid}/agent", headers=bearer(SA_TOKEN))
    assert response.status == 502
    assert (await response.json())["error"]["code"] == "orchestrator_unreachable"


@pytest.mark.parametrize("lease", ["missing", "expired", "no-endpoint", "bad-endpoint"])
async def test_lost_or_unannounced_node_agents_are_502(
    client: AppClient, kube: fakes.FakeKube, lease: str
) -> None:
    uid = running_sandbox(kube)["metadata"]["uid"]
    if lease == "expired":
        announce_node_agent(
            kube, "http://127.0.0.1:1", renewed=datetime.now(UTC) - timedelta(minutes=5)
        )
    elif lease == "no-endpoint":
        announce_node_agent(kube, "")
    elif lease == "bad-endpoint":
        announce_node_agent(kube, "file:///etc/passwd")
    response = await client.get(f"/v1/sandboxes/{uid}/agent", headers=bearer(SA_TOKEN))
    assert response.status == 502
    body = await response.json()
    assert body["error"]["code"] == "orchestrator_unreachable"
    assert "node-1" in body["error"]["message"]


async def test_sandbox_without_a_node_is_409(client: AppClient, kube: fakes.FakeKube) -> None:
    uid = running_sandbox(kube)["metadata"]["uid"]
    del kube.sandbox("team-a", "s1")["status"]["nodeName"]
    response = await client.post(f"/v1/sandboxes/{uid}/kill", headers=bearer(SA_TOKEN))
    assert response.status == 409
    assert (await response.json())["error"]["code"] == "sandbox_not_running"


# ---- node agent verbs --------------------------------------------------------------------


@pytest.mark.parametrize("verb", ["kill", "drain"])
async def test_kill_and_drain_go_to_the_node_agent(
    client: AppClient, kube: fakes.FakeKube, node_agent: fakes.FakeNodeAgent, verb: str
) -> None:
    uid = running_sandbox(kube)["metadata"]["uid"]
    response = await client.post(f"/v1/sandboxes/{uid}/{verb}", headers=bearer(SA_TOKEN))
    assert response.status == 200, await response.text()
    assert (await response.json())["phase"] in ("Stopped", "Draining")
    assert node_agent.verbs == [(uid, verb, "{}")]


async def test_metrics_come_from_the_node_agent(
    client: AppClient, kube: fakes.FakeKube, node_agent: fakes.FakeNodeAgent
) -> None:
    uid = running_sandbox(kube)["metadata"]["uid"]
    response = await client.get(f"/v1/sandboxes/{uid}/metrics", headers=bearer(SA_TOKEN))
    assert await response.json() == {"cpuPercent": 12.5, "memoryBytes": 1 << 20}
    response = await client.get(f"/v1/sandboxes/{uid}/metrics", headers=bearer(NOBODY_TOKEN))
    assert response.status == 403
    assert "get sandboxes" in (await response.json())["error"]["message"]


async def test_node_agent_verbs_refused_downstream_are_403(
    client: AppClient, kube: fakes.FakeKube, auth: fakes.FakeAuth
) -> None:
    # The gateway allowed the caller, the node agent (asking again) did not.
    agent = fakes.FakeNodeAgent(token="some-other-token")
    async with TestServer(agent.app) as server:
        announce_node_agent(kube, str(server.make_url("")).rstrip("/"))
        uid = running_sandbox(kube)["metadata"]["uid"]
        response = await client.post(f"/v1/sandboxes/{uid}/kill", headers=bearer(SA_TOKEN))
    assert response.status == 403
    assert agent.verbs == []


# ---- a node agent serving its own certificate ----------------------------------------------


async def test_the_gateway_trusts_exactly_the_certificate_the_lease_announces(
    client: AppClient, kube: fakes.FakeKube, tmp_path: Path
) -> None:
    served = tls.self_signed(tmp_path / "served", "node-1", ["127.0.0.1"])
    impostor = tls.self_signed(tmp_path / "impostor", "node-1", ["127.0.0.1"])
    agent = fakes.FakeNodeAgent(token=SA_TOKEN)
    server = TestServer(agent.app, scheme="https")
    await server.start_server(ssl=served.server_context())
    try:
        endpoint = str(server.make_url("")).rstrip("/")
        assert endpoint.startswith("https://")
        uid = running_sandbox(kube)["metadata"]["uid"]

        announce_node_agent(kube, endpoint, certificate=served.pem)
        response = await client.post(f"/v1/sandboxes/{uid}/kill", headers=bearer(SA_TOKEN))
        assert response.status == 200, await response.text()
        path = f"/v1/sandboxes/{uid}/agent"
        async with client.ws_connect(path, headers=bearer(SA_TOKEN)) as ws:
            assert (await ws.receive(timeout=5)).data.endswith(b"ready")

        announce_node_agent(kube, endpoint, certificate=impostor.pem)
        response = await client.post(f"/v1/sandboxes/{uid}/kill", headers=bearer(SA_TOKEN))
        assert response.status == 502
        assert "certificate" in (await response.json())["error"]["message"].lower()
        assert (await handshake_error(client, path, SA_TOKEN)).status == 502
    finally:
        await server.close()
    assert agent.verbs == [(uid, "kill", "{}")]
    assert agent.agent_sockets == 1


async def test_a_lease_with_a_broken_certificate_is_502(
    client: AppClient, kube: fakes.FakeKube
) -> None:
    uid = running_sandbox(kube)["metadata"]["uid"]
    announce_node_agent(kube, "https://127.0.0.1:1", certificate="not a certificate")
    response = await client.post(f"/v1/sandboxes/{uid}/kill", headers=bearer(SA_TOKEN))
    assert response.status == 502
    message = (await response.json())["error"]["message"]
    assert "kubesandbox.dev/tls-certificate" in message
