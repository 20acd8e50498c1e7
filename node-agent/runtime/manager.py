"""All sandboxes on this node: one ``Supervisor`` per Sandbox UID, and re-adoption.

``Runtime.recover()`` runs once at start: it reads every record under the state directory and
re-attaches to the VMs a previous node agent left running (``Supervisor.adopt``: same QEMU,
QMP and agent port reconnected, the relay socket served again, nothing rebooted). Sandboxes
whose VM vanished meanwhile are reported Crashed. ``put`` is idempotent per UID, so a retried
request never makes a second VM. ``close()`` lets go of every VM without stopping it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import structlog

from kubesandbox_node.runtime.model import DesiredSandbox
from kubesandbox_node.runtime.records import RecordStore, SandboxRecord
from kubesandbox_node.runtime.supervisor import (
    DEFAULT_TIMING,
    Preparer,
    Supervisor,
    Timing,
    boot_slots,
)
from kubesandbox_node.runtime.vmm import VMM

log = structlog.get_logger(__name__)

Listener = Callable[[Supervisor], None]


class Runtime:
    def __init__(
        self,
        state_dir: Path,
        *,
        vmm: VMM,
        preparer: Preparer,
        emulation: bool,
        timing: Timing = DEFAULT_TIMING,
    ) -> None:
        self.store = RecordStore(state_dir)
        self.vmm = vmm
        self.preparer = preparer
        self.emulation = emulation
        self.timing = timing
        slots = boot_slots(timing.concurrent_boots, emulation=emulation)
        self.booting = asyncio.Semaphore(slots) if slots else None
        self.sandboxes: dict[str, Supervisor] = {}
        self.listeners: list[Listener] = []

    def _changed(self, supervisor: Supervisor) -> None:
        for listener in self.listeners:
            listener(supervisor)

    def _supervisor(self, record: SandboxRecord) -> Supervisor:
        return Supervisor(
            record,
            store=self.store,
            vmm=self.vmm,
            preparer=self.preparer,
            emulation=self.emulation,
            on_change=self._changed,
            timing=self.timing,
            booting=self.booting,
            lookup=self.get,
        )

    async def recover(self) -> dict[str, bool]:
        """Re-adopts what a previous node agent left; uid → whether its VM is running."""
        adopted: dict[str, bool] = {}
        records = self.store.load_all()
        supervisors = []
        for uid, record in records.items():
            supervisor = self._supervisor(record)
            self.sandboxes[uid] = supervisor
            supervisors.append(supervisor)
        results = await asyncio.gather(*(s.adopt() for s in supervisors))
        for supervisor, ok in zip(supervisors, results, strict=True):
            adopted[supervisor.uid] = ok
        # any other VM in our cgroups is an orphan: no record, or a start cut short
        orphans = await self.vmm.reap_orphans({uid for uid, ok in adopted.items() if ok})
        for supervisor in supervisors:
            supervisor.resume_interrupted_start()
        log.info("runtime.recovered", sandboxes=len(records), adopted=sum(results), orphans=orphans)
        return adopted

    def get(self, uid: str) -> Supervisor | None:
        return self.sandboxes.get(uid)

    def put(self, desired: DesiredSandbox) -> Supervisor:
        supervisor = self.sandboxes.get(desired.uid)
        if supervisor is None:
            supervisor = self._supervisor(SandboxRecord(desired=desired))
            self.sandboxes[desired.uid] = supervisor
            supervisor.record.runs = 0
            supervisor.apply(desired)
        elif desired.generation != supervisor.desired.generation or (
            desired.spec.lifecycle.state != supervisor.desired.spec.lifecycle.state
        ):
            supervisor.apply(desired)
        return supervisor

    async def remove(self, uid: str) -> None:
        supervisor = self.sandboxes.get(uid)
        if supervisor is None:
            return
        self.sandboxes.pop(uid, None)  # first: its last transitions are no one's business
        try:
            await supervisor.remove()
        except BaseException:
            self.sandboxes.setdefault(uid, supervisor)
            raise

    async def close(self) -> None:
        await asyncio.gather(*(s.detach() for s in self.sandboxes.values()))
