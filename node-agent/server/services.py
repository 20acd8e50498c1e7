"""What the API serves and what runs beside it, as one object the app factory receives.

``background`` is the ``cleanup_ctx`` body: re-adopt what a previous node agent left running,
then run the metrics loop (sample every ``sample_interval``, offer samples to the status
writer), the status writer and the Lease renewer; on shutdown, stop those and let go of the
VMs without stopping them (the next node agent adopts them).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import structlog

from kubesandbox_api.conditions import Reason
from kubesandbox_api.spec import ViolationAction
from kubesandbox_kube.auth import Authenticator
from kubesandbox_node.egress.substitute import Violation
from kubesandbox_node.logs import SandboxLogs
from kubesandbox_node.metrics.sampler import Sampler
from kubesandbox_node.runtime.manager import Runtime
from kubesandbox_node.runtime.relay import SandboxRelay
from kubesandbox_node.runtime.supervisor import Supervisor
from kubesandbox_node.status.events import EventRecorder
from kubesandbox_node.status.lease import LeaseRenewer
from kubesandbox_node.status.writer import StatusWriter, Target

log = structlog.get_logger(__name__)


@dataclass
class Services:
    runtime: Runtime
    authenticator: Authenticator
    sampler: Sampler = field(default_factory=Sampler)
    status: StatusWriter | None = None
    lease: LeaseRenewer | None = None
    events: EventRecorder | None = None
    logs: SandboxLogs = field(default_factory=SandboxLogs)
    sample_interval: float = 5.0

    def __post_init__(self) -> None:
        self.runtime.listeners.append(self._changed)

    def _changed(self, supervisor: Supervisor) -> None:
        if supervisor.uid not in self.runtime.sandboxes:
            return  # being removed: the Sandbox is going away
        self._log(supervisor)
        desired = supervisor.desired
        target = Target(desired.namespace, desired.name, supervisor.sandbox_uid)
        status = supervisor.status()
        if self.status is not None:
            self.status.notify(target, status)
        if self.events is not None:
            self.events.observe(target, status)

    def secret_violation(self, uid: str, violation: Violation) -> None:
        """The egress proxy of VM ``uid`` blocked a placeholder (already logged, without any
        value): an Event on the Sandbox unless the action is a silent Block, and a kill for
        BlockAndTerminate."""
        supervisor = self.runtime.sandboxes.get(uid)
        if supervisor is None or violation.action == ViolationAction.BLOCK:
            return
        desired = supervisor.desired
        target = Target(desired.namespace, desired.name, supervisor.sandbox_uid)
        if self.events is not None:
            self.events.warn(target, Reason.SECRET_VIOLATION.value, violation.message)
        if violation.action == ViolationAction.BLOCK_AND_TERMINATE:
            supervisor.kill(Reason.SECRET_VIOLATION)

    def _log(self, supervisor: Supervisor) -> None:
        """The phase as a ``system`` line; a recorder on the relay of a VM that just came up."""
        status = supervisor.status()
        self.logs.phase(supervisor.uid, supervisor.dir, status.phase.value, status.message)
        relay = supervisor.handle.relay if supervisor.handle is not None else None
        if isinstance(relay, SandboxRelay) and relay.recorder is None:
            relay.recorder = self.logs.recorder(supervisor.uid, supervisor.dir)

    def forget(self, uid: str, sandbox_uid: str | None = None) -> None:
        """Drops what was kept for the VM ``uid`` and for the Sandbox it served (a claimed
        pool VM: ``sandbox_uid``; the status writer and Events know it by that one)."""
        self.logs.forget(uid)
        self.sampler.forget(uid)
        self.forget_target(uid)
        if sandbox_uid is not None:
            self.forget_target(sandbox_uid)

    def forget_target(self, sandbox_uid: str) -> None:
        """No more status writes or Events for that Sandbox (gone, or its VM handed on)."""
        if self.status is not None:
            self.status.forget(sandbox_uid)
        if self.events is not None:
            self.events.forget(sandbox_uid)

    async def sample_all(self) -> None:
        for uid, supervisor in list(self.runtime.sandboxes.items()):
            handle = supervisor.handle
            if handle is None:
                self.sampler.forget(uid)
                continue
            try:
                metrics = await self.sampler.sample(uid, handle)
            except (OSError, ValueError) as exc:
                log.debug("metrics.sample_failed", uid=uid, error=str(exc))
                continue
            if self.status is not None:
                self.status.offer_metrics(supervisor.sandbox_uid, metrics)

    async def _sampling(self) -> None:
        while True:
            await self.sample_all()
            await asyncio.sleep(self.sample_interval)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        adopted = await self.runtime.recover()
        log.info("node_agent.recovered", adopted=sum(adopted.values()), known=len(adopted))
        for supervisor in self.runtime.sandboxes.values():
            self._changed(supervisor)
        tasks = [asyncio.create_task(self._sampling(), name="metrics")]
        if self.status is not None:
            tasks.append(asyncio.create_task(self.status.run(), name="status-writer"))
        if self.lease is not None:
            tasks.append(asyncio.create_task(self.lease.run(), name="lease"))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self.status is not None:
                await self.status.close()
            await self.runtime.close()
