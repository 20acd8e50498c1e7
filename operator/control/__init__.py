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
from typing import Any

import structlog

from kubesandbox_api import Sandbox
from kubesandbox_api.conditions import Reason
from kubesandbox_api.pool import CLAIMED_BY_LABEL
from kubesandbox_kube import AlreadyExists, Conflict, KubeError, NotFound
from kubesandbox_kube.paths import SANDBOXES, ResourcePath
from kubesandbox_operator.clients.cluster import Cluster
from kubesandbox_operator.clients.nodeagent import NodeAgentError, NodeAgents, desired_state
from kubesandbox_operator.clients.pools import PoolIndex
from kubesandbox_operator.reconcile.fork import RETRY_SECONDS as FORK_RETRY_SECONDS
from kubesandbox_operator.reconcile.fork import ForkSource, check_source
from kubesandbox_operator.reconcile.pod import PodSettings, desired_pod
from kubesandbox_operator.reconcile.pool import (
    Choice,
    choose_member,
    claimed,
    deleting,
    ready,
    wants_claim,
)
from kubesandbox_operator.reconcile.references import Problem, Resolution, resolve
from kubesandbox_operator.reconcile.sandbox import Event, NodeAgent, Observed, fork_started, plan
from kubesandbox_operator.reconcile.snapshot import SnapshotSource, check_snapshot

log = structlog.get_logger(__name__)

EmitEvent = Callable[[Event], None]
JsonDict = dict[str, Any]
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
    pools: PoolIndex = field(default_factory=PoolIndex)


def _handover_digest(agent: NodeAgent, sandbox: Sandbox, resolution: Resolution) -> str:
    where = dataclasses.replace(agent, expires_at=datetime.min.replace(tzinfo=UTC))
    what = json.dumps(desired_state(sandbox, resolution), sort_keys=True)
    return hashlib.blake2b(f"{where!r}\n{what}".encode(), digest_size=16).hexdigest()


async def reconcile_once(runtime: Runtime, sandbox: Sandbox, emit: EmitEvent) -> float | None:
    cluster = runtime.cluster
    pod = await cluster.pod(sandbox)
    resolution = resolve(sandbox.spec, await cluster.referenced(sandbox))
    claimable = not resolution.problems and wants_claim(sandbox, pod is not None)
    if claimable and (report := await _claim(runtime, sandbox, resolution, emit)) is not None:
        pod = await cluster.pod(sandbox)
        if report:
            sandbox = as_reported(sandbox, report)
    node = pod.node_name if pod else None
    agent = await cluster.node_agent(node) if node else None
    source = sandbox.spec.image.sandbox
    checked: ForkSource | SnapshotSource | Problem | None = None
    if source is not None and not fork_started(sandbox):
        checked = check_source(sandbox, await cluster.sandbox(sandbox.namespace, source.name))
        if isinstance(checked, ForkSource):
            resolution.fork_of = checked.uid
    snapshot = sandbox.spec.image.snapshot
    if snapshot is not None and not fork_started(sandbox):
        checked = check_snapshot(sandbox, await cluster.snapshot(sandbox.namespace, snapshot.name))
        if isinstance(checked, SnapshotSource):
            resolution.snapshot_of = checked.uid
            resolution.snapshot_image = checked.image.model_dump(mode="json", exclude_none=True)
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


def as_reported(sandbox: Sandbox, reported: JsonDict) -> Sandbox:
    """The Sandbox with the node agent's status fields as its claim answer reported them, and
    no ``resourceVersion``: the node agent writes the same fields meanwhile, so the pass after
    a claim plans from them (``Running``: ``Ready`` at once) and writes its own fields without
    a precondition (it writes no phase over the node agent's, which is all the precondition
    protects)."""
    body = sandbox.model_dump(mode="json", by_alias=True, exclude_none=True)
    status = dict(body.get("status") or {})
    mine = {c["type"]: c for c in status.get("conditions") or []}
    theirs = {c["type"]: c for c in reported.get("conditions") or []}
    status.update({k: v for k, v in reported.items() if k != "conditions"})
    status["conditions"] = list({**mine, **theirs}.values())
    metadata = {k: v for k, v in sandbox.metadata.items() if k != "resourceVersion"}
    return Sandbox.from_body({**body, "metadata": metadata, "status": status})


