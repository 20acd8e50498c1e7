"""Taking and removing ``SandboxSnapshot`` copies through the node agents (docs/snapshots.md).

:func:`take` captures a snapshot once its source is Stopped: the source's node agent copies
the writable layer (``PUT /v1/snapshots/{uid}``, idempotent) and the answer becomes the
status (``Ready``); a node agent that refuses (409: the source is not stopped there, or has
no writable layer; 404: it does not have the source) fails the snapshot. :func:`remove` asks
the node that holds the copy to delete it before the object goes.
"""

from typing import Any

import structlog

from kubesandbox_api.snapshot import SandboxSnapshot, SnapshotPhase
from kubesandbox_operator.clients.nodeagent import NodeAgentError
from kubesandbox_operator.control import Runtime
from kubesandbox_operator.reconcile.snapshot import (
    RETRY_SECONDS,
    CaptureSource,
    capture_source,
    captured,
)

log = structlog.get_logger(__name__)
JsonDict = dict[str, Any]
DONE = frozenset({SnapshotPhase.READY, SnapshotPhase.FAILED})


async def take(runtime: Runtime, snapshot: SandboxSnapshot) -> tuple[JsonDict | None, float | None]:
    """The status to write (``None``: none) and when to look again (``None``: never)."""
    if snapshot.status is not None and snapshot.status.phase in DONE:
        return None, None
    cluster = runtime.cluster
    source = capture_source(
        snapshot, await cluster.sandbox(snapshot.namespace, snapshot.spec.source.name)
    )
    if not isinstance(source, CaptureSource):
        return _pending(snapshot, source), RETRY_SECONDS
    agent = await cluster.node_agent(source.node)
    if agent is None:
        return _pending(snapshot, f"the node agent of node {source.node} is not there"), 5.0
    try:
        answer = await runtime.agents.snapshot(
            agent, snapshot.uid, snapshot.namespace, snapshot.name, source.uid
        )
    except NodeAgentError as error:
        if error.status in (404, 409):  # not there, or not capturable: asking again won't help
            return {"phase": SnapshotPhase.FAILED.value, "message": str(error)[-1000:]}, None
        log.warning("snapshot.node_agent_unreachable", error=str(error))
        return _pending(snapshot, f"the node agent of node {source.node}: {error}"), 5.0
    log.info("snapshot.taken", namespace=snapshot.namespace, name=snapshot.name, node=source.node)
    return captured(source.node, source.uid, answer), None


def _pending(snapshot: SandboxSnapshot, message: str) -> JsonDict | None:
    status = snapshot.status
    if status is not None and status.phase == SnapshotPhase.PENDING and status.message == message:
        return None
    return {"phase": SnapshotPhase.PENDING.value, "message": message[:1000]}


async def remove(runtime: Runtime, snapshot: SandboxSnapshot) -> bool:
    """Whether the copy is gone (or was never made); ``False``: ask again."""
    node = snapshot.status.node_name if snapshot.status else None
    if node is None:
        return True
    agent = await runtime.cluster.node_agent(node)
    if agent is None:
        # The node (or its node agent) is gone for good or for now: do not hold the object
        # hostage; the copy stays in stateDir/snapshots on that node.
        log.warning("snapshot.copy_left_on_node", name=snapshot.name, node=node)
        return True
    try:
        await runtime.agents.delete_snapshot(agent, snapshot.uid, snapshot.namespace)
    except NodeAgentError as error:
        log.warning("snapshot.remove_failed", name=snapshot.name, error=str(error))
        return False
    return True
