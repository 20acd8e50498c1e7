"""``SandboxSnapshot``: the disk state of a stopped Sandbox, kept on its node.

A snapshot names a ``Stopped`` Sandbox of its namespace (``spec.source``). What it captures
is that sandbox's **writable layer** (the ext4 image over its read-only OCI layers, copied
copy-on-write where the node's filesystem can) and the **pinned image** (manifest and layer
digests) it lies over; not memory: the source is stopped, so there is none (a live copy with
memory is a fork, ``spec.image.sandbox``, docs/fork.md). The copy lives on the source's node,
so a Sandbox started from the snapshot (``spec.image.snapshot``) runs on that node
(docs/snapshots.md).

This module holds the model (the CRD is generated from it by :mod:`.crdgen`); it does no I/O.
"""

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Final

from pydantic import Field

from kubesandbox_api._schema import ApiModel, cel, rules
from kubesandbox_api.resource import GROUP, ApiObject
from kubesandbox_api.spec import LocalObjectReference
from kubesandbox_api.status import ImageStatus

SNAPSHOT_KIND: Final = "SandboxSnapshot"
SNAPSHOT_PLURAL = "sandboxsnapshots"
SNAPSHOT_SINGULAR = "sandboxsnapshot"
SNAPSHOT_SHORT_NAME = "sbxsnap"
SNAPSHOT_CRD_NAME = f"{SNAPSHOT_PLURAL}.{GROUP}"

_IMMUTABLE = cel("self == oldSelf", "spec.source is immutable: a snapshot is of one sandbox")


class SnapshotPhase(StrEnum):
    PENDING = "Pending"
    """Not captured yet (the source is not Stopped, or not known on a node yet)."""
    READY = "Ready"
    """Captured: Sandboxes may start from it."""
    FAILED = "Failed"
    """The capture failed (``status.message`` says why); delete it and create it again."""


class SnapshotScope(StrEnum):
    DISK = "Disk"
    """The writable layer and the pinned image; no memory, no device state."""


class SandboxSnapshotSpec(ApiModel):
    """Which Sandbox to capture."""

    source: Annotated[LocalObjectReference, Field(json_schema_extra=rules(_IMMUTABLE))]
    """A Sandbox of this namespace; it must be ``Stopped`` (its writable layer is copied as it
    is on the node)."""


class SandboxSnapshotStatus(ApiModel):
    """What was captured, and where."""

    phase: SnapshotPhase = SnapshotPhase.PENDING
    """Pending, Ready or Failed (the copy is one request to the node agent)."""
    message: Annotated[str, Field(max_length=1024)] | None = None
    """Why it is Pending or Failed."""
    node_name: Annotated[str, Field(max_length=253)] | None = None
    """The node that holds the copy: Sandboxes started from the snapshot run there."""
    source_uid: Annotated[str, Field(max_length=64)] | None = None
    """The uid of the Sandbox that was captured."""
    scope: SnapshotScope | None = None
    """What the copy holds (``Disk``: the writable layer and the pinned image, no memory)."""
    image: ImageStatus | None = None
    """The source's pinned image, which the copied writable layer lies over."""
    size_bytes: Annotated[int, Field(ge=0)] | None = None
    """Blocks the copy occupies on the node (a sparse or reflinked copy takes less than its
    apparent size)."""
    apparent_bytes: Annotated[int, Field(ge=0)] | None = None
    """The writable layer's apparent size."""
    captured_at: datetime | None = None
    """When the copy was taken."""


class SandboxSnapshot(ApiObject):
    """The captured disk state of a stopped Sandbox."""

    spec: SandboxSnapshotSpec
    status: SandboxSnapshotStatus | None = None
