"""Observe, plan, act: one pass of the reconcile loop for one Sandbox.

:func:`reconcile_once` gathers the observations (the sandbox Pod, the Lease of its node, the
referenced Secrets and ConfigMaps), asks :func:`reconcile.sandbox.plan` what to do, and does
it through the clients. It returns how long to wait before the next pass. Every action is
idempotent (deterministic Pod name, node agent requests keyed by UID, server-side apply), so a
pass interrupted at any point, even by SIGKILL, is simply done again.
"""

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from kubesandbox_api import Sandbox
from kubesandbox_kube import AlreadyExists, Conflict, KubeError
from kubesandbox_operator.clients.cluster import Cluster
from kubesandbox_operator.clients.nodeagent import NodeAgentError, NodeAgents
from kubesandbox_operator.reconcile.references import resolve
from kubesandbox_operator.reconcile.sandbox import WAIT_SECONDS, Event, Observed, plan

log = structlog.get_logger(__name__)

EmitEvent = Callable[[Event], None]
CONFLICT_RETRY_SECONDS = 0.5


@dataclass(frozen=True)
class Runtime:
    """What every pass needs: the clients and the cluster policy."""

    cluster: Cluster
    agents: NodeAgents
    allow_host_paths: bool = False


async def reconcile_once(runtime: Runtime, sandbox: Sandbox, emit: EmitEvent) -> float:
    cluster = runtime.cluster
    pod = await cluster.pod(sandbox)
    node = (pod or {}).get("spec", {}).get("nodeName")
    agent = await cluster.node_agent(str(node)) if node else None
    resolution = resolve(sandbox.spec, await cluster.referenced(sandbox))
    decided = plan(
        Observed(
            sandbox=sandbox,
            pod=pod,
            agent=agent,
            resolution=resolution,
            now=datetime.now(UTC),
            allow_host_paths=runtime.allow_host_paths,
        )
    )
    if decided.create_pod is not None:
        with contextlib.suppress(AlreadyExists):  # an earlier pass made it
            await cluster.create_pod(decided.create_pod)
    if decided.delete_pod and pod is not None:
        await cluster.delete_pod(pod)
    if decided.status:
        try:
            await cluster.apply_status(sandbox, decided.status)
        except Conflict:
            # Planned from a stale read: the newer Sandbox is on its way (a watch event wakes
            # the loop); plan again from it. Events wait for the write they announce.
            log.debug(
                "sandbox.status_conflict", resource_version=sandbox.metadata.get("resourceVersion")
            )
            return CONFLICT_RETRY_SECONDS
    for event in decided.events:
        emit(event)
    if decided.send_to_agent is not None:
        try:
            await runtime.agents.put(decided.send_to_agent, sandbox, resolution)
        except NodeAgentError as error:
            log.warning("node_agent.unreachable", error=str(error))
            return WAIT_SECONDS
    return decided.requeue_after


async def remove(runtime: Runtime, sandbox: Sandbox) -> bool:
    """Asks the node agent to remove the VM and its files; ``True`` when nothing is left.

    Without a live node agent (node lost, never scheduled) there is nothing to ask: the node
    agent removes sandboxes it finds no Sandbox for when it comes back (docs/operator.md).
    """
    pod = await runtime.cluster.pod(sandbox)
    node = (pod or {}).get("spec", {}).get("nodeName") or (
        sandbox.status.node_name if sandbox.status else None
    )
    agent = await runtime.cluster.node_agent(str(node)) if node else None
    if agent is None or not agent.alive(datetime.now(UTC)):
        log.info("sandbox.remove.no_node_agent", node=node)
        return True
    try:
        return await runtime.agents.delete(agent, sandbox.uid)
    except NodeAgentError as error:
        raise KubeError(0, "NodeAgentUnreachable", str(error)) from error
