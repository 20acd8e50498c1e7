"""``Sandbox.status``: what the operator and the node agent observed.

The operator writes ``Scheduled``/``Ready``, the Pod's node and the phases before the node agent
takes over; the node agent writes everything it observes (image pin, agent, metrics, exit).
Each side patches only its own fields (see docs/api.md), so neither can clobber the other.
"""

from datetime import datetime
from typing import Annotated

from pydantic import Field

from kubesandbox_api._schema import ApiModel
from kubesandbox_api.conditions import ConditionStatus, Phase

DIGEST = r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$"


class Condition(ApiModel):
    """A condition in the shape of ``metav1.Condition``."""

    type: Annotated[str, Field(max_length=316)]
    """Condition type (see ConditionType)."""
    status: ConditionStatus
    """True, False or Unknown."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The ``metadata.generation`` the condition was computed from."""
    last_transition_time: datetime | None = None
    """When ``status`` last changed (not when the condition was last written)."""
    reason: Annotated[str, Field(max_length=1024)] = ""
    """CamelCase machine-readable reason (see Reason)."""
    message: Annotated[str, Field(max_length=32768)] = ""
    """Human-readable details."""


class LayerPin(ApiModel):
    """One pinned layer."""

    digest: Annotated[str, Field(max_length=256, pattern=DIGEST)]
    """Digest of the layer blob as stored in the registry."""
    size: Annotated[int, Field(ge=0)]
    """Size of the blob in bytes."""


class ImageStatus(ApiModel):
    """The resolved and pinned image; later starts use these digests, never the tag."""

    reference: Annotated[str, Field(max_length=1024)]
    """The reference as written in the spec."""
    digest: Annotated[str, Field(max_length=256, pattern=DIGEST)]
    """Manifest digest (the linux/amd64 manifest of an index)."""
    layers: Annotated[list[LayerPin], Field(max_length=512)] = []
    """Layer digests, lowest first."""
    resolved_at: datetime | None = None
    """When the reference was resolved."""


class SandboxMetrics(ApiModel):
    """A bounded-rate sample of the sandbox's resource use, taken on the host."""

    cpu_percent: Annotated[float, Field(ge=0)] | None = None
    """CPU use of the VM over the last interval, in percent of one CPU."""
    memory_bytes: Annotated[int, Field(ge=0)] | None = None
    """Resident memory of the VM."""
    memory_limit_bytes: Annotated[int, Field(ge=0)] | None = None
    """Memory limit of the VM (guest memory plus VMM overhead)."""
    disk_read_bytes: Annotated[int, Field(ge=0)] | None = None
    """Bytes read from the VM's block devices since boot."""
    disk_write_bytes: Annotated[int, Field(ge=0)] | None = None
    """Bytes written to the VM's block devices since boot."""
    net_rx_bytes: Annotated[int, Field(ge=0)] | None = None
    """Bytes received by the guest since boot."""
    net_tx_bytes: Annotated[int, Field(ge=0)] | None = None
    """Bytes sent by the guest since boot."""
    uptime_seconds: Annotated[float, Field(ge=0)] | None = None
    """Seconds since the VM booted."""
    timestamp: datetime | None = None
    """When the sample was taken."""


class ExitStatus(ApiModel):
    """How the last run ended."""

    code: int | None = None
    """Exit code (128 + signal when killed by a signal), if the run ended with one."""
    success: bool
    """Whether the run ended as asked (a requested stop counts as success)."""
    reason: Annotated[str, Field(max_length=1024)] = ""
    """CamelCase reason (see Reason)."""


class SuspensionStatus(ApiModel):
    """The last suspension: why the sandbox slept, when, what its saved state weighs, and
    when it woke (absent until it has)."""

    reason: Annotated[str, Field(max_length=1024)] = ""
    """CamelCase reason (see Reason), e.g. SuspendedByUser."""
    suspended_at: datetime | None = None
    """When the VM's state was saved and its process ended."""
    state_bytes: Annotated[int, Field(ge=0)] | None = None
    """Size of the saved state file on the node (0 once it has been restored and removed)."""
    suspend_seconds: Annotated[float, Field(ge=0)] | None = None
    """How long saving the state took (pause to QEMU gone)."""
    resumed_at: datetime | None = None
    """When the VM was restored from the state (absent while suspended)."""
    resume_seconds: Annotated[float, Field(ge=0)] | None = None
    """How long restoring took (QEMU started to the guest agent serving)."""


class SandboxStatus(ApiModel):
    """Observed state of the sandbox."""

    phase: Phase | None = None
    """Where the sandbox is in its life."""
    conditions: Annotated[
        list[Condition],
        Field(
            max_length=32,
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
        ),
    ] = []
    """Current conditions (Scheduled, ImageReady, AgentConnected, Ready, Paused, Suspended,
    SoftwareEmulation)."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The ``metadata.generation`` the status was last computed from."""
    node_name: Annotated[str, Field(max_length=253)] | None = None
    """The node the sandbox runs on."""
    pod_name: Annotated[str, Field(max_length=253)] | None = None
    """The sandbox Pod that holds its place on the node."""
    pool: Annotated[str, Field(max_length=253)] | None = None
    """The SandboxPool whose booted VM serves this sandbox (unset: booted for it)."""
    image: ImageStatus | None = None
    """The resolved, pinned image."""
    metrics: SandboxMetrics | None = None
    """The last resource-use sample."""
    started_at: datetime | None = None
    """When the current (or last) run started."""
    stopped_at: datetime | None = None
    """When the last run ended."""
    exit_status: ExitStatus | None = None
    """How the last run ended."""
    suspension: SuspensionStatus | None = None
    """The last suspension (lifecycle.state Suspended)."""
    message: Annotated[str, Field(max_length=32768)] | None = None
    """Human-readable summary of the current state."""
