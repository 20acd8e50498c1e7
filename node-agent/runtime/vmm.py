"""Starting, adopting and steering QEMU processes: the ``VMM`` the supervisors use.

``QemuVMM.start`` puts QEMU in its own cgroup from its first instruction (``Cgroup.wrap_argv``),
in its own session, with stdin ``/dev/null``, only fds 0-2 and a scrubbed environment, so that
it neither inherits our sockets nor dies with us: a node agent killed with SIGKILL leaves its
VMs running. Everything needed to find a VM again goes into a ``VMRecord`` (pid and its start
time against pid reuse, sockets, cgroup, the guest's ``core.ready`` frame); ``QemuVMM.adopt``
checks the process is still that QEMU, reconnects QMP and the agent port and gives the relay
the recorded ready frame: nothing reboots. ``QemuVMM.restore`` starts QEMU with the same
command line plus ``-incoming defer`` and loads a state ``QemuHandle.save_state`` wrote
(``vm.snapshot``): the suspend/resume of docs/suspend.md.

A process we started is our child and ``wait`` gives its exit status; an adopted one is not,
so exits are watched with a pidfd for both, and the QMP ``SHUTDOWN`` event plus the console
tell why it ended (``crash``). The ``VMM`` and ``VMHandle`` protocols are what the
supervisor depends on; unit tests give it a fake.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog
from pydantic import BaseModel

from kubesandbox_node.runtime.cgroups import Cgroup, CgroupManager, vmm_overhead_mib
from kubesandbox_node.runtime.relay import SandboxRelay
from kubesandbox_node.vm.machine import BootError, launch, tail, until_connected
from kubesandbox_node.vm.qmp import QMPClient, QMPError
from kubesandbox_node.vm.snapshot import SnapshotError, load_state, save_state
from kubesandbox_node.vm.spec import VMSpec
from kubesandbox_node.vm.virtiofs import ShareError, start_shares, stop_shares
from kubesandbox_protocol.frame import FLAG_SHUTDOWN, Frame
from kubesandbox_protocol.messages import MessageType, decode_body, encode_body

ADOPT_ATTEMPTS = 3
ADOPT_READY_WAIT = 3.0
RECONNECT_GAP = 0.2
"""Between a host leaving the agent port and the next connect: the guest polls every 20 ms
(docs/guest-agent.md) and must see both edges."""
log = structlog.get_logger(__name__)
T = TypeVar("T")
SHARE_OVERHEAD_MIB = 16
"""Memory for each share's virtiofsd, which runs in the VM's cgroup."""


class VMRecord(BaseModel):
    """What a restarted node agent needs to find a running VM again."""

    pid: int
    start_ticks: int
    state_dir: str
    qmp_socket: str
    agent_socket: str
    console_log: str
    ready_frame: str
    """base64 of the guest's raw ``core.ready`` frame."""
    cgroup_version: int = 0
    cgroup_paths: list[str] = []
    cgroup_controllers: list[str] = []
    accel: str = "tcg"
    memory_limit_bytes: int = 0
    started_at: float = 0.0
    """Wall-clock time QEMU started (uptime survives our restarts)."""

    def cgroup(self) -> Cgroup | None:
        if not self.cgroup_paths:
            return None
        return Cgroup(
            self.cgroup_version,
            tuple(Path(p) for p in self.cgroup_paths),
            tuple(self.cgroup_controllers),
        )


@dataclass(frozen=True)
class Incoming:
    """A saved VM to restore: the machine, its state file, the guest's ready frame from
    before, and what to do once the state is in and before the vCPUs continue."""

    spec: VMSpec
    state_file: Path
    ready_frame: str
    before_continue: Callable[[VMRecord], None]


@dataclass
class ExitInfo:
    code: int | None
    """QEMU's exit status when it was our child; None for an adopted VM."""
    shutdown_reason: str | None
    """The QMP ``SHUTDOWN`` event's reason (``guest-shutdown``, ``host-qmp-quit`` ...)."""
    console: str
    oom_kills: int = 0


