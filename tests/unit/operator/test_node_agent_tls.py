"""The operator reaches a node agent through the certificate its Lease announces, and no other."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from kubesandbox_api import Sandbox
from kubesandbox_kube.nodeagents import announcement
from kubesandbox_node.server import tls
from kubesandbox_operator.clients.cluster import parse_lease
from kubesandbox_operator.clients.nodeagent import NodeAgentAuth, NodeAgentError, NodeAgents
from kubesandbox_operator.reconcile.references import Resolution

UID = "0b7e6d2c-0000-4000-8000-000000000002"


def lease(endpoint: str, certificate: str | None) -> dict[str, Any]:
    return {
        "metadata": {
            "annotations": announcement(
                endpoint, emulation=True, capabilities=["oci"], certificate=certificate
            )
        },
        "spec": {"renewTime": datetime.now(UTC).isoformat(), "leaseDurationSeconds": 40},
    }


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, str, list[str]]]:
    """An HTTPS node agent stand-in: its endpoint, its certificate and the UIDs it was sent."""
    identity = tls.self_signed(tmp_path / "served", "node-0", ["127.0.0.1"])
    received: list[str] = []

    async def put(request: web.Request) -> web.Response:
        received.append(request.match_info["uid"])
        return web.json_response({"phase": "Pending"})

    app = web.Application()
    app.router.add_put("/v1/sandboxes/{uid}", put)
    server = TestServer(app, scheme="https")
    await server.start_server(ssl=identity.server_context())
    try:
        yield str(server.make_url("")).rstrip("/"), identity.pem, received
    finally:
        await server.close()


async def test_the_pinned_certificate_is_trusted_and_an_impostor_is_not(
    served: tuple[str, str, list[str]], tmp_path: Path
) -> None:
    endpoint, pem, received = served
    token = tmp_path / "token"
    token.write_text("operator-token")
    sandbox = Sandbox.from_body(
        {
            "metadata": {"name": "hello", "namespace": "team", "uid": UID, "generation": 1},
            "spec": {"image": {"oci": "busybox:1.36"}},
        }
    )
    agent = parse_lease("node-0", lease(endpoint, pem))
    assert agent is not None
    assert agent.certificate == pem
    impostor = tls.self_signed(tmp_path / "impostor", "node-0", ["127.0.0.1"]).pem
    lying = parse_lease("node-0", lease(endpoint, impostor))
    assert lying is not None
    async with aiohttp.ClientSession() as session:
        agents = NodeAgents(NodeAgentAuth(token), session)
        assert await agents.put(agent, sandbox, Resolution()) == {"phase": "Pending"}
        with pytest.raises(NodeAgentError, match="certificate verify failed"):
            await agents.put(lying, sandbox, Resolution())
    assert received == [UID]


def test_an_unusable_lease_is_no_node_agent() -> None:
    broken = lease("https://10.0.0.1:9443", None)
    broken["metadata"]["annotations"]["kubesandbox.dev/tls-certificate"] = "not a certificate"
    assert parse_lease("node-0", broken) is None
    assert parse_lease("node-0", {"metadata": {"annotations": {}}}) is None
