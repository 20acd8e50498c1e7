"""One sandbox's state machine: Scheduled → Pulling → Booting → Running ⇄ Paused,
Running → Draining → Stopping → Stopped, Running/Paused → Suspending → Suspended → Resuming →
Running, and Crashed/Failed; start again from Stopped.

Every operation runs under one lock, so verbs never interleave; long ones (start, stop,
drain) run as tasks so the API answers at once and reports the phase. The supervisor persists
its ``SandboxRecord`` after every transition and calls ``on_change`` so that the status writer
can patch the Sandbox. Two background tasks per running VM: ``_monitor`` waits for QEMU to end
and decides why (``crash``), ``_policies`` enforces ``maxDurationSeconds`` and
``idleTimeoutSeconds`` (idle = no relay traffic and no session in flight) by draining to
Stopped with the reason, or with ``idleAction: Suspend`` by suspending (the next agent
connection wakes it: ``wake``).

Stop is graceful by default: ``core.shutdown`` to the guest agent (it syncs and powers off),
QMP ``quit`` when the grace period ran out, SIGKILL last. The writable layer stays, so a
later start boots from what the sandbox wrote.

Suspend saves the VM's memory and device state to ``suspended.state`` in the sandbox's
directory (``VMHandle.save_state``) and quits QEMU; the record keeps the machine (``SavedVM``:
the ``VMSpec`` of the run, so the restored QEMU gets the same command line whatever the spec
says meanwhile). Resume starts that machine with the state (``VMM.restore``); the state file
is deleted once the state is loaded and before the vCPUs continue, because from then on the
disks move on and the file no longer matches them. Each step is recorded before the next,
so a node agent restarted in the middle finishes or undoes it (``adopt``).
Next: ``manager`` holds all supervisors.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import structlog

from kubesandbox_api.conditions import ConditionStatus, ConditionType, Phase, Reason
from kubesandbox_api.spec import DesiredState, IdleAction, RestartPolicy, StopMode
from kubesandbox_api.status import Condition, ExitStatus, ImageStatus, SuspensionStatus
from kubesandbox_node.runtime.claim import claim_payload
from kubesandbox_node.runtime.crash import boot_failure, classify
from kubesandbox_node.runtime.fork import (
    Capture,
    ForkError,
    copy_file,
    fork_machine,
    fork_refusal,
    forked_message,
    source_mac,
)
from kubesandbox_node.runtime.model import DesiredSandbox, NodeSandboxStatus
from kubesandbox_node.runtime.records import (
    STATE_FILE,
    ForkRecord,
    RecordStore,
    SandboxRecord,
    SavedVM,
)
from kubesandbox_node.runtime.snapshots import UPPER as SNAPSHOT_UPPER
from kubesandbox_node.runtime.snapshots import SnapshotRefused
from kubesandbox_node.runtime.vmm import VMM, Incoming, VMHandle, VMRecord
from kubesandbox_node.vm import bootconfig as bc
from kubesandbox_node.vm.machine import BootError
from kubesandbox_node.vm.qmp import QMPError
from kubesandbox_node.vm.snapshot import SnapshotError, state_timeout
from kubesandbox_node.vm.spec import VMSpec
from kubesandbox_protocol.client import AgentClient, AgentError
from kubesandbox_protocol.frame import Frame
from kubesandbox_protocol.messages import MessageType, encode_body

log = structlog.get_logger(__name__)

RUNNING_PHASES = frozenset({Phase.RUNNING, Phase.PAUSED, Phase.DRAINING, Phase.STOPPING})
STARTING_PHASES = frozenset({Phase.PULLING, Phase.BOOTING})
SUSPENDABLE_PHASES = frozenset({Phase.RUNNING, Phase.PAUSED})
KILL_WAIT = 5.0


CLAIM_TIMEOUT = 10.0


class ClaimRefused(Exception):
    """The VM cannot be claimed (not a ready pool member, or its guest agent refused)."""


class PrepareError(Exception):
    """The sandbox cannot run as specified; ``reason`` goes to the status."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Preparer(Protocol):
    """Image, rootfs and boot configuration (``kubesandbox_node.runtime.prepare``)."""

    async def image(self, desired: DesiredSandbox) -> ImageStatus | None: ...
    async def build(self, desired: DesiredSandbox, vm_dir: Path) -> VMSpec: ...
    async def claim_env(self, desired: DesiredSandbox) -> list[str]:
        """The default environment of every exec, as :meth:`build` puts it in ``boot.json``."""
        ...

    async def remove(self, desired: DesiredSandbox) -> None: ...
    async def update_live(self, previous: DesiredSandbox, desired: DesiredSandbox) -> None: ...
    async def fork(
        self, desired: DesiredSandbox, source_uid: str
    ) -> tuple[bc.Network | None, list[str]]:
        """A fork's own network (namespace, tap, MAC) and its share of the source's image."""
        ...

    async def egress_trust(self, desired: DesiredSandbox, relay_socket: Path) -> None:
        """The sandbox's egress CA certificate into the running guest's trust store."""
        ...

    def rotate_secrets(self, desired: DesiredSandbox) -> None:
        """New secret values for the running egress proxy."""
        ...

    async def claim_network(self, member: DesiredSandbox, claimant: DesiredSandbox) -> None:
        """The claimant's egress proxy (secrets, a CA of its own) on the member's network."""
        ...

    def share_image(self, source_uid: str, uid: str) -> None:
        """Pins ``source_uid``'s image layers for ``uid`` too (a snapshot of it)."""
        ...

    def release_image(self, uid: str) -> None:
        """``uid`` (a removed snapshot) no longer needs its image layers."""
        ...


@dataclass(frozen=True)
class Timing:
    ready_timeout: float = 120.0
    policy_tick: float = 1.0
    concurrent_boots: int | None = None
    """VMs that may boot at once (until ``core.ready``); ``None``: :func:`boot_slots` decides,
    ``0``: no limit."""


EGRESS_TRUST_TIMEOUT = 30.0
UPPER_SERIAL = "upper"
"""The writable layer's drive (an OCI root's ext4 over its read-only layers)."""


def boot_slots(limit: int | None, *, emulation: bool, cpus: int | None = None) -> int:
    """How many VMs boot at once on this node (0: no limit).

    A boot is CPU-bound, under TCG entirely: N boots at once on C cores each take about N/C
    times as long as one, so a burst of creations without a limit makes every boot miss the
    ready timeout together (a hundred sandboxes on two cores: all ``BootTimeout``). Booting
    a few at a time finishes each one quickly, and all of them sooner. The ready timeout
    starts when QEMU starts, after the wait for a slot.
    """
    if limit is not None:
        return max(0, limit)
    cores = cpus or os.cpu_count() or 1
    return 2 * cores if emulation else 8 * cores


