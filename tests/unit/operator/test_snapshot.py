"""``SandboxSnapshot`` and ``spec.image.snapshot``: the operator's checks, the capture's
status and the placement of a sandbox from a snapshot on the snapshot's node."""

from typing import Any

from kubesandbox_api import Sandbox
from kubesandbox_api.conditions import ConditionType, Phase, Reason
from kubesandbox_api.pool import can_claim
from kubesandbox_api.snapshot import SandboxSnapshot
from kubesandbox_operator.clients.nodeagent import desired_state
from kubesandbox_operator.reconcile.references import Problem, Resolution
from kubesandbox_operator.reconcile.snapshot import (
    CaptureSource,
    SnapshotSource,
    capture_source,
    captured,
    check_snapshot,
)
from tests.unit.operator.test_fork import decide, make

DIGEST = "sha256:" + "1" * 64
IMAGE = {"reference": "busybox:1.36", "digest": DIGEST}


def snapshot(status: dict[str, Any] | None = None) -> SandboxSnapshot:
    return SandboxSnapshot.from_body(
        {
            "metadata": {"name": "snap", "namespace": "team", "uid": "snap-0000-uid"},
            "spec": {"source": {"name": "origin"}},
            "status": status,
        }
    )


def origin(phase: str | None, node: str | None = "node-a") -> Sandbox:
    status = {"phase": phase, "nodeName": node} if phase else None
    return make("origin", {"oci": "busybox:1.36"}, status)


def restored(status: dict[str, Any] | None = None) -> Sandbox:
    return make("restored", {"snapshot": {"name": "snap"}}, status)


READY = {"phase": "Ready", "nodeName": "node-a", "image": IMAGE, "sourceUid": "origin-0000-uid"}


def test_only_a_stopped_source_on_a_node_is_captured() -> None:
    assert capture_source(snapshot(), origin("Stopped")) == CaptureSource(
        "origin-0000-uid", "node-a"
    )
    for source, why in [
        (None, "does not exist in namespace 'team'"),
        (origin("Running"), "is Running; it must be Stopped"),
        (origin(None), "is Pending; it must be Stopped"),
        (origin("Stopped", node=None), "is on no node"),
    ]:
        found = capture_source(snapshot(), source)
        assert found == f"spec.source.name: Sandbox 'origin' {why}"


def test_the_node_agents_answer_becomes_a_ready_status() -> None:
    answer = {"image": IMAGE, "sizeBytes": 4096, "apparentBytes": 1 << 30,
              "capturedAt": "2026-12-04T16:00:00Z"}  # fmt: skip
    status = captured("node-a", "origin-0000-uid", answer)
    parsed = snapshot(status).status
    assert parsed is not None
    assert parsed.phase == "Ready"
    assert parsed.node_name == "node-a"
    assert parsed.image is not None
    assert parsed.image.digest == DIGEST
    assert parsed.size_bytes == 4096
    assert parsed.scope == "Disk"


def test_a_sandbox_from_a_ready_snapshot_is_placed_on_its_node_with_its_image() -> None:
    checked = check_snapshot(restored(), snapshot(READY))
    assert isinstance(checked, SnapshotSource)
    assert (checked.uid, checked.node, checked.image.digest) == ("snap-0000-uid", "node-a", DIGEST)
    decided = decide(restored(), checked)
    assert decided.create_pod is not None
    terms = decided.create_pod["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert terms == [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node-a"]}]}
    ]
    resolution = Resolution(snapshot_of="snap-0000-uid", snapshot_image=IMAGE)
    sent = desired_state(restored(), resolution)
    assert sent["resolved"]["snapshotOf"] == "snap-0000-uid"
    assert sent["pinnedImage"] == IMAGE
    assert not can_claim(restored().spec)  # never served from a warm pool


def test_a_sandbox_from_a_snapshot_not_ready_fails_saying_why() -> None:
    for found, why in [
        (None, "does not exist in namespace 'team'"),
        (snapshot(), "is Pending; it must be Ready"),
        (snapshot({"phase": "Failed"}), "is Failed; it must be Ready"),
    ]:
        checked = check_snapshot(restored(), found)
        assert isinstance(checked, Problem)
        assert checked.reason == Reason.SNAPSHOT_NOT_READY
        assert checked.message == f"spec.image.snapshot.name: SandboxSnapshot 'snap' {why}"
    decided = decide(restored(), check_snapshot(restored(), snapshot()))
    assert decided.create_pod is None
    assert decided.status["phase"] == Phase.FAILED
    ready = next(c for c in decided.status["conditions"] if c["type"] == ConditionType.READY)
    assert ready["reason"] == Reason.SNAPSHOT_NOT_READY
