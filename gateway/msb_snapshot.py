"""The SDK's snapshots ⇄ ``SandboxSnapshot`` objects (docs/snapshots.md). Pure: no I/O.

Observed from ``microsandbox`` 0.7.11 (cloud backend) against the gateway:

* ``SandboxHandle.snapshot(name)`` → ``POST /v1/snapshots`` with
  ``{"kind": "disk", "sandbox_id": <the sandbox's id>, "name": <name>}``; the answer is an
  *operation* (``id``, ``kind``, ``status``: ``queued``/``in_progress``/``succeeded``/
  ``failed``, ``result``, ``error``, ``created_at``, ``updated_at``, ``completed_at``), polled
  at ``GET /v1/snapshot-operations/{id}`` until it ends.
* ``Snapshot.get(name)`` → ``GET /v1/snapshots/by-name/{name}`` (a UUID is tried first at
  ``/v1/snapshots/{id}``); ``Snapshot.list()`` → ``GET /v1/snapshots?limit=100[&cursor=]``
  (``{"data": [...], "next_cursor": ...}``); ``Snapshot.remove(name)`` → ``DELETE`` on the
  same paths (any 2xx).
* A snapshot is ``{"kind": "disk", name, location: {type: managed, id}, source_sandbox_id,
  digest, size_bytes, manifest, labels, created_at}``; the SDK checks that ``digest`` is the
  SHA-256 of the manifest's canonical JSON (fields in their order, no spaces) and refuses the
  snapshot otherwise.
* ``Sandbox.restore(snapshot, name=...)`` → ``POST /v1/sandboxes`` with ``source:
  disk_snapshot`` and ``disk_snapshot_ref: {type: managed, id: <location id>}``
  (:mod:`.translate`).

The location id is the SandboxSnapshot's name, so a restore by name or by handle names the
same object.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kubesandbox_gateway.msb_input import InvalidConfig, obj, shown, string

JsonDict = dict[str, Any]

MAX_NAME = 253
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
_CREATE = frozenset(
    {"kind", "sandbox_id", "source_sandbox_id", "name", "labels", "force", "record_integrity"}
    | {"dest_dir", "resumable"}
)
OPERATION_STATUS = {
    "Pending": "queued",
    "Ready": "succeeded",
    "Failed": "failed",
}
"""``SandboxSnapshot`` phase → the SDK's operation status."""
UPPER_FILE = "upper.ext4"


def create_request(body: Mapping[str, Any]) -> tuple[str, str]:
    """``POST /v1/snapshots`` → (the source sandbox's id, the snapshot's name)."""
    top = obj(body, "", _CREATE)
    kind = top.get("kind", "disk")
    if kind != "disk":
        raise InvalidConfig("kind", f"{shown(str(kind))!r}: only disk snapshots are taken")
    field = "source_sandbox_id" if "source_sandbox_id" in top else "sandbox_id"
    source = string(top.get(field), field, 64)
    name = string(top.get("name"), "name", MAX_NAME)
    if not _NAME.fullmatch(name):
        raise InvalidConfig(
            "name",
            f"{shown(name)!r} is not a valid snapshot name: lower-case letters, digits, '-' "
            "and '.', starting and ending with a letter or digit (a SandboxSnapshot name)",
        )
    for flag, why in (
        ("force", "replacing a snapshot is not supported: remove it first"),
        ("record_integrity", "integrity records are not kept"),
        ("resumable", "only disk snapshots of stopped sandboxes are taken (a live copy is a "
         "fork: a Sandbox with spec.image.sandbox)"),
    ):  # fmt: skip
        if top.get(flag) not in (None, False):
            raise InvalidConfig(flag, why)
    if top.get("dest_dir") is not None:
        raise InvalidConfig("dest_dir", "snapshots are kept on the node, as SandboxSnapshots")
    if top.get("labels"):
        raise InvalidConfig("labels", "snapshot labels are not supported here")
    return source, name


def manifest_of(snapshot: Mapping[str, Any]) -> JsonDict | None:
    """The snapshot descriptor of a Ready ``SandboxSnapshot`` (``None`` before), its fields in
    the SDK's order (the order is part of its digest)."""
    status = _mapping(snapshot.get("status"))
    image = _mapping(status.get("image"))
    digest = image.get("digest")
    if status.get("phase") != "Ready" or not isinstance(digest, str):
        return None
    if not _SHA256.fullmatch(digest):
        return None
    return {
        "schema": 1,
        "artifact": "snapshot",
        "scope": "disk",
        "created_at": _timestamp(status.get("capturedAt"), snapshot),
        "parent": None,
        "image": {"ref": str(image.get("reference") or ""), "manifest_digest": digest},
        "source_sandbox": _mapping(_mapping(snapshot.get("spec")).get("source")).get("name"),
        "state": {
            "kind": "file",
            "format": "raw",
            "fstype": "ext4",
            "upper": {
                "file": UPPER_FILE,
                "size_bytes": int(status.get("apparentBytes") or 0),
                "integrity": None,
            },
        },
        "labels": {},
        "extensions": {},
        "requires": [],
    }


def cloud_snapshot(snapshot: Mapping[str, Any]) -> JsonDict | None:
    """A Ready ``SandboxSnapshot`` as the SDK's snapshot; ``None`` when it is not Ready."""
    manifest = manifest_of(snapshot)
    if manifest is None:
        return None
    metadata = _mapping(snapshot.get("metadata"))
    status = _mapping(snapshot.get("status"))
    canonical = json.dumps(manifest, separators=(",", ":"), ensure_ascii=False)
    return {
        "kind": "disk",
        "name": metadata.get("name"),
        "location": {"type": "managed", "id": metadata.get("name")},
        "source_sandbox_id": status.get("sourceUid"),
        "digest": "sha256:" + hashlib.sha256(canonical.encode()).hexdigest(),
        "size_bytes": int(status.get("sizeBytes") or 0),
        "manifest": manifest,
        "labels": {},
        "created_at": manifest["created_at"],
    }


def operation(snapshot: Mapping[str, Any]) -> JsonDict:
    """A ``SandboxSnapshot`` as the SDK's snapshot operation (its id is the object's uid)."""
    metadata = _mapping(snapshot.get("metadata"))
    status = _mapping(snapshot.get("status"))
    phase = str(status.get("phase") or "Pending")
    state = OPERATION_STATUS.get(phase, "queued")
    created = _timestamp(metadata.get("creationTimestamp"), snapshot)
    result = cloud_snapshot(snapshot) if state == "succeeded" else None
    if state == "succeeded" and result is None:
        state = "in_progress"  # Ready without a usable pinned image yet: look again
    done = state in ("succeeded", "failed")
    finished = _timestamp(status.get("capturedAt"), snapshot) if done else None
    error = None
    if state == "failed":
        error = {"code": "snapshot_failed", "message": str(status.get("message") or phase)}
    return {
        "id": metadata.get("uid"),
        "kind": "disk",
        "status": state,
        "result": result,
        "error": error,
        "created_at": created,
        "updated_at": finished or created,
        "completed_at": finished,
    }


def _timestamp(value: object, snapshot: Mapping[str, Any]) -> str:
    """RFC 3339 in UTC as the SDK normalizes it (``Z``, no trailing zeros in the fraction);
    the object's creation time when ``value`` is missing."""
    if not isinstance(value, str):
        value = _mapping(snapshot.get("metadata")).get("creationTimestamp")
    try:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        when = datetime(1970, 1, 1, tzinfo=UTC)
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{when.microsecond:06d}".rstrip("0")
    return f"{text}.{fraction}Z" if fraction else f"{text}Z"


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
