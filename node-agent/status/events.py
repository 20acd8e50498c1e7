"""Kubernetes Events for what a person watching ``kubectl describe sandbox`` wants to see:
the sandbox started (or was forked), stopped, was suspended or resumed, crashed (with the
reason) or cannot run (with the reason), and secret violations (``SecretViolation``, from the
egress proxy: which secret, where it was headed, never the value).

Events are best effort: a failure to post one is logged, never retried and never blocks a
transition. Phase changes produce one, so a sandbox emits a handful in its life; violations
one each (Kubernetes' own Event aggregation takes over when a guest repeats itself).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from kubesandbox_api.conditions import Phase, Reason
from kubesandbox_api.resource import API_VERSION, KIND
from kubesandbox_kube import KubeClient, KubeError
from kubesandbox_kube.paths import EVENTS
from kubesandbox_node.runtime.model import NodeSandboxStatus
from kubesandbox_node.status.writer import Target

COMPONENT = "kubesandbox-node-agent"
log = structlog.get_logger(__name__)

_EVENTS: dict[Phase, tuple[str, str]] = {
    Phase.RUNNING: ("Normal", "Started"),
    Phase.PAUSED: ("Normal", "Paused"),
    Phase.STOPPED: ("Normal", "Stopped"),
    Phase.SUSPENDED: ("Normal", "Suspended"),
    Phase.CRASHED: ("Warning", "Crashed"),
    Phase.FAILED: ("Warning", "Failed"),
}


def event_for(
    target: Target,
    status: NodeSandboxStatus,
    node: str,
    now: datetime,
    previous: Phase | None = None,
) -> dict[str, Any] | None:
    kind = _EVENTS.get(status.phase)
    if kind is None:
        return None
    type_, reason = kind
    if status.phase == Phase.RUNNING and previous == Phase.RESUMING:
        reason = "Resumed"
    forked = any(c.reason == Reason.FORKED for c in status.conditions)
    if status.phase == Phase.RUNNING and previous == Phase.BOOTING and forked:
        reason = "Forked"
    if status.exit_status is not None and status.phase in (Phase.CRASHED, Phase.FAILED):
        reason = status.exit_status.reason or reason
    message = status.message or f"sandbox is {status.phase.value} on {node}"
    return event_body(target, type_, reason, message, node, now)


def event_body(
    target: Target, type_: str, reason: str, message: str, node: str, now: datetime
) -> dict[str, Any]:
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{target.name}.", "namespace": target.namespace},
        "involvedObject": {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": target.name,
            "namespace": target.namespace,
            "uid": target.uid,
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": COMPONENT, "host": node},
        "reportingComponent": COMPONENT,
        "reportingInstance": node,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


@dataclass
class EventRecorder:
    kube: KubeClient
    node: str
    _phases: dict[str, Phase] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def observe(self, target: Target, status: NodeSandboxStatus) -> None:
        """Posts an Event when the phase changed since the last observation."""
        previous = self._phases.get(target.uid)
        if previous == status.phase:
            return
        self._phases[target.uid] = status.phase
        body = event_for(target, status, self.node, datetime.now(UTC), previous)
        if body is None:
            return
        task = asyncio.create_task(self._post(target, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def forget(self, uid: str) -> None:
        self._phases.pop(uid, None)

    def warn(self, target: Target, reason: str, message: str) -> None:
        """A Warning Event that is not a phase change (a secret violation)."""
        body = event_body(target, "Warning", reason, message, self.node, datetime.now(UTC))
        task = asyncio.create_task(self._post(target, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, target: Target, body: dict[str, Any]) -> None:
        try:
            await self.kube.create(EVENTS.in_namespace(target.namespace), body)
        except KubeError as exc:
            log.warning("event.post_failed", uid=target.uid, reason=body["reason"], error=str(exc))
