"""What the operator sends (``DesiredSandbox``) and what the node agent reports back.

The shapes are those of docs/node-agent-api.md. ``NodeSandboxStatus`` is the node agent's part
of ``Sandbox.status`` only: the fields it owns and writes with its own field manager.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from kubesandbox_api.conditions import ConditionStatus, ConditionType, Phase, Reason
from kubesandbox_api.spec import SandboxSpec
from kubesandbox_api.status import (
    Condition,
    ExitStatus,
    ImageStatus,
    SandboxMetrics,
    SuspensionStatus,
)


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class PullAuth(_Model):
    registry: str
    username: str = ""
    password: str = ""


class Resolved(_Model):
    env: dict[str, str] = {}
    files: dict[str, str] = {}
    """Patch index → base64 content, for ``copyFile`` from Secrets and ConfigMaps."""
    dirs: dict[str, dict[str, str]] = {}
    """Patch index → file name → base64 content, for ``copyDir``."""
    secrets: dict[str, str] = Field(default={}, exclude=True)
    """``spec.secrets`` env → real value. Memory only: left out of every dump (the sandbox's
    record on disk among them); the operator sends them again after a node agent restart."""
    pull_auths: list[PullAuth] = []
    fork_of: str | None = None
    """A fork's source Sandbox uid (``spec.image.sandbox``), until the fork has started."""
    snapshot_of: str | None = None
    """The uid of the SandboxSnapshot (``spec.image.snapshot``) whose writable layer a new
    sandbox starts with; ``pinned_image`` is then the snapshot's image."""


class DesiredSandbox(_Model):
    namespace: str = Field(min_length=1, max_length=63)
    name: str = Field(min_length=1, max_length=253)
    uid: str = Field(pattern=r"^[0-9a-fA-F-]{8,64}$")
    generation: int = Field(default=0, ge=0)
    spec: SandboxSpec
    pinned_image: ImageStatus | None = None
    resolved: Resolved = Field(default_factory=Resolved)
    pool_member: bool = False
    """A SandboxPool's member: booted for whoever claims it, so nobody may use it before
    (the agent WebSocket and relay clients through the API are refused)."""


class ClaimRequest(_Model):
    """``POST /v1/sandboxes/{member uid}/claim``: the member's VM now serves ``sandbox``."""

    pool: str = Field(min_length=1, max_length=253)
    sandbox: DesiredSandbox


NODE_CONDITIONS = (
    ConditionType.IMAGE_READY,
    ConditionType.AGENT_CONNECTED,
    ConditionType.PAUSED,
    ConditionType.SUSPENDED,
    ConditionType.SOFTWARE_EMULATION,
)


class NodeSandboxStatus(_Model):
    """The node agent's fields of ``Sandbox.status`` (and nothing else)."""

    phase: Phase
    conditions: list[Condition] = []
    image: ImageStatus | None = None
    metrics: SandboxMetrics | None = None
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    exit_status: ExitStatus | None = None
    suspension: SuspensionStatus | None = None
    message: str | None = None
    pool: str | None = None
    """The pool whose VM this was (claimed sandboxes only)."""

    def wire(self) -> dict[str, Any]:
        """camelCase JSON, absent fields left out (so server-side apply never claims them)."""
        data: dict[str, Any] = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        return data


def condition_status(value: bool | None) -> ConditionStatus:
    if value is None:
        return ConditionStatus.UNKNOWN
    return ConditionStatus.TRUE if value else ConditionStatus.FALSE


__all__ = [
    "ClaimRequest",
    "Condition",
    "ConditionStatus",
    "ConditionType",
    "DesiredSandbox",
    "ExitStatus",
    "ImageStatus",
    "NodeSandboxStatus",
    "Phase",
    "PullAuth",
    "Reason",
    "Resolved",
    "SandboxMetrics",
    "condition_status",
]
