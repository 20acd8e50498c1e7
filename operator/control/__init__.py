"""Observe, plan, act: one pass of the reconcile loop for one Sandbox.

:func:`reconcile_once` gathers the observations (the sandbox Pod, the Lease of its node, the
referenced Secrets and ConfigMaps, all from the watches' caches), asks
:func:`reconcile.sandbox.plan` what to do, and does it through the clients. It returns when to
try again if it must (a retry after a conflict or an unreachable node agent), else ``None``:
the next pass comes when something changes. Every action is idempotent (deterministic Pod
name, node agent requests keyed by UID, server-side apply), so a pass interrupted at any
point, even by SIGKILL, is simply done again. :mod:`.controller` decides which Sandbox gets a
pass and when (:mod:`.queue`).
"""

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from kubesandbox_api import Sandbox
from kubesandbox_kube import AlreadyExists, Conflict, KubeError
from kubesandbox_operator.clients.cluster import Cluster
from kubesandbox_operator.clients.nodeagent import NodeAgentError, NodeAgents, desired_state
from kubesandbox_operator.reconcile.fork import RETRY_SECONDS as FORK_RETRY_SECONDS
from kubesandbox_operator.reconcile.fork import ForkSource, check_source
from kubesandbox_operator.reconcile.pod import PodSettings
from kubesandbox_operator.reconcile.references import Problem, Resolution, resolve
from kubesandbox_operator.reconcile.sandbox import Event, NodeAgent, Observed, fork_started, plan

log = structlog.get_logger(__name__)

EmitEvent = Callable[[Event], None]
CONFLICT_RETRY_SECONDS = 0.5
AGENT_RETRY_SECONDS = 2.0
"""First retry after a node agent did not take the desired state (doubled while it fails)."""
SandboxKey = tuple[str, str]


@dataclass(frozen=True)
class Runtime:
    """What every pass needs: the clients and the cluster policy."""

    cluster: Cluster
    agents: NodeAgents
    allow_host_paths: bool = False
    pod_settings: PodSettings = field(default_factory=PodSettings)
    """The sandbox Pod's image and how its requests are sized."""
    handed_over: dict[SandboxKey, str] = field(default_factory=dict)
    """Per Sandbox, a digest of the desired state its node agent last accepted: it is sent
    again only when it changed (or the node agent was replaced), not on every pass."""


def _handover_digest(agent: NodeAgent, sandbox: Sandbox, resolution: Resolution) -> str:
    where = dataclasses.replace(agent, expires_at=datetime.min.replace(tzinfo=UTC))
    what = json.dumps(desired_state(sandbox, resolution), sort_keys=True)
    return hashlib.blake2b(f"{where!r}\n{what}".encode(), digest_size=16).hexdigest()


async def reconcile_once(runtime: Runtime, sandbox: Sandbox, emit: EmitEvent) -> float | None:
    cluster = runtime.cluster
    pod = await cluster.pod(sandbox)
    node = pod.node_name if pod else None
    agent = await cluster.node_agent(node) if node else None
    resolution = resolve(sandbox.spec, await cluster.referenced(sandbox))
    source = sandbox.spec.image.sandbox
    checked: ForkSource | Problem | None = None
    if source is not None and not fork_started(sandbox):
        checked = check_source(sandbox, await cluster.sandbox(sandbox.namespace, source.name))
        if isinstance(checked, ForkSource):
            resolution.fork_of = checked.uid
    decided = plan(
        Observed(
            sandbox=sandbox,
            pod=pod,
            agent=agent,
            resolution=resolution,
            now=datetime.now(UTC),
            allow_host_paths=runtime.allow_host_paths,
            pod_settings=runtime.pod_settings,
            fork=checked,
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
        key = (sandbox.namespace, sandbox.name)
        digest = _handover_digest(decided.send_to_agent, sandbox, resolution)
        if runtime.handed_over.get(key) != digest:
            try:
                await runtime.agents.put(decided.send_to_agent, sandbox, resolution)
            except NodeAgentError as error:
                log.warning("node_agent.unreachable", error=str(error))
                return AGENT_RETRY_SECONDS
            runtime.handed_over[key] = digest
    if isinstance(checked, Problem):
        return FORK_RETRY_SECONDS  # the source's changes do not wake its forks
    return None


async def remove(runtime: Runtime, sandbox: Sandbox) -> bool:
    """Asks the node agent to remove the VM and its files, then deletes the sandbox Pod;
    ``True`` when nothing is left.

    Without a live node agent (node lost, never scheduled) there is nothing to ask: the node
    agent removes sandboxes it finds no Sandbox for when it comes back (docs/operator.md).
    The Pod is deleted here rather than left to the garbage collector, which deletes
    dependents at its controller-manager's request rate (20/s by default): a burst of deletes
    gives its nodes' capacity back as fast as the apiserver allows.
    """
    pod = await runtime.cluster.pod(sandbox)
    node = (pod.node_name if pod else None) or (
        sandbox.status.node_name if sandbox.status else None
    )
    agent = await runtime.cluster.node_agent(node) if node else None
    if agent is None or not agent.alive(datetime.now(UTC)):
        log.info("sandbox.remove.no_node_agent", node=node)
    else:
        try:
            if not await runtime.agents.delete(agent, sandbox.uid):
                return False
        except NodeAgentError as error:
            raise KubeError(0, "NodeAgentUnreachable", str(error)) from error
    if pod is not None and pod.owned_by(sandbox.uid):
        await runtime.cluster.delete_pod(pod, grace_seconds=None)
    return True
