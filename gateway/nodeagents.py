"""Reaching the node agent that runs a sandbox: its Lease, its HTTP verbs, its relay socket.

The gateway never learns node agents from configuration: each announces itself with a Lease
``node-agent-<node>`` in ``kubesandbox-system`` (docs/node-agent-api.md), parsed by
:mod:`kubesandbox_kube.nodeagents` exactly as the operator parses it: the base URL and, when
the node agent made its own certificate, that certificate, which is then the only one the
gateway accepts from it (``NodeAgentLease.pinned_ssl``). The Sandbox's ``status.nodeName``
says which Lease to read. Every request downstream carries the *caller's* bearer token, so the
node agent reviews the caller's own rights again; the gateway adds no privilege of its own.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

from kubesandbox_gateway.errors import GatewayError, unreachable
from kubesandbox_gateway.kubeapi import KubeApi, ObjectCache
from kubesandbox_kube.errors import KubeError, NotFound
from kubesandbox_kube.nodeagents import LeaseError, NodeAgentLease, lease_name, parse_lease
from kubesandbox_kube.paths import LEASES

JsonDict = dict[str, Any]


async def node_agent_for(
    kube: KubeApi, namespace: str, sandbox: JsonDict, leases: ObjectCache | None = None
) -> NodeAgentLease:
    """The live node agent of a sandbox's node, or a 502/409 the caller can act on.

    The Lease comes from ``leases`` (the watch's copy) when that has a usable, unexpired one;
    otherwise (not seen yet, or a renewal the watch has not delivered) from the apiserver."""
    name = sandbox.get("metadata", {}).get("name", "")
    node = str((sandbox.get("status") or {}).get("nodeName") or "")
    if not node:
        raise GatewayError(
            409, "sandbox_not_running", f"sandbox {name} is not placed on a node yet"
        )
    if leases is not None and leases.ready:
        cached = leases.get(namespace, lease_name(node))
        if cached is not None:
            with contextlib.suppress(LeaseError):
                agent = parse_lease(node, cached)
                if agent.alive(datetime.now(UTC)):
                    return agent
    try:
        lease = await kube.get(LEASES.in_namespace(namespace).named(lease_name(node)))
    except NotFound as error:
        raise unreachable(f"no node agent has announced itself on node {node}") from error
    except KubeError as error:
        raise unreachable(f"cannot read the node agent Lease of node {node}: {error}") from error
    try:
        agent = parse_lease(node, lease)
    except LeaseError as error:
        raise unreachable(f"the node agent Lease of node {node} is unusable: {error}") from error
    if not agent.alive(datetime.now(UTC)):
        raise unreachable(f"the node agent of node {node} stopped renewing its Lease")
    return agent