DEFAULT_TIMING = Timing()
BOOT_RETRY_FIRST = 10.0
BOOT_RETRY_MAX = 300.0


def suspend_refusal(spec: VMSpec | None) -> str | None:
    """Why this machine cannot be suspended, or None."""
    if spec is None:
        return "the machine of this run is not recorded (started before suspend existed)"
    if spec.shares:
        return (
            "host directories (bind roots, bind volumes) are virtio-fs devices, whose state "
            "QEMU cannot save"
        )
    return None


def has_state(saved: SavedVM | None) -> bool:
    """Whether the saved state file is there (it is written whole or not at all)."""
    return saved is not None and os.path.exists(saved.state_file)


def _now() -> datetime:
    return datetime.now(UTC)


class Supervisor:
    def __init__(
        self,
        record: SandboxRecord,
        *,
        store: RecordStore,
        vmm: VMM,
        preparer: Preparer,
        emulation: bool,
        on_change: Callable[[Supervisor], None] = lambda _: None,
        timing: Timing = DEFAULT_TIMING,
        booting: asyncio.Semaphore | None = None,
        lookup: Callable[[str], Supervisor | None] = lambda _: None,
    ) -> None:
        self.record = record
        self.lookup = lookup
        """Another sandbox's supervisor on this node by uid (a fork's source)."""
        self.store = store
        self.vmm = vmm
        self.preparer = preparer
        self.emulation = emulation
        self.on_change = on_change
        self.timing = timing
        self.booting = booting
        """Shared by every supervisor of the node: the boot slots (``None``: no limit)."""
        self.handle: VMHandle | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watchers: list[asyncio.Task[None]] = []
        self._run_ended = asyncio.Event()
        self._run_ended.set()
        self._suspending = False
        """QEMU is being ended on purpose after its state was saved: not a crash."""
        self._deferred: tuple[bool, bool] | None = None
        """A desired state that arrived while an operation was under way (whether its
        generation and its ``lifecycle.state`` moved): looked at again when they are done."""
        self._closing = False
        """Removed or detached: nothing more is started."""
        self._boot_failures = 0
        """Boots in a row that failed (reset by one that reaches the guest agent)."""
        self._boot_retry: asyncio.TimerHandle | None = None
        self.log = log.bind(
            sandbox=record.desired.name, namespace=record.desired.namespace, uid=self.uid
        )

    # --- identity and paths ----------------------------------------------------------------

    @property
    def uid(self) -> str:
        """The VM's own key on this node (directory, rootfs, cgroup, network): the uid of the
        Sandbox it was booted for, which a claim does not change."""
        return self.record.desired.uid

    @property
    def sandbox_uid(self) -> str:
        """The Sandbox this VM serves: its own, or the one that claimed it from a pool."""
        return self.record.claimed_by or self.uid

    @property
    def desired(self) -> DesiredSandbox:
        return self.record.desired

    @property
    def dir(self) -> Path:
        return self.store.dir(self.uid)

    @property
    def relay_socket(self) -> Path:
        return self.dir / "agent.sock"

    @property
    def phase(self) -> Phase:
        return self.record.phase

    @property
    def state_file(self) -> Path:
        return self.dir / STATE_FILE

    # --- status ----------------------------------------------------------------------------

    def status(self) -> NodeSandboxStatus:
        r = self.record
        return NodeSandboxStatus(
            phase=r.phase,
            conditions=list(r.conditions),
            image=r.image,
            started_at=r.started_at,
            stopped_at=r.stopped_at,
            exit_status=r.exit_status,
            suspension=r.suspension,
            message=r.message,
            pool=r.pool,
        )

    def _condition(
        self, type: ConditionType, status: bool, reason: Reason, message: str = ""
    ) -> None:
        value = ConditionStatus.TRUE if status else ConditionStatus.FALSE
        generation = self.desired.generation
        for i, old in enumerate(self.record.conditions):
            if old.type == type:
                moved = old.status != value
                self.record.conditions[i] = Condition(
                    type=type,
                    status=value,
                    reason=reason,
                    message=message,
                    observed_generation=generation,
                    last_transition_time=_now() if moved else old.last_transition_time,
                )
                return
        self.record.conditions.append(
            Condition(
                type=type,
                status=value,
                reason=reason,
                message=message,
                observed_generation=generation,
                last_transition_time=_now(),
            )
        )

    def _transition(self, phase: Phase, message: str | None = None) -> None:
        if phase != self.record.phase:
            self.log.info("sandbox.phase", phase=phase.value, was=self.record.phase.value)
        self.record.phase = phase
        self.record.message = message
        self._save()

    def _save(self) -> None:
        self.store.save(self.uid, self.record)
        self.on_change(self)

    # --- operations ------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        async def locked() -> None:
            async with self._lock:
                await coro

        task = asyncio.create_task(locked())
        self._tasks.add(task)
        task.add_done_callback(self._operation_done)
        return task

    def _operation_done(self, task: asyncio.Task[None]) -> None:
        """The desired state may have moved while operations ran (a Running that came while a
        kill was finishing saw a VM still up, or none yet startable): once the last one is
        done, steer towards the desired state as it is now."""
        self._tasks.discard(task)
        if self._deferred is None or self._closing or self._busy():
            return
        changed, moved = self._deferred
        self._deferred = None
        self._steer(changed=changed, moved=moved)

    def apply(self, desired: DesiredSandbox) -> asyncio.Task[None] | None:
        """New desired state from the operator; starts, stops or pauses as the spec asks."""
        changed = desired.generation != self.record.desired.generation
        previous = self.record.desired
        self.record.desired = desired
        self._save()
        moved = desired.spec.lifecycle.state != previous.spec.lifecycle.state
        if self.handle is not None and changed and desired.spec.network != previous.spec.network:
            self._spawn(self._update_live(previous))
        if self._busy():  # what is under way may change what this asks for: look again after
            was_changed, was_moved = self._deferred or (False, False)
            self._deferred = (changed or was_changed, moved or was_moved)
        return self._steer(changed=changed, moved=moved)

    def _steer(self, *, changed: bool, moved: bool) -> asyncio.Task[None] | None:
        """The operation that brings the VM towards ``lifecycle.state``, if any (``changed``:
        a new generation, which may start a stopped VM again)."""
        if self._closing:
            return None
        desired = self.desired
        want = desired.spec.lifecycle.state
        running = self.handle is not None
        if want == DesiredState.SUSPENDED or self.record.saved is not None:
            return self._apply_suspension(want, running, moved=moved)
        if want in (DesiredState.RUNNING, DesiredState.PAUSED):
            if not running and (self.record.runs == 0 or changed) and not self._busy():
                return self.start(pause_after=want == DesiredState.PAUSED)
            if running and want == DesiredState.PAUSED and self.phase == Phase.RUNNING:
                return self.pause()
            if running and want == DesiredState.RUNNING and self.phase == Phase.PAUSED:
                return self.resume()
        elif want == DesiredState.STOPPED and running and self.phase in RUNNING_PHASES:
            mode = desired.spec.lifecycle.stop_mode
            if mode == StopMode.KILL:
                return self.kill(Reason.STOPPED_BY_USER)
            if mode == StopMode.DRAIN:
                return self.drain(Reason.STOPPED_BY_USER)
            return self.stop(reason=Reason.STOPPED_BY_USER)
        elif want == DesiredState.STOPPED and self.record.runs == 0:
            self.record.phase = Phase.STOPPED
            self.record.message = "created stopped (lifecycle.state is Stopped)"
            self._save()
        return None

    def _apply_suspension(
        self, want: DesiredState, running: bool, *, inside: bool = False, moved: bool = False
    ) -> asyncio.Task[None] | None:
        """``lifecycle.state`` Suspended, or any state while the VM is saved on disk.
        ``inside``: called from an operation that holds the lock (and queues behind it);
        ``moved``: ``lifecycle.state`` changed (an idle-suspended sandbox whose state stays
        Running sleeps until it is used, :meth:`wake`)."""
        busy = not inside and self._busy()
        saved = self.record.saved
        idle = saved is not None and saved.reason == Reason.IDLE_TIMEOUT
        if idle and want == DesiredState.RUNNING and not moved:
            return None
        if want == DesiredState.SUSPENDED:
            if running and self.phase in SUSPENDABLE_PHASES:
                return self.suspend(Reason.SUSPENDED_BY_USER)
            if not running and self.record.runs == 0 and not busy:
                self.record.phase = Phase.STOPPED
                self.record.message = (
                    "created with lifecycle.state Suspended: nothing ran, so nothing was saved"
                )
                self._save()
            return None
        if running or busy or self.phase != Phase.SUSPENDED:
            return None  # a suspend or resume in progress looks again when it is done
        if want == DesiredState.STOPPED:
            if self.desired.spec.lifecycle.stop_mode == StopMode.KILL:
                return self._spawn(self._discard(Reason.STOPPED_BY_USER))
            self.restore()  # a graceful stop needs the guest: wake it, then stop it
            return self.stop(reason=Reason.STOPPED_BY_USER)
        return self.restore(pause_after=want == DesiredState.PAUSED)

    def _follow_desired(self) -> None:
        """After a suspend or a resume: the desired state may have moved meanwhile."""
        if self.record.saved is not None or (
            self.desired.spec.lifecycle.state == DesiredState.SUSPENDED
            and self.phase in SUSPENDABLE_PHASES
        ):
            self._spawn(self._follow())

    async def _follow(self) -> None:
        want = self.desired.spec.lifecycle.state
        self._apply_suspension(want, self.handle is not None, inside=True)

    async def _update_live(self, previous: DesiredSandbox) -> None:
        """What can change without a reboot (network policy, rules and published ports)."""
        if self.handle is None:
            return
        try:
            await self.preparer.update_live(previous, self.desired)
        except PrepareError as exc:
            self.log.warning("sandbox.live_update_refused", error=str(exc))

    async def _egress_trust(self) -> None:
        """With secrets: the egress CA's certificate into the guest's trust store, after every
        boot, restore or re-adoption (the CA lives in this node agent's memory only)."""
        if self.handle is None or not self.desired.spec.secrets:
            return
        try:
            async with asyncio.timeout(EGRESS_TRUST_TIMEOUT):
                await self.preparer.egress_trust(self.desired, self.relay_socket)
        except Exception as exc:
            self.log.warning("sandbox.egress_trust_failed", error=str(exc)[:300])

    def rotate(self, desired: DesiredSandbox) -> None:
        """The operator sent other secret values (a rotated Secret, or the values again after
        a node agent restart): kept in memory and given to the running egress proxy."""
        self.record.desired = self.record.desired.model_copy(
            update={"resolved": self.record.desired.resolved.model_copy(
                update={"secrets": desired.resolved.secrets})}
        )  # fmt: skip
        self.preparer.rotate_secrets(self.record.desired)
        self.log.info("sandbox.secrets_rotated", secrets=sorted(desired.resolved.secrets))

    def _busy(self) -> bool:
        return self._lock.locked() or any(not t.done() for t in self._tasks)

    def start(self, *, pause_after: bool = False) -> asyncio.Task[None]:
        if self.record.saved is not None:  # booting would make the saved state stale
            return self.restore(pause_after=pause_after)
        return self._spawn(self._start(pause_after))

    def stop(
        self, grace: float | None = None, reason: Reason = Reason.STOPPED_BY_USER
    ) -> asyncio.Task[None]:
        return self._spawn(self._stop(grace, reason))

    def kill(self, reason: Reason = Reason.STOPPED_BY_USER) -> asyncio.Task[None]:
        return self._spawn(self._kill(reason))

    def drain(
        self, reason: Reason = Reason.STOPPED_BY_USER, limit: float | None = None
    ) -> asyncio.Task[None]:
        return self._spawn(self._drain(reason, limit))

    def pause(self) -> asyncio.Task[None]:
        return self._spawn(self._pause())

    def resume(self) -> asyncio.Task[None]:
        return self._spawn(self._resume())

    def suspend(self, reason: Reason = Reason.SUSPENDED_BY_USER) -> asyncio.Task[None]:
        return self._spawn(self._suspend(reason))

    def restore(self, *, pause_after: bool = False) -> asyncio.Task[None]:
        return self._spawn(self._restore(pause_after))

    def sleeping(self) -> bool:
        """Suspended (or on its way in or out) while it is wanted Running: an idle suspend,
        which the next use undoes (:meth:`wake`)."""
        return self.desired.spec.lifecycle.state == DesiredState.RUNNING and self.phase in (
            Phase.SUSPENDING,
            Phase.SUSPENDED,
            Phase.RESUMING,
        )

    async def wake(self) -> bool:
        """Restores a sleeping sandbox for someone who wants to use it (after a suspend still
        in progress); True once it runs. The restore goes on if the caller gives up."""
        if self.handle is not None:
            return True
        task = self._spawn(self._restore(False, woken=True))
        await asyncio.shield(task)
        return self.handle is not None

    async def wait(self) -> ExitStatus | None:
        """Until the current run ends (at once when nothing runs)."""
        await self._run_ended.wait()
        return self.record.exit_status

    # --- start -----------------------------------------------------------------------------

    def _new_run(self) -> None:
        self.record.runs += 1
        self.record.started_generation = self.desired.generation
        self.record.exit_status = None
        self._run_ended.clear()
        self._condition(
            ConditionType.SOFTWARE_EMULATION,
            self.emulation,
            Reason.KVM_UNAVAILABLE if self.emulation else Reason.KVM,
            "KVM cannot run guests on this node; the VM runs under TCG" if self.emulation else "",
        )

    async def _start(self, pause_after: bool) -> None:
        if self.handle is not None:
            return
        if self.desired.spec.image.sandbox is not None:
            await self._start_fork(pause_after)
            return
        desired = self.desired
        self._new_run()
        try:
            self._transition(Phase.PULLING, "resolving the image")
            self._condition(ConditionType.IMAGE_READY, False, Reason.PULLING)
            try:
                image = await self.preparer.image(desired)
                if image is not None:
                    self.record.image = image
                self._condition(ConditionType.IMAGE_READY, True, Reason.PULLED)
                self._transition(Phase.BOOTING, "building the root filesystem")
                spec = await self.preparer.build(desired, self.dir / "vm")
                self.record.spec = spec
            except PrepareError as exc:
                reason = exc.reason
                if reason != Reason.ROOTFS_FAILED:
                    self._condition(ConditionType.IMAGE_READY, False, reason, str(exc))
                self._end(Phase.FAILED, reason, False, None, str(exc))
                return
            self._condition(ConditionType.AGENT_CONNECTED, False, Reason.BOOTING)
            try:
                async with self._boot_slot():
                    self._transition(Phase.BOOTING, "waiting for the guest agent")
                    handle = await self.vmm.start(
                        spec, self.relay_socket, ready_timeout=self.timing.ready_timeout
                    )
            except BootError as exc:
                reason, why = boot_failure(exc.reason, exc.console)
                self._condition(ConditionType.AGENT_CONNECTED, False, reason, why)
                self._end(Phase.CRASHED, reason, False, None, f"{why}\n{exc.console[-1500:]}")
                self._retry_boot()
                return
        except Exception as exc:
            self.log.exception("sandbox.start_failed")
            self._end(Phase.FAILED, Reason.VMM_EXITED, False, None, f"start failed: {exc}")
            return
        self._boot_failures = 0
        await self._started(handle, pause_after)

    def _retry_boot(self) -> None:
        """Under ``restartPolicy`` OnFailure or Always, a boot that failed is tried again
        after a back-off that doubles with each failure in a row (10 s up to 5 min, as the
        kubelet backs off a crashing container): a node too loaded to boot in time gets
        another go, an image that can never boot does not spin."""
        if self.desired.spec.lifecycle.restart_policy == RestartPolicy.NEVER:
            return
        self._boot_failures += 1
        delay = min(BOOT_RETRY_FIRST * 2 ** (self._boot_failures - 1), BOOT_RETRY_MAX)
        self.log.warning("sandbox.boot_retry", in_seconds=delay, failures=self._boot_failures)
        if self._boot_retry is not None:
            self._boot_retry.cancel()
        self._boot_retry = asyncio.get_running_loop().call_later(delay, self._boot_again)

    def _boot_again(self) -> None:
        """The retry, unless something else happened meanwhile (a new desired state, a
        start, a removal)."""
        self._boot_retry = None
        state = self.desired.spec.lifecycle.state
        wanted = state in (DesiredState.RUNNING, DesiredState.PAUSED)
        crashed = self.phase == Phase.CRASHED and self.handle is None
        if wanted and crashed and not self._closing and not self._busy():
            self.start(pause_after=state == DesiredState.PAUSED)

    async def _started(
        self, handle: VMHandle, pause_after: bool, *, forked: str | None = None
    ) -> None:
        """Running; ``forked``: what the fork was made from (the condition's and Event's)."""
        self._attach(handle)
        handle.relay.touch()
        group = handle.record.cgroup()
        self.record.oom_kills_at_start = group.usage().oom_kills if group else 0
        self.record.started_at = _now()
        self.record.stopped_at = None
        await self._egress_trust()
        reason = Reason.FORKED if forked else Reason.AGENT_READY
        self._condition(ConditionType.AGENT_CONNECTED, True, reason, forked or "")
        self._condition(ConditionType.PAUSED, False, Reason.RUNNING)
        self._transition(Phase.RUNNING, forked)
        if pause_after:
            await self._pause()

    @contextlib.asynccontextmanager
    async def _boot_slot(self) -> AsyncIterator[None]:
        """One of the node's boot slots, held until the guest agent is ready (or the boot
        failed); the sandbox says it waits for one while all are taken."""
        if self.booting is None:
            yield
            return
        if self.booting.locked():
            self._transition(Phase.BOOTING, "waiting for a boot slot: other VMs are booting")
        async with self.booting:
            yield

    def _attach(self, handle: VMHandle) -> None:
        self.handle = handle
        self.record.vm = handle.record
        self.record.ending = None
        self._run_ended.clear()
        self._watchers = [
            asyncio.create_task(self._monitor(handle), name=f"monitor-{self.uid}"),
            asyncio.create_task(self._policies(handle), name=f"policies-{self.uid}"),
        ]

    async def adopt(self) -> bool:
        """Re-attaches to the VM of a previous node agent; False when there is none."""
        if self.phase == Phase.SUSPENDING:
            return await self._adopt_suspending()
        if self.phase == Phase.RESUMING:
            return await self._adopt_resuming()
        vm = self.record.vm
        if vm is None or self.phase not in RUNNING_PHASES:
            return False
        handle = await self.vmm.adopt(vm, self.relay_socket)
        if handle is None:
            self.record.vm = None
            if self.record.ending is not None:  # it was being stopped and finished meanwhile
                self._end(Phase.STOPPED, Reason(self.record.ending), True, None,
                          "stopped while the node agent was away")  # fmt: skip
                return False
            self.log.warning("sandbox.vm_lost_while_away")
            self._end(Phase.CRASHED, Reason.VMM_EXITED, False, None,
                      "the VM ended while the node agent was away")  # fmt: skip
            return False
        self._attach(handle)
        # the namespace's rules outlived us, the sandbox's resolver did not: start it again;
        # so did its egress proxy, whose new CA the guest is given
        self._spawn(self._update_live(self.record.desired))
        self._spawn(self._egress_trust())
        if self.phase in (Phase.DRAINING, Phase.STOPPING):
            self._spawn(self._stop(None, Reason(self.record.ending or Reason.STOPPED_BY_USER)))
        else:
            self._save()
        return True

    async def _adopt_suspending(self) -> bool:
        """A suspend the previous node agent did not finish: once the state file is complete
        (recorded in ``saved``) the sandbox is suspended and its paused QEMU, if still there,
        is reaped as an orphan; before that, the VM runs on and is suspended again."""
        saved = self.record.saved
        if saved is not None and has_state(saved):
            self._suspended(Reason(saved.reason), saved.size_bytes, None)
            return False
        self.record.saved = None
        vm = self.record.vm
        handle = await self.vmm.adopt(vm, self.relay_socket, resume=True) if vm else None
        if handle is None:
            self.record.vm = None
            self._end(Phase.CRASHED, Reason.VMM_EXITED, False, None,
                      "the VM ended while being suspended, before its state was saved")  # fmt: skip
            return False
        self._attach(handle)
        self._condition(ConditionType.SUSPENDED, False, Reason.SUSPEND_FAILED,
                        "the node agent restarted while saving the state")  # fmt: skip
        self._transition(Phase.RUNNING, "suspend interrupted by a node agent restart")
        return True

    async def _adopt_resuming(self) -> bool:
        """A resume the previous node agent did not finish: its QEMU, once recorded, has the
        whole state (the file may already be gone) and is continued; without one, the state
        file (if still there) is the sandbox's state."""
        saved = self.record.saved
        vm = self.record.vm
        handle = await self.vmm.adopt(vm, self.relay_socket, resume=True) if vm else None
        if handle is not None:
            if saved is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(saved.state_file)
            self._resumed(handle, None)
            return True
        self.record.vm = None
        if has_state(saved):
            self._condition(ConditionType.AGENT_CONNECTED, False, Reason.SUSPENDED_BY_USER)
            self._transition(Phase.SUSPENDED, "resume interrupted by a node agent restart")
            return False
        self.record.saved = None
        self._end(Phase.CRASHED, Reason.RESUME_FAILED, False, None,
                  "the VM ended while being restored, and its saved state is gone")  # fmt: skip
        return False

    def resume_interrupted_start(self) -> asyncio.Task[None] | None:
        """A start the previous node agent did not finish (its VM, if any, was reaped as an
        orphan) is done again from the beginning; the writable layer is reused."""
        if self.phase in (Phase.SUSPENDED, *SUSPENDABLE_PHASES):
            self._follow_desired()  # a suspend or resume the restart interrupted, asked again
            return None
        if self.phase not in STARTING_PHASES or self.handle is not None:
            return None
        self.log.info("sandbox.start_resumed", phase=self.phase.value)
        self.record.runs = max(0, self.record.runs - 1)
        want = self.desired.spec.lifecycle.state
        return self.start(pause_after=want == DesiredState.PAUSED)

    # --- claim (warm pools) -----------------------------------------------------------------

    async def claim(self, claimant: DesiredSandbox, pool: str) -> None:
        """This pool member's running VM becomes ``claimant``'s: its secrets get an egress proxy
        of their own, the guest agent takes on its env (with the secrets' placeholders),
        hostname, scripts and a fresh identity (``kubesandbox.claim``) and the proxy's CA in
        its trust store, then the record says whom it serves. The VM keeps its key
        (:attr:`uid`); lifecycle policies follow the claimant's spec from now on,
        ``maxDurationSeconds`` counted from the claim."""
        async with self._lock:
            handle = self.handle
            if handle is None or self.phase != Phase.RUNNING or not self.desired.pool_member:
                raise ClaimRefused(f"not a running, unclaimed pool VM (phase {self.phase.value})")
            if self.record.claimed_by is not None:
                raise ClaimRefused(f"already claimed by {self.record.claimed_by}")
            # The VM's pin goes with it: a later start of the claimant reuses these layers.
            pinned = self.record.image or claimant.pinned_image
            desired = claimant.model_copy(
                update={"uid": self.uid, "pool_member": False, "pinned_image": pinned}
            )
            payload = claim_payload(desired, await self.preparer.claim_env(desired))
            try:
                # the claimant's secrets behind its own egress proxy before its env (their
                # placeholders) reaches the guest
                await self.preparer.claim_network(self.desired, desired)
            except PrepareError as exc:
                raise ClaimRefused(f"the claimant's network: {exc}") from exc
            try:
                async with await AgentClient.connect(self.relay_socket) as client:
                    answer = await asyncio.wait_for(
                        client.request(MessageType.CLAIM, payload), CLAIM_TIMEOUT
                    )
            except (AgentError, OSError, TimeoutError) as exc:
                raise ClaimRefused(f"the guest agent did not answer the claim: {exc}") from exc
            if answer.t != MessageType.CLAIMED:
                raise ClaimRefused(f"the guest agent refused the claim: {answer.payload}")
            if desired.spec.secrets:
                try:
                    await asyncio.wait_for(
                        self.preparer.egress_trust(desired, self.relay_socket),
                        EGRESS_TRUST_TIMEOUT,
                    )
                except (AgentError, OSError, TimeoutError) as exc:
                    raise ClaimRefused(f"the egress CA did not reach the guest: {exc}") from exc
            self.record.claimed_by = claimant.uid
            self.record.pool = pool
            self.record.desired = desired
            self.record.started_at = _now()
            generation = desired.generation
            self.record.conditions = [
                c.model_copy(update={"observed_generation": generation})
                for c in self.record.conditions
            ]
            self.log = log.bind(
                sandbox=desired.name, namespace=desired.namespace, uid=claimant.uid, vm=self.uid
            )
            self.log.info("sandbox.claimed", pool=pool)
            self._save()

    # --- the end of a run ------------------------------------------------------------------

    async def _monitor(self, handle: VMHandle) -> None:
        info = await handle.wait_exit()
        if self.handle is not handle:
            return
        self.handle = None
        self.record.vm = None
        for task in self._watchers:
            if task is not asyncio.current_task():
                task.cancel()
        group = handle.record.cgroup()
        if group is not None:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(group.remove)
        if self._suspending:
            return
        if self.record.ending is not None:
            how = info.shutdown_reason or "killed"
            self._end(
                Phase.STOPPED, Reason(self.record.ending), True, info.code, f"stopped ({how})"
            )
            return
        ending = classify(info, self.record.oom_kills_at_start)
        self.log.warning("sandbox.vm_ended", reason=ending.reason.value, code=info.code)
        self._end(ending.phase, ending.reason, ending.success, ending.code, ending.message)
        policy = self.desired.spec.lifecycle.restart_policy
        if (policy == RestartPolicy.ALWAYS) or (
            policy == RestartPolicy.ON_FAILURE and not ending.success
        ):
            self.start()

    def _end(
        self, phase: Phase, reason: Reason, success: bool, code: int | None, message: str | None
    ) -> None:
        self.record.exit_status = ExitStatus(code=code, success=success, reason=reason)
        self.record.stopped_at = _now()
        self._condition(ConditionType.AGENT_CONNECTED, False, reason, message or "")
        self._condition(ConditionType.PAUSED, False, reason)
        self._transition(phase, message)
        self._run_ended.set()

    async def _policies(self, handle: VMHandle) -> None:
        lifecycle = self.desired.spec.lifecycle
        while self.handle is handle:
            await asyncio.sleep(self.timing.policy_tick)
            if self.handle is not handle or self.record.ending is not None:
                return
            lifecycle = self.desired.spec.lifecycle
            started = self.record.started_at
            grace = float(lifecycle.stop_grace_period_seconds)
            limit = lifecycle.max_duration_seconds
            if limit and started is not None and (_now() - started).total_seconds() >= limit:
                self.drain(Reason.MAX_DURATION_EXCEEDED, limit=grace)
                return
            idle = lifecycle.idle_timeout_seconds
            if idle and self.phase == Phase.RUNNING and handle.relay.idle_seconds >= idle:
                if lifecycle.idle_action == IdleAction.SUSPEND:
                    self.suspend(Reason.IDLE_TIMEOUT)
                else:
                    self.drain(Reason.IDLE_TIMEOUT, limit=grace)
                return

    async def _wait_end(self, handle: VMHandle, within: float) -> bool:
        waiter = next((t for t in self._watchers if t.get_name().startswith("monitor-")), None)
        if waiter is None:
            return True
        try:
            async with asyncio.timeout(within):
                await asyncio.shield(waiter)
            return True
        except TimeoutError:
            return False

    async def _stop(self, grace: float | None, reason: Reason) -> None:
        handle = self.handle
        if handle is None:
            return
        if grace is None:
            grace = float(self.desired.spec.lifecycle.stop_grace_period_seconds)
        self.record.ending = reason.value
        if self.phase == Phase.PAUSED:
            with contextlib.suppress(Exception):
                await handle.resume()
        self._transition(Phase.STOPPING, f"stopping ({reason.value})")
        await handle.request_shutdown()
        if await self._wait_end(handle, grace):
            return
        self.log.info("sandbox.stop_grace_expired", grace=grace)
        await handle.quit()
        if await self._wait_end(handle, KILL_WAIT):
            return
        await handle.kill()
        await self._wait_end(handle, KILL_WAIT)

    async def _kill(self, reason: Reason) -> None:
        handle = self.handle
        if handle is None:
            return
        self.record.ending = reason.value
        await handle.kill()
        await self._wait_end(handle, KILL_WAIT)

    async def _drain(self, reason: Reason, limit: float | None) -> None:
        handle = self.handle
        if handle is None:
            return
        self.record.ending = reason.value
        handle.relay.start_draining()
        if self.phase == Phase.PAUSED:
            await handle.resume()
        self._transition(Phase.DRAINING, f"draining ({reason.value}): new sessions are refused")
        try:
            async with asyncio.timeout(limit):
                await handle.relay.wait_sessions_done()
        except TimeoutError:
            self.log.info("sandbox.drain_limit_reached", limit=limit)
        await self._stop(None, reason)

    async def _pause(self) -> None:
        handle = self.handle
        if handle is None or self.phase != Phase.RUNNING:
            return
        await handle.pause()
        self._condition(ConditionType.PAUSED, True, Reason.PAUSED_BY_USER)
        self._transition(Phase.PAUSED)

    async def _resume(self) -> None:
        handle = self.handle
        if handle is None or self.phase != Phase.PAUSED:
            return
        await handle.resume()
        self._condition(ConditionType.PAUSED, False, Reason.RUNNING)
        self._transition(Phase.RUNNING)

    # --- suspend and resume ----------------------------------------------------------------

    async def _suspend(self, reason: Reason) -> None:
        handle = self.handle
        if handle is None or self.phase not in SUSPENDABLE_PHASES:
            return
        spec = self.record.spec
        refused = suspend_refusal(spec)
        if refused is not None or spec is None:
            self._condition(ConditionType.SUSPENDED, False, Reason.SUSPEND_FAILED, refused or "")
            self._transition(self.phase, f"cannot suspend: {refused}")
            return
        was_paused = self.phase == Phase.PAUSED
        began = time.monotonic()
        self._transition(Phase.SUSPENDING, f"saving the VM's memory and device state ({reason})")
        try:
            size = await handle.save_state(self.state_file, within=state_timeout(spec.memory_mib))
        except (SnapshotError, QMPError, OSError, ConnectionError) as exc:
            self.log.warning("sandbox.suspend_failed", error=str(exc))
            if not was_paused:
                with contextlib.suppress(QMPError, OSError, ConnectionError):
                    await handle.resume()
            self._condition(ConditionType.SUSPENDED, False, Reason.SUSPEND_FAILED, str(exc))
            self._transition(Phase.PAUSED if was_paused else Phase.RUNNING,
                             f"suspend failed, the VM runs on: {exc}")  # fmt: skip
            return
        # the state is on disk: from here a restarted node agent resumes from it
        self.record.saved = SavedVM(
            spec=spec,
            state_file=str(self.state_file),
            size_bytes=size,
            ready_frame=handle.record.ready_frame,
            was_paused=was_paused,
            reason=reason.value,
        )
        self._save()
        self._suspending = True
        try:
            await handle.quit()
            if not await self._wait_end(handle, KILL_WAIT):
                await handle.kill()
                await self._wait_end(handle, KILL_WAIT)
        finally:
            self._suspending = False
        self._suspended(reason, size, time.monotonic() - began)
        self._follow_desired()

    def _suspended(self, reason: Reason, size: int, seconds: float | None) -> None:
        self.handle = None
        self.record.vm = None
        self.record.suspension = SuspensionStatus(
            reason=reason.value,
            suspended_at=_now(),
            state_bytes=size,
            suspend_seconds=round(seconds, 3) if seconds is not None else None,
        )
        why = f"suspended ({reason.value}): {size} bytes of VM state saved on the node"
        self._condition(ConditionType.AGENT_CONNECTED, False, reason, "suspended")
        self._condition(ConditionType.PAUSED, False, reason)
        self._condition(ConditionType.SUSPENDED, True, reason, why)
        self._transition(Phase.SUSPENDED, why)

    async def _restore(self, pause_after: bool, *, woken: bool = False) -> None:
        saved = self.record.saved
        if self.handle is not None or saved is None or self.phase != Phase.SUSPENDED:
            return
        began = time.monotonic()
        why = "woken by use (an agent connection)" if woken else "lifecycle.state"
        self._transition(Phase.RESUMING, f"restoring the VM from its saved state ({why})")

        def loaded(vm: VMRecord) -> None:
            # recorded before the state file goes, so that a restart finds this QEMU
            self.record.vm = vm
            self._save()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(saved.state_file)

        try:
            async with self._boot_slot():
                incoming = Incoming(saved.spec, Path(saved.state_file), saved.ready_frame, loaded)
                handle = await self.vmm.restore(
                    incoming, self.relay_socket, ready_timeout=self.timing.ready_timeout
                )
        except BootError as exc:
            self.record.vm = None
            self.log.warning("sandbox.resume_failed", error=exc.reason)
            if has_state(saved):  # never loaded: the state is still good
                self._condition(ConditionType.AGENT_CONNECTED, False, Reason.RESUME_FAILED,
                                exc.reason)  # fmt: skip
                self._transition(Phase.SUSPENDED, f"resume failed, still suspended: {exc.reason}")
                return
            self.record.saved = None
            self._end(Phase.CRASHED, Reason.RESUME_FAILED, False, None, str(exc))
            return
        self.record.spec = saved.spec
        self._resumed(handle, time.monotonic() - began, woken=woken)
        await self._update_live(self.desired)  # rules changed meanwhile; a resolver to restart
        await self._egress_trust()  # a node agent restart meanwhile made a new egress CA
        if pause_after or (
            saved.was_paused and self.desired.spec.lifecycle.state == DesiredState.PAUSED
        ):
            await self._pause()
        self._follow_desired()

    def _resumed(self, handle: VMHandle, seconds: float | None, *, woken: bool = False) -> None:
        self._attach(handle)
        self.record.saved = None
        if self.record.suspension is not None:
            self.record.suspension = self.record.suspension.model_copy(
                update={
                    "resumed_at": _now(),
                    "resume_seconds": round(seconds, 3) if seconds is not None else None,
                    "state_bytes": 0,
                }
            )
        self._condition(ConditionType.AGENT_CONNECTED, True, Reason.AGENT_READY)
        self._condition(ConditionType.PAUSED, False, Reason.RUNNING)
        reason = Reason.WOKEN_BY_USE if woken else Reason.RESUMED
        how = "woken by use: " if woken else ""
        self._condition(
            ConditionType.SUSPENDED, False, reason, f"{how}restored from its saved state"
        )
        self._transition(Phase.RUNNING, f"{how}resumed from its saved state")

    async def _discard(self, reason: Reason) -> None:
        """Stopped with stop mode Kill while suspended: the saved state is thrown away."""
        if self.record.saved is None or self.handle is not None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.record.saved.state_file)
        self.record.saved = None
        self._condition(ConditionType.SUSPENDED, False, reason, "the saved state was discarded")
        self._end(
            Phase.STOPPED, reason, True, None, "stopped while suspended: saved state discarded"
        )

    # --- fork --------------------------------------------------------------------------------

    async def capture(self, into: Path) -> Capture:
        """This sandbox's live state for a fork, in ``into`` (``runtime.fork``): a running VM
        is paused for the save and the disk copies, then continues; a suspended one gives a
        copy of its saved state."""
        async with self._lock:
            return await self._capture(into)

    async def _capture(self, into: Path) -> Capture:
        name = self.desired.name
        saved = self.record.saved
        state = into / "fork.state"
        if self.phase == Phase.SUSPENDED and saved is not None and has_state(saved):
            refused = fork_refusal(saved.spec)
            if refused is not None:
                raise ForkError(f"Sandbox {name!r} cannot be forked: {refused}")
            began = time.monotonic()
            disks = await self._copy_disks(saved.spec, into)
            await copy_file(Path(saved.state_file), state)
            return Capture(saved.spec, state, saved.ready_frame, disks, 0.0, saved.size_bytes,
                           time.monotonic() - began)  # fmt: skip
        spec, handle = self.record.spec, self.handle
        if handle is None or self.phase not in SUSPENDABLE_PHASES:
            raise ForkError(
                f"Sandbox {name!r} is {self.phase}; it must be Running, Paused or Suspended"
            )
        refused = fork_refusal(spec)
        if refused is not None or spec is None:
            raise ForkError(f"Sandbox {name!r} cannot be forked: {refused}")
        was_paused = self.phase == Phase.PAUSED
        began = time.monotonic()
        try:
            size = await handle.save_state(state, within=state_timeout(spec.memory_mib))
            saved_at = time.monotonic()
            disks = await self._copy_disks(spec, into)
        except (SnapshotError, QMPError, OSError, ConnectionError) as exc:
            raise ForkError(f"taking the state of Sandbox {name!r} failed: {exc}") from exc
        finally:
            if not was_paused:
                with contextlib.suppress(QMPError, OSError, ConnectionError):
                    await handle.resume()
            paused = time.monotonic() - began
        self.log.info("sandbox.fork_taken", pause_seconds=round(paused, 3), state_bytes=size,
                      copy_seconds=round(paused - (saved_at - began), 3))  # fmt: skip
        return Capture(spec, state, handle.record.ready_frame, disks, paused, size,
                       time.monotonic() - saved_at)  # fmt: skip

    async def capture_disk(self, into: Path) -> ImageStatus:
        """A snapshot of this stopped sandbox: its writable layer copied into ``into``
        (``upper.ext4``), under the lock so that no start interleaves; the pinned image it
        lies over. Raises ``SnapshotRefused`` saying why not."""
        name = self.desired.name
        async with self._lock:
            if self.handle is not None or self.phase != Phase.STOPPED:
                raise SnapshotRefused(
                    f"Sandbox {name!r} is {self.phase}; a snapshot is of a Stopped sandbox"
                )
            spec, image = self.record.spec, self.record.image
            upper = (
                next((d for d in spec.drives if d.serial == UPPER_SERIAL), None) if spec else None
            )
            if upper is None or image is None:
                raise SnapshotRefused(
                    f"Sandbox {name!r} has no writable layer over an OCI image to capture (only "
                    "sandboxes of an image.oci, or of a snapshot, that have run have one)"
                )
            try:
                await copy_file(upper.path, into / SNAPSHOT_UPPER)
            except (ForkError, OSError) as exc:
                raise SnapshotRefused(
                    f"copying the writable layer of {name!r} failed: {exc}"
                ) from exc
            self.log.info("sandbox.snapshot_taken", into=str(into))
            return image

    @staticmethod
    async def _copy_disks(spec: VMSpec, into: Path) -> dict[str, Path]:
        disks: dict[str, Path] = {}
        for drive in spec.drives:
            if not drive.read_only:
                disks[drive.serial] = into / f"{drive.serial}.{drive.format}"
                await copy_file(drive.path, disks[drive.serial])
        return disks

    async def _start_fork(self, pause_after: bool) -> None:
        """The first start of a fork restores its source's state; a later one (after a stop)
        boots the fork's own machine. Either way the guest is then told its new identity."""
        self._new_run()
        try:
            if self.record.fork is None or self.record.spec is None:
                handle = await self._fork_from_source()
            else:
                handle = await self._boot_fork_again(self.record.spec)
            await self._reidentify(handle)
        except ForkError as exc:
            self._end(Phase.FAILED, Reason.FORK_FAILED, False, None, str(exc))
            return
        except BootError as exc:
            reason, why = boot_failure(exc.reason, exc.console)
            self._condition(ConditionType.AGENT_CONNECTED, False, reason, why)
            self._end(
                Phase.CRASHED, Reason.FORK_FAILED, False, None, f"{why}\n{exc.console[-1500:]}"
            )
            return
        except Exception as exc:
            self.log.exception("sandbox.fork_failed")
            self._end(Phase.FAILED, Reason.FORK_FAILED, False, None, f"fork failed: {exc}")
            return
        fork = self.record.fork
        assert fork is not None
        why = (f"forked from Sandbox {fork.source} (the source paused {fork.pause_seconds:.3f}s; "
               f"{fork.state_bytes} bytes of state)")  # fmt: skip
        await self._started(handle, pause_after, forked=why)

    async def _fork_from_source(self) -> VMHandle:
        desired = self.desired
        ref = desired.spec.image.sandbox
        assert ref is not None
        source_uid = desired.resolved.fork_of
        source = self.lookup(source_uid) if source_uid else None
        if source is None or source_uid is None:
            raise ForkError(
                f"spec.image.sandbox.name: Sandbox {ref.name!r} does not run on this node"
            )
        self._transition(Phase.BOOTING, f"forking Sandbox {ref.name}: taking its state")
        into = self.dir / "fork"
        into.mkdir(mode=0o700, parents=True, exist_ok=True)
        capture = await source.capture(into)
        self.record.image = source.record.image  # the layers it reads are its source's image
        network, nic_args = await self.preparer.fork(desired, source_uid)
        vm_dir = self.dir / "vm"
        vm_dir.mkdir(parents=True, exist_ok=True)
        initrd = vm_dir / "initrd.cpio"
        await copy_file(capture.spec.initrd, initrd)
        spec = fork_machine(capture.spec, name=self.uid, state_dir=vm_dir, initrd=initrd,
                            disks=capture.disks, nic_args=nic_args)  # fmt: skip
        self.record.fork = ForkRecord(
            source=ref.name,
            source_uid=source_uid,
            source_mac=source_mac(capture.spec),
            hostname=desired.spec.hostname or desired.name[:63].strip("-.") or "sandbox",
            network=network.model_dump(mode="json", by_alias=True) if network else None,
            pause_seconds=round(capture.pause_seconds, 3),
            state_bytes=capture.state_bytes,
        )
        self.record.spec = spec
        self._save()

        def loaded(vm: VMRecord) -> None:
            self.record.vm = vm
            self._save()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(capture.state_file)

        async with self._boot_slot():
            self._transition(Phase.BOOTING, f"forking Sandbox {ref.name}: restoring its state")
            incoming = Incoming(spec, capture.state_file, capture.ready_frame, loaded)
            return await self.vmm.restore(
                incoming, self.relay_socket, ready_timeout=self.timing.ready_timeout
            )

    async def _boot_fork_again(self, spec: VMSpec) -> VMHandle:
        fork = self.record.fork
        assert fork is not None
        await self.preparer.fork(self.desired, fork.source_uid)  # the network again
        async with self._boot_slot():
            self._transition(Phase.BOOTING, "waiting for the guest agent")
            return await self.vmm.start(
                spec, self.relay_socket, ready_timeout=self.timing.ready_timeout
            )

    async def _reidentify(self, handle: VMHandle) -> None:
        """``core.forked``: the guest takes the fork's identity before any command reaches it
        (frames are handled in order)."""
        fork = self.record.fork
        assert fork is not None
        network = bc.Network.model_validate(fork.network) if fork.network else None
        payload = forked_message(
            hostname=fork.hostname, uid=self.uid, old_mac=fork.source_mac, network=network
        )
        frame = Frame(0, 0, encode_body(MessageType.FORKED, payload)).encode()
        await handle.relay.send_to_guest(frame)

    # --- removal and shutdown --------------------------------------------------------------

    async def remove(self) -> None:
        """Kills the VM and deletes every per-sandbox file (named volumes stay)."""
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        async with self._lock:
            self.record.ending = Reason.DELETING.value
            handle = self.handle
            if handle is not None:
                await handle.kill()
                await self._wait_end(handle, KILL_WAIT)
            await self.preparer.remove(self.desired)
            self.store.delete(self.uid)
            self._run_ended.set()

    async def detach(self) -> None:
        """Node agent shutdown: stop watching, leave the VM running for the next agent."""
        self._closing = True
        for task in [*self._tasks, *self._watchers]:
            task.cancel()
        for task in [*self._tasks, *self._watchers]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.handle is not None:
            await self.handle.detach()
            self.handle = None


Hook = Callable[[Supervisor], Awaitable[None]]
