"""All sandboxes on this node: one ``Supervisor`` per Sandbox UID, and re-adoption.

``Runtime.recover()`` runs once at start: it reads every record under the state directory and
re-attaches to the VMs a previous node agent left running (``Supervisor.adopt``: same QEMU,
QMP and agent port reconnected, the relay socket served again, nothing rebooted). Sandboxes
whose VM vanished meanwhile are reported Crashed. ``put`` is idempotent per UID, so a retried
request never makes a second VM. ``close()`` lets go of every VM without stopping it.

Claims (warm pools, docs/pools.md): ``claim`` hands a pool member's running VM to another
Sandbox. The VM keeps its key (the member's uid: directory, rootfs, cgroup, network) and the
claimant's uid becomes an alias of it: every call for the claimant reaches that VM, and the
member's own uid reaches nothing any more (its deletion removes nothing).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import structlog

from kubesandbox_node.runtime.model import DesiredSandbox
from kubesandbox_node.runtime.records import RecordStore, SandboxRecord
from kubesandbox_node.runtime.snapshots import SnapshotInfo, SnapshotRefused, SnapshotStore
from kubesandbox_node.runtime.supervisor import (
    DEFAULT_TIMING,
    ClaimRefused,
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
        """By VM key (:attr:`Supervisor.uid`)."""
        self.aliases: dict[str, str] = {}
        """Claimant's uid → the key of the pool VM that serves it."""
        self.listeners: list[Listener] = []
        self.snapshots = SnapshotStore(state_dir / "snapshots")

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
            if record.claimed_by is not None:
                self.aliases[record.claimed_by] = uid
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
        """The VM serving the Sandbox ``uid`` (a claimed pool VM's own uid serves nobody)."""
        supervisor = self.sandboxes.get(self.aliases.get(uid, uid))
        if supervisor is None or supervisor.sandbox_uid != uid:
            return None
        return supervisor

    def put(self, desired: DesiredSandbox) -> Supervisor:
        supervisor = self.get(desired.uid)
        if supervisor is not None:
            desired = desired.model_copy(update={"uid": supervisor.uid})
        elif desired.uid in self.sandboxes:
            raise ClaimRefused(f"sandbox {desired.uid}'s VM was handed to another Sandbox")
        if supervisor is None:
            supervisor = self._supervisor(SandboxRecord(desired=desired))
            self.sandboxes[desired.uid] = supervisor
            supervisor.record.runs = 0
            supervisor.apply(desired)
        else:
            if desired.resolved.secrets != supervisor.desired.resolved.secrets:
                supervisor.rotate(desired)
            if desired.generation != supervisor.desired.generation or (
                desired.spec.lifecycle.state != supervisor.desired.spec.lifecycle.state
            ):
                supervisor.apply(desired)
        return supervisor

    async def claim(self, member_uid: str, claimant: DesiredSandbox, pool: str) -> Supervisor:
        """Hands the running VM of pool member ``member_uid`` to ``claimant``; idempotent for
        the same claimant. Raises ``ClaimRefused`` otherwise."""
        done = self.get(claimant.uid)
        if done is not None and done.uid == member_uid:
            return done  # a retried claim
        if done is not None or claimant.uid in self.sandboxes:
            raise ClaimRefused(f"sandbox {claimant.uid} already has a VM on this node")
        member = self.get(member_uid)
        if member is None:
            raise ClaimRefused(f"no unclaimed pool VM {member_uid} on this node")
        if member.desired.namespace != claimant.namespace:
            raise ClaimRefused("a pool VM serves Sandboxes of its own namespace only")
        await member.claim(claimant, pool)
        self.aliases[claimant.uid] = member.uid
        self.store.link(claimant.uid, member.uid)
        return member

    async def remove(self, uid: str) -> None:
        supervisor = self.get(uid)
        if supervisor is None:
            return
        key = supervisor.uid
        self.sandboxes.pop(key, None)  # first: its last transitions are no one's business
        try:
            await supervisor.remove()
        except BaseException:
            self.sandboxes.setdefault(key, supervisor)
            raise
        if self.aliases.get(uid) == key:
            del self.aliases[uid]
            self.store.unlink(uid)

    async def snapshot(self, uid: str, source_uid: str) -> SnapshotInfo:
        """Takes snapshot ``uid`` of the stopped Sandbox ``source_uid`` (idempotent); raises
        ``SnapshotRefused``."""
        source = self.get(source_uid)
        if source is None:
            raise SnapshotRefused(f"Sandbox {source_uid} is not on this node")
        namespace = source.desired.namespace
        info = await self.snapshots.capture(uid, namespace, source_uid, source.capture_disk)
        self.preparer.share_image(source.uid, uid)
        log.info("snapshot.taken", snapshot=uid, source=source_uid, size_bytes=info.size_bytes)
        return info

    async def remove_snapshot(self, uid: str) -> bool:
        """Deletes snapshot ``uid``'s copy and its pin on the image; whether it was here."""
        removed = await self.snapshots.remove(uid)
        self.preparer.release_image(uid)
        return removed

    async def close(self) -> None:
        await asyncio.gather(*(s.detach() for s in self.sandboxes.values()))
