"""``SandboxSnapshot`` ⇄ the SDK's snapshot shapes (gateway/msb_snapshot.py)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from kubesandbox_gateway.msb_input import InvalidConfig
from kubesandbox_gateway.msb_snapshot import (
    cloud_snapshot,
    create_request,
    manifest_of,
    operation,
)

DIGEST = "sha256:" + "0f" * 32
CAPTURED = "2026-12-04T16:00:00.250000+00:00"


def snapshot(phase: str | None, **status: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"name": "s1", "uid": "u-1", "creationTimestamp": "2026-12-04T15:59:59Z"},
        "spec": {"source": {"name": "base"}},
    }
    if phase is not None:
        body["status"] = {"phase": phase, **status}
    return body


READY = {
    "image": {"reference": "alpine", "digest": DIGEST},
    "sourceUid": "src-uid",
    "sizeBytes": 8192,
    "apparentBytes": 1 << 30,
    "capturedAt": CAPTURED,
}


def test_the_captured_request_is_read() -> None:
    assert create_request({"kind": "disk", "sandbox_id": "abc", "name": "s1"}) == ("abc", "s1")
    # the newer SDK's field name for the same thing
    assert create_request({"kind": "disk", "source_sandbox_id": "abc", "name": "s1"})[0] == "abc"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"kind": "full"}, "kind"),
        ({"name": "Not A Name"}, "name"),
        ({"force": True}, "force"),
        ({"dest_dir": "/mnt/x"}, "dest_dir"),
        ({"labels": {"a": "b"}}, "labels"),
        ({"resumable": True}, "resumable"),
        ({"other": 1}, "other"),
    ],
)
def test_what_cannot_be_honoured_is_refused(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidConfig) as refused:
        create_request({"kind": "disk", "sandbox_id": "abc", "name": "s1", **change})
    assert refused.value.field == field


def test_a_ready_snapshot_has_the_digest_of_its_canonical_descriptor() -> None:
    found = cloud_snapshot(snapshot("Ready", **READY))
    assert found is not None
    manifest = found["manifest"]
    assert list(manifest) == [
        "schema", "artifact", "scope", "created_at", "parent", "image", "source_sandbox",
        "state", "labels", "extensions", "requires",
    ]  # fmt: skip
    canonical = json.dumps(manifest, separators=(",", ":")).encode()
    assert found["digest"] == "sha256:" + hashlib.sha256(canonical).hexdigest()
    assert manifest["created_at"] == "2026-12-04T16:00:00.25Z"  # the SDK's normal form
    assert manifest["image"] == {"ref": "alpine", "manifest_digest": DIGEST}
    assert manifest["state"]["upper"]["size_bytes"] == 1 << 30
    assert found["size_bytes"] == 8192
    assert found["location"] == {"type": "managed", "id": "s1"}
    assert found["source_sandbox_id"] == "src-uid"


@pytest.mark.parametrize("phase", [None, "Pending", "Failed"])
def test_only_ready_snapshots_have_a_descriptor(phase: str | None) -> None:
    assert manifest_of(snapshot(phase, **READY)) is None


@pytest.mark.parametrize(
    ("phase", "status"),
    [(None, "queued"), ("Pending", "queued"), ("SomeFuturePhase", "queued"),
     ("Ready", "succeeded"), ("Failed", "failed")],
)  # fmt: skip
def test_the_operation_follows_the_phase(phase: str | None, status: str) -> None:
    extra = READY if phase == "Ready" else {"message": "source is Running"}
    op = operation(snapshot(phase, **extra))
    assert op["id"] == "u-1"
    assert op["status"] == status
    assert (op["result"] is not None) == (status == "succeeded")
    assert (op["completed_at"] is not None) == (status in ("succeeded", "failed"))
    if status == "failed":
        assert op["error"] == {"code": "snapshot_failed", "message": "source is Running"}
