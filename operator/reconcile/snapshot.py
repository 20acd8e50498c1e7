"""``SandboxSnapshot`` and ``spec.image.snapshot``: what can be captured, and what a Sandbox
from a snapshot needs. Pure.

A snapshot is taken of a ``Stopped`` Sandbox of its namespace, by the node agent of the node
it last ran on (the writable layer is there). A Sandbox with ``spec.image.snapshot`` starts
from a ``Ready`` snapshot of its namespace, on that snapshot's node (the copy is there): its
Pod is pinned to that node (the same node affinity as a fork's, :func:`.fork.pin_to_node`),
and its image is the snapshot's pinned image.
"""

from dataclasses import dataclass
from typing import Any

from kubesandbox_api import Sandbox
from kubesandbox_api.conditions import Phase, Reason
from kubesandbox_api.snapshot import SandboxSnapshot, SnapshotPhase
from kubesandbox_api.status import ImageStatus
from kubesandbox_operator.reconcile.references import Problem

JsonDict = dict[str, Any]
SOURCE_FIELD = "spec.source.name"
FIELD = "spec.image.snapshot.name"
RETRY_SECONDS = 3.0


@dataclass(frozen=True)
class CaptureSource:
    """The sandbox to capture: its uid (the node agent finds it by uid) and node."""

    uid: str
    node: str


def capture_source(snapshot: SandboxSnapshot, source: Sandbox | None) -> CaptureSource | str:
    """Where ``snapshot`` can be taken, or why not yet (it stays Pending, looked at again)."""
    name = snapshot.spec.source.name
    if source is None or source.metadata.get("deletionTimestamp"):
        return (
            f"{SOURCE_FIELD}: Sandbox {name!r} does not exist in namespace {snapshot.namespace!r}"
        )
    status = source.status
    phase = status.phase if status else None
    if phase != Phase.STOPPED:
        return f"{SOURCE_FIELD}: Sandbox {name!r} is {phase or 'Pending'}; it must be Stopped"
    node = status.node_name if status else None
    if not node:
        return f"{SOURCE_FIELD}: Sandbox {name!r} is on no node"
    return CaptureSource(uid=source.uid, node=node)


def captured(node: str, source_uid: str, answer: JsonDict) -> JsonDict:
    """The Ready status from the node agent's answer (runtime/snapshots.py ``SnapshotInfo``)."""
    return {
        "phase": SnapshotPhase.READY.value,
        "message": None,
        "nodeName": node,
        "sourceUid": source_uid,
        "scope": "Disk",
        "image": answer.get("image"),
        "sizeBytes": answer.get("sizeBytes"),
        "apparentBytes": answer.get("apparentBytes"),
        "capturedAt": answer.get("capturedAt"),
    }


@dataclass(frozen=True)
class SnapshotSource:
    """What a Sandbox from a snapshot needs: its uid, node and image."""

    uid: str
    node: str
    image: ImageStatus


def check_snapshot(sandbox: Sandbox, snapshot: SandboxSnapshot | None) -> SnapshotSource | Problem:
    """The snapshot ``sandbox`` (with ``spec.image.snapshot``) starts from, or why not."""
    ref = sandbox.spec.image.snapshot
    assert ref is not None

    def refuse(why: str) -> Problem:
        return Problem(Reason.SNAPSHOT_NOT_READY, f"{FIELD}: SandboxSnapshot {ref.name!r} {why}")

    if snapshot is None or snapshot.deleting:
        return refuse(f"does not exist in namespace {sandbox.namespace!r}")
    status = snapshot.status
    if status is None or status.phase != SnapshotPhase.READY:
        phase = status.phase.value if status else SnapshotPhase.PENDING.value
        return refuse(f"is {phase}; it must be Ready")
    if not status.node_name or status.image is None:
        return refuse("has no node or image")
    return SnapshotSource(uid=snapshot.uid, node=status.node_name, image=status.image)