class VMHandle(Protocol):
    record: VMRecord
    relay: SandboxRelay

    async def pause(self) -> None: ...
    async def resume(self) -> None: ...
    async def request_shutdown(self) -> None: ...
    async def quit(self) -> None: ...
    async def kill(self) -> None: ...
    async def wait_exit(self) -> ExitInfo: ...
    async def detach(self) -> None: ...
    async def query(self, command: str) -> Any: ...
    async def save_state(self, path: Path, *, within: float) -> int: ...
    def console_tail(self, limit: int = 4000) -> str: ...


class VMM(Protocol):
    accel: str

    async def start(
        self, spec: VMSpec, relay_socket: Path, *, ready_timeout: float
    ) -> VMHandle: ...
    async def adopt(
        self, record: VMRecord, relay_socket: Path, *, resume: bool = False
    ) -> VMHandle | None: ...
    async def restore(
        self, saved: Incoming, relay_socket: Path, *, ready_timeout: float
    ) -> VMHandle: ...
    async def reap_orphans(self, known: set[str]) -> int: ...


def process_start_ticks(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat``: tells a recycled pid from the process we started."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def is_our_qemu(record: VMRecord) -> bool:
    if process_start_ticks(record.pid) != record.start_ticks:
        return False
    try:
        cmdline = Path(f"/proc/{record.pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"qemu" in cmdline and record.qmp_socket.encode() in cmdline


@dataclass
class QemuHandle:
    record: VMRecord
    relay: SandboxRelay
    qmp: QMPClient
    process: asyncio.subprocess.Process | None = None
    shutdown_reason: str | None = None
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _exited: asyncio.Future[None] | None = None
    _pidfd: int = -1

    def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        self._exited = loop.create_future()
        try:
            self._pidfd = os.pidfd_open(self.record.pid)
        except ProcessLookupError:
            self._exited.set_result(None)
            return

        def readable() -> None:
            loop.remove_reader(self._pidfd)
            assert self._exited is not None
            if not self._exited.done():
                self._exited.set_result(None)

        loop.add_reader(self._pidfd, readable)
        self._tasks.append(
            asyncio.create_task(self._events(), name=f"qmp-events-{self.record.pid}")
        )

    async def _events(self) -> None:
        while True:
            event = await self.qmp.events.get()
            if event.get("event") == "SHUTDOWN":
                self.shutdown_reason = str(event.get("data", {}).get("reason", ""))
            elif event.get("event") == "GUEST_PANICKED":
                self.shutdown_reason = "guest-panicked"

    async def pause(self) -> None:
        await self.qmp.execute("stop")

    async def resume(self) -> None:
        await self.qmp.execute("cont")

    async def query(self, command: str) -> Any:
        return await self.qmp.execute(command)

    async def save_state(self, path: Path, *, within: float) -> int:
        """Pauses the VM and saves its memory and device state to ``path`` (``snapshot``);
        QEMU stays, paused, until the caller quits it (or continues it after a failure)."""
        try:
            size: int = await save_state(self.qmp, path, within=within)
        except SnapshotError as exc:  # QEMU says why on its own output
            said = tail(Path(self.record.state_dir) / "qemu.log", 600).strip()
            raise SnapshotError(f"{exc} {said}".strip()) from exc
        return size

    async def request_shutdown(self) -> None:
        """``core.shutdown``: the guest agent syncs, ends its processes and powers off."""
        frame = Frame(0, FLAG_SHUTDOWN, encode_body(MessageType.SHUTDOWN, {})).encode()
        with contextlib.suppress(ConnectionError, OSError):
            await self.relay.send_to_guest(frame)

    async def quit(self) -> None:
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            await self.qmp.execute("quit")

    async def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self._pidfd >= 0:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            else:
                os.kill(self.record.pid, signal.SIGKILL)
        await self.wait_exit()

    async def wait_exit(self) -> ExitInfo:
        assert self._exited is not None
        await asyncio.shield(self._exited)
        code: int | None = None
        if self.process is not None:
            code = await self.process.wait()
        await asyncio.sleep(0)  # let a queued SHUTDOWN event be read
        await self._close_channels()
        group = self.record.cgroup()
        return ExitInfo(
            code=code,
            shutdown_reason=self.shutdown_reason,
            console=self.console_tail(),
            oom_kills=group.usage().oom_kills if group is not None else 0,
        )

    async def detach(self) -> None:
        """Lets go of the VM without stopping it (node agent shutdown)."""
        await self._close_channels()

    async def _close_channels(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self.relay.close()
        await self.qmp.close()
        if self._pidfd >= 0:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1

    def console_tail(self, limit: int = 4000) -> str:
        return tail(Path(self.record.console_log), limit)


@dataclass
class QemuVMM:
    """Real QEMU. ``cgroups=None`` runs VMs without a cgroup (unprivileged development)."""

    accel: str = "tcg"
    cgroups: CgroupManager | None = field(default_factory=CgroupManager)
    wrap: Callable[[str, list[str]], list[str]] | None = None
    """Runs QEMU inside something (the sandbox's network namespace), given the VM's name."""
    run_as: str | None = None
    """User (or ``uid:gid``) QEMU switches to once its devices, files and sockets are open
    (``-runas``): the guest-facing process then holds no root privileges."""

    async def start(self, spec: VMSpec, relay_socket: Path, *, ready_timeout: float) -> QemuHandle:
        process, group, daemons, record = await self._launch(spec)
        return await self._boot(
            spec, relay_socket, process, group, daemons, record, ready_timeout=ready_timeout
        )

    async def _launch(
        self, spec: VMSpec, extra: tuple[str, ...] = ()
    ) -> tuple[
        asyncio.subprocess.Process, Cgroup | None, list[asyncio.subprocess.Process], VMRecord
    ]:
        """QEMU for ``spec`` (plus ``extra`` arguments) in its cgroup, jailed, with its shares."""
        group: Cgroup | None = None
        argv = spec.argv() + list(extra)
        if self.run_as is not None:
            argv += ["-runas", self.run_as]
        if self.wrap is not None:
            argv = self.wrap(spec.name, argv)
        overhead = vmm_overhead_mib(spec.accel, spec.tcg_tb_size_mib)
        limit = (spec.memory_mib + overhead + SHARE_OVERHEAD_MIB * len(spec.shares)) << 20
        if self.cgroups is not None:
            group = await asyncio.to_thread(
                self.cgroups.create, f"vm-{spec.name}", spec.cpus + 0.2, limit
            )
            argv = group.wrap_argv(argv)
        daemons: list[asyncio.subprocess.Process] = []
        try:
            daemons = await start_shares(spec, wrap=group.wrap_argv if group else None)
            process = await launch(spec, argv)
        except BaseException as exc:
            await stop_shares(daemons)
            if group is not None:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(group.remove)
            if isinstance(exc, ShareError):
                raise BootError(str(exc), "", "") from exc
            raise
        started = time.time()
        record = VMRecord(
            pid=process.pid,
            start_ticks=process_start_ticks(process.pid) or 0,
            state_dir=str(spec.state_dir),
            qmp_socket=str(spec.qmp_socket),
            agent_socket=str(spec.agent_socket),
            console_log=str(spec.console_log),
            ready_frame="",
            cgroup_version=group.version if group else 0,
            cgroup_paths=[str(p) for p in group.paths] if group else [],
            cgroup_controllers=list(group.controllers) if group else [],
            accel=spec.accel,
            memory_limit_bytes=limit,
            started_at=started,
        )
        return process, group, daemons, record

    async def _boot(
        self,
        spec: VMSpec,
        relay_socket: Path,
        process: asyncio.subprocess.Process,
        group: Cgroup | None,
        daemons: list[asyncio.subprocess.Process],
        record: VMRecord,
        *,
        ready_timeout: float,
    ) -> QemuHandle:
        started = record.started_at
        exited = asyncio.ensure_future(process.wait())
        alive: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        exited.add_done_callback(lambda _: _settle(alive))
        relay = SandboxRelay(relay_socket)
        qmp: QMPClient | None = None
        relay_task: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(ready_timeout):
                qmp = await until_connected(
                    lambda: QMPClient.connect(spec.qmp_socket), alive.done, "QMP"
                )
                reader, writer = await until_connected(
                    lambda: _open(spec.agent_socket), alive.done, "agent"
                )
                await relay.start()
                relay_task = asyncio.create_task(relay.serve_guest(reader, writer))
                ready = asyncio.ensure_future(relay.wait_ready())
                done, _ = await asyncio.wait({exited, ready}, return_when=asyncio.FIRST_COMPLETED)
                if ready not in done or ready.exception() is not None:
                    ready.cancel()
                    raise BootError(
                        f"QEMU exited with status {process.returncode} before the agent was ready",
                        tail(spec.console_log),
                        tail(spec.qemu_log, 2000),
                    )
                raw_ready = ready.result()
        except BaseException as exc:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            await process.wait()
            await stop_shares(daemons)
            await relay.close()
            if relay_task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await relay_task
            if qmp is not None:
                await qmp.close()
            if group is not None:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(group.remove)
            if isinstance(exc, TimeoutError):
                raise BootError(
                    f"guest agent not ready after {ready_timeout:.0f}s; VM killed",
                    tail(spec.console_log),
                    tail(spec.qemu_log, 2000),
                ) from None
            if isinstance(exc, (ConnectionError, OSError)):
                raise BootError(
                    f"boot failed: {exc}", tail(spec.console_log), tail(spec.qemu_log, 2000)
                ) from exc
            raise
        exited.cancel()
        assert qmp is not None
        record.ready_frame = base64.b64encode(raw_ready).decode()
        handle = QemuHandle(record, relay, qmp, process=process)
        handle._tasks.append(relay_task)
        handle._watch()
        log.info("vm.ready", pid=process.pid, seconds=round(time.time() - started, 3))
        return handle

    async def reap_orphans(self, known: set[str]) -> int:
        """Kills VMs in our cgroups that no record names (``known``: VM names) and removes
        their cgroups; returns how many there were."""
        if self.cgroups is None:
            return 0
        orphans = await asyncio.to_thread(self.cgroups.orphans, {f"vm-{n}" for n in known})
        for group in orphans:
            for pid in group.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    log.warning("vm.orphan_killed", pid=pid, cgroup=str(group.paths[0]))
            with contextlib.suppress(OSError):
                await asyncio.to_thread(group.remove)
        return len(orphans)

    async def adopt(
        self, record: VMRecord, relay_socket: Path, *, resume: bool = False
    ) -> QemuHandle | None:
        """Re-attaches to a running QEMU; ``resume`` first continues its vCPUs (a restore the
        previous node agent did not finish)."""
        if not is_our_qemu(record):
            return None
        alive: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(10):
                qmp = await until_connected(
                    lambda: QMPClient.connect(Path(record.qmp_socket)), alive.done, "QMP"
                )
            if resume:
                await qmp.execute("cont")
                await asyncio.sleep(RECONNECT_GAP)
            relay, relay_task, attempts = await _relay_with_ready(
                Path(record.agent_socket), relay_socket, base64.b64decode(record.ready_frame)
            )
        except (TimeoutError, ConnectionError, OSError, QMPError) as exc:
            log.warning("vm.adopt_failed", pid=record.pid, error=str(exc))
            if "qmp" in locals():
                await qmp.close()
            return None
        handle = QemuHandle(record, relay, qmp)
        handle._tasks.append(relay_task)
        handle._watch()
        log.info("vm.adopted", pid=record.pid, attempts=attempts)
        return handle

    async def restore(
        self, saved: Incoming, relay_socket: Path, *, ready_timeout: float
    ) -> QemuHandle:
        """QEMU with the saved spec's exact command line plus ``-incoming defer``, fed the
        state file; ``before_continue(record)`` runs once the state is loaded and before
        the vCPUs continue (from then on the state file is stale: the disks move on). The
        guest agent sees its host leave and come back and sends ``core.ready`` again."""
        spec, ready_frame = saved.spec, saved.ready_frame
        process, group, daemons, record = await self._launch(spec, ("-incoming", "defer"))
        record.ready_frame = ready_frame
        exited = asyncio.ensure_future(process.wait())
        qmp: QMPClient | None = None
        try:
            async with asyncio.timeout(ready_timeout):
                qmp = await until_connected(
                    lambda: QMPClient.connect(spec.qmp_socket), exited.done, "QMP"
                )
                loaded = await load_state(qmp, saved.state_file, within=ready_timeout)
                saved.before_continue(record)
                await qmp.execute("cont")
                # the guest must see the old host's disconnect before our connect (both edges)
                await asyncio.sleep(RECONNECT_GAP)
                relay, relay_task, attempts = await _relay_with_ready(
                    spec.agent_socket, relay_socket, base64.b64decode(ready_frame)
                )
        except BaseException as exc:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            await process.wait()
            await stop_shares(daemons)
            if qmp is not None:
                await qmp.close()
            if group is not None:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(group.remove)
            if isinstance(exc, (TimeoutError, ConnectionError, OSError, QMPError, SnapshotError)):
                why = str(exc) or f"not restored within {ready_timeout:.0f}s"
                raise BootError(
                    f"restore failed: {why}", tail(spec.console_log), tail(spec.qemu_log, 2000)
                ) from exc
            raise
        exited.cancel()
        handle = QemuHandle(record, relay, qmp, process=process)
        handle._tasks.append(relay_task)
        handle._watch()
        log.info("vm.restored", pid=process.pid, load_seconds=round(loaded, 3), attempts=attempts,
                 seconds=round(time.time() - record.started_at, 3))  # fmt: skip
        return handle


async def _relay_with_ready(
    agent_socket: Path, relay_socket: Path, recorded_ready: bytes
) -> tuple[SandboxRelay, asyncio.Task[None], int]:
    """A relay on a guest that booted long ago (re-adoption, restore): the guest sends
    ``core.ready`` when it sees a host connect; if it does not within a few seconds, close,
    let it see the disconnect, and connect again; the last resort is the recorded frame."""
    for attempt in range(ADOPT_ATTEMPTS):
        reader, writer = await _open(agent_socket)
        relay = SandboxRelay(relay_socket, adopting=True)
        await relay.start()
        relay_task = asyncio.create_task(relay.serve_guest(reader, writer))
        last = attempt == ADOPT_ATTEMPTS - 1
        try:
            async with asyncio.timeout(ADOPT_READY_WAIT):
                await relay.wait_ready()
            return relay, relay_task, attempt + 1
        except TimeoutError:
            if last:
                # the guest never noticed us: serve its recorded ready frame
                relay.assume_ready(recorded_ready)
                return relay, relay_task, attempt + 1
        except ConnectionError:
            if last:
                await relay.close()
                raise
        await relay.close()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await relay_task
        await asyncio.sleep(RECONNECT_GAP)  # let the guest see the disconnect edge
    raise AssertionError("unreachable")


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _open(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_unix_connection(str(path), limit=1 << 22)


def ready_payload(record: VMRecord) -> dict[str, Any]:
    raw = base64.b64decode(record.ready_frame)
    return decode_body(raw[9:]).payload
