"""Reaching the node agent that runs a sandbox: its Lease, its HTTP verbs, its relay socket.

The gateway never learns node agents from configuration: each announces itself with a Lease
``node-agent-<node>`` in ``kubesandbox-system`` whose annotation ``kubesandbox.dev/endpoint``
is its base URL (docs/node-agent-api.md), and the Sandbox's ``status.nodeName`` says which one
to ask. The Lease is parsed here rather than borrowed from the operator (the gateway never
imports it). Every request downstream carries the *caller's* bearer token, so the node agent
reviews the caller's own rights again; the gateway adds no privilege of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from kubesandbox_gateway.errors import GatewayError, unreachable
from kubesandbox_gateway.kubeapi import KubeApi
from kubesandbox_kube.errors import KubeError, NotFound
from kubesandbox_kube.paths import LEASES

LEASE_PREFIX = "node-agent-"
ENDPOINT_ANNOTATION = "kubesandbox.dev/endpoint"
DEFAULT_LEASE_SECONDS = 40
JsonDict = dict[str, Any]


@dataclass(frozen=True)
class NodeAgent:
    node: str
    endpoint: str
    expires_at: datetime

    def url(self, uid: str, verb: str = "") -> str:
        return f"{self.endpoint}/v1/sandboxes/{uid}" + (f"/{verb}" if verb else "")


def parse_lease(node: str, lease: JsonDict) -> NodeAgent | None:
    """The node agent a Lease announces; ``None`` when it names no usable endpoint."""
    metadata = lease.get("metadata") or {}
    spec = lease.get("spec") or {}
    endpoint = str((metadata.get("annotations") or {}).get(ENDPOINT_ANNOTATION) or "")
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    renewed = spec.get("renewTime") or spec.get("acquireTime")
    try:
        renewed_at = (
            datetime.fromisoformat(str(renewed).replace("Z", "+00:00"))
            if renewed
            else datetime.fromtimestamp(0, UTC)
        )
        seconds = int(spec.get("leaseDurationSeconds") or DEFAULT_LEASE_SECONDS)
    except (TypeError, ValueError):
        return None
    if renewed_at.tzinfo is None:
        renewed_at = renewed_at.replace(tzinfo=UTC)
    return NodeAgent(node, endpoint.rstrip("/"), renewed_at + timedelta(seconds=seconds))


async def node_agent_for(kube: KubeApi, namespace: str, sandbox: JsonDict) -> NodeAgent:
    """The live node agent of a sandbox's node, or a 502/409 the caller can act on."""
    name = sandbox.get("metadata", {}).get("name", "")
    node = str((sandbox.get("status") or {}).get("nodeName") or "")
    if not node:
        raise GatewayError(
            409, "sandbox_not_running", f"sandbox {name} is not placed on a node yet"
        )
    try:
        lease = await kube.get(LEASES.in_namespace(namespace).named(LEASE_PREFIX + node))
    except NotFound as error:
        raise unreachable(f"no node agent has announced itself on node {node}") from error
    except KubeError as error:
        raise unreachable(f"cannot read the node agent Lease of node {node}: {error}") from error
    agent = parse_lease(node, lease)
    if agent is None:
        raise unreachable(f"the node agent Lease of node {node} names no endpoint")
    if agent.expires_at < datetime.now(UTC):
        raise unreachable(f"the node agent of node {node} stopped renewing its Lease")
    return agent
