"""GET /v1/sandboxes/{id}/logs: the node agent's Server-Sent Events passed through with the
caller's token and query, refusals as HTTP errors, and the real SDK reading them."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from kubesandbox_gateway.app import Gateway
from kubesandbox_gateway.routes import make_app
from tests.unit.gateway import fakes
from tests.unit.gateway.conftest import (
    APP_FIXTURES,
    NOBODY_TOKEN,
    SA_TOKEN,
    SA_USER,
    AppClient,
    announce_node_agent,
    bearer,
    running_sandbox,
)

pytestmark = APP_FIXTURES


@pytest.fixture
async def node_agent(
    kube: fakes.FakeKube, auth: fakes.FakeAuth
) -> AsyncIterator[fakes.FakeNodeAgent]:
    auth.grant(SA_USER, "get", "team-a", resource="sandboxes/log")
    agent = fakes.FakeNodeAgent(token=SA_TOKEN)
    async with TestServer(agent.app, host="127.0.0.1") as server:
        announce_node_agent(kube, str(server.make_url("")).rstrip("/"))
        yield agent


async def test_the_log_streams_through_with_query_and_cursor(
    client: AppClient, kube: fakes.FakeKube, node_agent: fakes.FakeNodeAgent
) -> None:
    uid = running_sandbox(kube)["metadata"]["uid"]
    response = await client.get(
        f"/v1/sandboxes/{uid}/logs",
        params={"sources": "stdout,system", "follow": "true", "tail": "5", "other": "x"},
        headers={**bearer(SA_TOKEN), "Last-Event-ID": fakes.LOG_CURSOR},
    )
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    assert (await response.read()) == b"".join(fakes.LOG_EVENTS)
    query, cursor = node_agent.log_requests[0]
    assert query == {"sources": "stdout,system", "follow": "true", "tail": "5"}
    assert cursor == fakes.LOG_CURSOR


async def test_reading_a_log_needs_get_on_sandboxes_log(
    client: AppClient, kube: fakes.FakeKube, auth: fakes.FakeAuth, node_agent: fakes.FakeNodeAgent
) -> None:
    uid = running_sandbox(kube)["metadata"]["uid"]
    auth.grant("system:serviceaccount:team-a:nobody", "get", "team-a")
    response = await client.get(f"/v1/sandboxes/{uid}/logs", headers=bearer(NOBODY_TOKEN))
    assert response.status == 403
    assert "get sandboxes/log" in (await response.json())["error"]["message"]
    assert node_agent.log_requests == []


async def test_node_agent_refusals_become_http_errors(
    client: AppClient, kube: fakes.FakeKube, node_agent: fakes.FakeNodeAgent
) -> None:
    uid = running_sandbox(kube)["metadata"]["uid"]
    for status, expected in ((400, 400), (404, 404), (503, 502)):
        node_agent.log_status = status
        response = await client.get(f"/v1/sandboxes/{uid}/logs", headers=bearer(SA_TOKEN))
        assert response.status == expected
    unplaced = running_sandbox(kube, "unplaced")
    kube.objects[("sandboxes", "team-a", "unplaced")]["status"].pop("nodeName")
    response = await client.get(
        f"/v1/sandboxes/{unplaced['metadata']['uid']}/logs", headers=bearer(SA_TOKEN)
    )
    assert response.status == 409


SDK_SCRIPT = """
import asyncio, json, os
from microsandbox import LogReadSource, Sandbox

async def main():
    handle = await Sandbox.get("s1")
    stream = await handle.log_stream(follow=True, sources=[LogReadSource.ALL])
    entries = [
        {"source": str(e.source), "text": e.text(), "cursor": e.cursor, "ts": e.timestamp_ms}
        async for e in stream
    ]
    print(json.dumps(entries), flush=True)

asyncio.run(main())
os._exit(0)  # the SDK's runtime may panic while the interpreter finalizes (msb-compat.md)
"""


async def test_the_sdk_reads_the_log_through_the_gateway(
    kube: fakes.FakeKube, auth: fakes.FakeAuth, node_agent: fakes.FakeNodeAgent, tmp_path: Path
) -> None:
    running_sandbox(kube)
    async with TestServer(make_app(Gateway(kube, auth)), host="127.0.0.1") as server:
        env = {
            "MSB_BACKEND": "cloud",
            "MSB_API_URL": str(server.make_url("")).rstrip("/") + "/ns/team-a",
            "MSB_API_KEY": SA_TOKEN,
            "HOME": str(tmp_path),
            "PATH": "/usr/bin:/bin",
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            SDK_SCRIPT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()[-3000:]
    entries = json.loads(stdout.decode().strip().splitlines()[-1])
    assert [(e["source"].lower().split(".")[-1], e["text"]) for e in entries] == [
        ("stdout", "hello\n"),
        ("system", "session 7: exited with code 0\n"),
    ]
    assert entries[0]["cursor"] == fakes.LOG_CURSOR
    assert entries[0]["ts"] == 1796364000000.0
    query, _ = node_agent.log_requests[0]
    assert query == {"sources": "stdout,stderr,output,system"}
