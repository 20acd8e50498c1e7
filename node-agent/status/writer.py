"""Writes ``Sandbox.status`` with server-side apply as ``kubesandbox-node-agent``.

Only the node agent's fields are sent (``NodeSandboxStatus``: phase, its conditions, image,
metrics, startedAt, stoppedAt, exitStatus, message). ``conditions`` is a list-map keyed by
``type``, so the operator's conditions (``Scheduled``, ``Ready``) are never touched. Server-side
apply removes fields a manager stops sending, so every write carries the whole node-agent
status, including the last metrics written. ``metadata.uid`` is sent as a precondition: a
Sandbox deleted and re-created under the same name is never written with the old one's state.

Cadence: a transition is written at once (``notify``, coalesced per sandbox while a write is
in flight); metrics at most every ``metrics_interval`` (15 s) per sandbox and only when a
value other than uptime and timestamp changed. ``write_now`` writes one sandbox's pending
status ahead of the queue (a claim is answered only once the claimant's status says what its
VM is, so the operator's ``Ready`` never lands before it); one sandbox's writes never overlap,
so an older status cannot land after a newer one. 404 means the Sandbox is gone: the write is
dropped. Other failures are retried with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from kubesandbox_api.resource import API_VERSION, KIND
from kubesandbox_api.status import SandboxMetrics
from kubesandbox_kube import KubeClient, KubeError
from kubesandbox_kube.paths import SANDBOXES, ResourcePath
from kubesandbox_node.runtime.model import NodeSandboxStatus

FIELD_MANAGER = "kubesandbox-node-agent"
METRICS_INTERVAL = 15.0
log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Target:
    namespace: str
    name: str
    uid: str


def status_path(target: Target) -> ResourcePath:
    return SANDBOXES.in_namespace(target.namespace).named(target.name, "status")


def apply_body(target: Target, status: NodeSandboxStatus) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": target.name, "namespace": target.namespace, "uid": target.uid},
        "status": status.wire(),
    }


def comparable(metrics: SandboxMetrics | None) -> tuple[Any, ...] | None:
    if metrics is None:
        return None
    return (
        metrics.cpu_percent,
        metrics.memory_bytes,
        metrics.memory_limit_bytes,
        metrics.disk_read_bytes,
        metrics.disk_write_bytes,
        metrics.net_rx_bytes,
        metrics.net_tx_bytes,
    )


@dataclass
class _State:
    target: Target
    status: NodeSandboxStatus | None = None
    metrics: SandboxMetrics | None = None
    metrics_written_at: float = -1e9
    dirty: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class StatusWriter:
    kube: KubeClient
    metrics_interval: float = METRICS_INTERVAL
    clock: Callable[[], float] = time.monotonic
    writes: int = 0
    _states: dict[str, _State] = field(default_factory=dict)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self, target: Target, status: NodeSandboxStatus) -> None:
        """A transition: written as soon as possible."""
        state = self._states.setdefault(target.uid, _State(target))
        state.target = target
        state.status = status
        state.dirty = True
        self._wake.set()

    def offer_metrics(self, uid: str, metrics: SandboxMetrics) -> None:
        """A new sample: written when the interval passed and something changed."""
        state = self._states.get(uid)
        if state is None or state.status is None:
            return
        if comparable(metrics) == comparable(state.metrics):
            return
        if self.clock() - state.metrics_written_at < self.metrics_interval:
            return
        state.metrics = metrics
        state.dirty = True
        self._wake.set()

    def forget(self, uid: str) -> None:
        self._states.pop(uid, None)

    async def flush(self) -> None:
        """Writes everything pending once (retrying errors is ``run``'s job)."""
        for uid, state in list(self._states.items()):
            await self._write(uid, state)

    async def write_now(self, uid: str) -> None:
        """Writes ``uid``'s pending status now; a failure is left to ``run``'s retries."""
        state = self._states.get(uid)
        if state is None:
            return
        try:
            await self._write(uid, state)
        except KubeError as exc:
            log.warning("status.write_failed", error=str(exc))
            self._wake.set()

    async def _write(self, uid: str, state: _State) -> None:
        async with state.lock:
            if not state.dirty or state.status is None or self._states.get(uid) is not state:
                return
            state.dirty = False
            status = state.status.model_copy(update={"metrics": state.metrics})
            try:
                await self.kube.apply(
                    status_path(state.target),
                    apply_body(state.target, status),
                    field_manager=FIELD_MANAGER,
                )
                self.writes += 1
                if state.metrics is not None:
                    state.metrics_written_at = self.clock()
            except KubeError as exc:
                if exc.status in (404, 409):
                    log.info("status.target_gone", uid=uid, status=exc.status)
                    self._states.pop(uid, None)
                    return
                state.dirty = True
                raise

    async def run(self) -> None:
        backoff = 0.5
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
                backoff = 0.5
            except KubeError as exc:
                log.warning("status.write_failed", error=str(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30)
                self._wake.set()

    async def close(self) -> None:
        with contextlib.suppress(KubeError):
            await self.flush()