async def _claim(
    runtime: Runtime, sandbox: Sandbox, resolution: Resolution, emit: EmitEvent
) -> JsonDict | None:
    """Serves a never-placed Sandbox from a ready pool member, if one matches. ``None``: no
    claim (no member, or lost to another); otherwise the sandbox Pod now exists, bound to the
    member's node, and the answer is the node agent's report of the claimed VM (empty when
    the node agent did not take the claim: the Sandbox then boots cold there).

    1. The member is reserved here and labelled ``claimed-by`` (with its resourceVersion as
       precondition: a second operator, or a stale read, loses with 409); from then on its
       pool deletes it and boots a replacement.
    2. The Sandbox's own Pod is created already bound to the member's node, so quota and the
       node's capacity count it like any sandbox Pod.
    3. The node agent hands the member's VM to the Sandbox (personalised by the guest agent);
       it writes the Sandbox's status from then on, with ``pool``. Should this step fail, the
       Sandbox boots cold on that node, as any Sandbox whose Pod is bound there.
    4. The member object is deleted: its VM is no longer behind its uid, so its removal only
       deletes its Pod.
    """
    now = datetime.now(UTC)
    pools = runtime.pools

    async def usable(node: str) -> bool:
        agent = await runtime.cluster.node_agent(node)
        return agent is not None and agent.alive(now)

    live = {
        node
        for pool in pools.in_namespace(sandbox.namespace)
        for member in pools.members_of(pool)
        if member.status and (node := member.status.node_name) and await usable(node)
    }
    choice = choose_member(
        sandbox, pools.in_namespace(sandbox.namespace), pools.members_of, pools.reserved,
        lambda node: node in live,
    )  # fmt: skip
    if choice is None:
        return None
    member = choice.member
    pools.reserved.add(member.uid)
    try:
        return await _take(runtime, sandbox, resolution, choice, emit)
    except BaseException:
        pools.reserved.discard(member.uid)
        raise


async def _take(
    runtime: Runtime, sandbox: Sandbox, resolution: Resolution, choice: Choice, emit: EmitEvent
) -> JsonDict | None:
    kube, member, pool = runtime.cluster.kube, choice.member, choice.pool
    path = SANDBOXES.in_namespace(member.namespace).named(member.name)
    if not await _mark_claimed(runtime, path, member, sandbox):
        runtime.pools.reserved.discard(member.uid)
        log.info("pool.claim_lost", pool=pool.name, member=member.name)
        return None
    pod = desired_pod(sandbox, runtime.pod_settings)
    pod["spec"]["nodeName"] = choice.node
    with contextlib.suppress(AlreadyExists):
        await runtime.cluster.create_pod(pod)
    agent = await runtime.cluster.node_agent(choice.node)
    reported: JsonDict = {}
    try:
        if agent is None:
            raise NodeAgentError(f"no node agent on {choice.node}")
        reported = await runtime.agents.claim(agent, member.uid, pool.name, sandbox, resolution)
    except NodeAgentError as error:
        log.warning("pool.claim_failed", pool=pool.name, member=member.name, error=str(error))
    else:
        log.info("pool.claimed", pool=pool.name, member=member.name, node=choice.node)
        emit(Event(Reason.CLAIMED, f"served by a booted VM of SandboxPool {pool.name}"))
    with contextlib.suppress(NotFound):
        deleted = await kube.delete(path, uid=member.uid)
        runtime.pools.member_seen(deleted, wake=False)
    return reported


async def _mark_claimed(
    runtime: Runtime, path: ResourcePath, member: Sandbox, sandbox: Sandbox
) -> bool:
    """Labels the member ``claimed-by``, on the condition that it did not change since it was
    read; a version newer than the cache's (a metrics write, say) is read once and, if the
    member is still a ready, unclaimed one, labelled instead. ``False``: someone else was
    first, or the member went."""
    for attempt in range(2):
        label = {
            "metadata": {
                "resourceVersion": str(member.metadata.get("resourceVersion") or ""),
                "labels": {CLAIMED_BY_LABEL: sandbox.uid},
            }
        }
        try:
            runtime.pools.member_seen(await runtime.cluster.kube.merge_patch(path, label))
            return True
        except NotFound:
            return False
        except Conflict:
            if attempt:
                return False
        try:
            member = Sandbox.from_body(await runtime.cluster.kube.get(path))
        except NotFound:
            return False
        if claimed(member) or deleting(member) or not ready(member):
            return False
    return False


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
