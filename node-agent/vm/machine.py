"""Starting a microVM and watching it boot: ``boot(spec, relay_socket)`` → ``VirtualMachine``.

QEMU starts detached from us (own session, stdin ``/dev/null``, only fds 0-2, a scrubbed
environment) so that it neither stalls on a terminal nor inherits our sockets. We then connect
to its QMP and agent sockets, hand the agent channel to a ``Relay`` and wait for the guest
agent's ``core.ready`` (the boot watchdog): if it does not come within ``ready_timeout`` (or
QEMU exits first) the VM is killed and ``BootError`` carries the console tail, which is where the
guest explains itself.

The node agent's runtime builds on this: cgroup placement, lifecycle and re-adoption wrap
``VirtualMachine`` rather than changing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog

from kubesandbox_node.relay import Relay, RelayClosedError
from kubesandbox_node.vm.process import spawn
from kubesandbox_node.vm.qmp import QMPClient
from kubesandbox_node.vm.spec import VMSpec
from kubesandbox_node.vm.virtiofs import ShareError, start_shares, stop_shares
from kubesandbox_protocol.messages import decode_body

CONSOLE_TAIL = 4000
READY_FILE = "agent-ready.frame"

log = structlog.get_logger(__name__)
T = TypeVar("T")


class BootError(RuntimeError):
    """The VM did not become ready; ``console`` holds the guest's last words."""

    def __init__(self, message: str, console: str, qemu_log: str = "") -> None:
        detail = f"{message}\n--- console tail ---\n{console}"
        if qemu_log.strip():
            detail += f"\n--- qemu ---\n{qemu_log}"
        super().__init__(detail)
        self.reason = message
        self.console = console
        self.qemu_log = qemu_log


def tail(path: Path, limit: int = CONSOLE_TAIL) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


@dataclass
class VirtualMachine:
    spec: VMSpec
    process: asyncio.subprocess.Process
    qmp: QMPClient
    relay: Relay
    ready: dict[str, Any] = field(default_factory=dict)
    started_at: float = 0.0
    ready_at: float = 0.0
    _relay_task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def boot_seconds(self) -> float:
        return self.ready_at - self.started_at

    def console(self, limit: int = CONSOLE_TAIL) -> str:
        return tail(self.spec.console_log, limit)

    async def wait(self) -> int:
        return await self.process.wait()

    async def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGKILL)
            await self.process.wait()
        await self._cleanup()

    async def stop(self, grace: float = 10.0) -> int:
        """Asks QEMU to quit (it flushes guest disk caches); kills it after ``grace`` s."""
        if self.process.returncode is None:
            with contextlib.suppress(OSError, ConnectionError, RuntimeError):
                async with asyncio.timeout(grace):
                    await self.qmp.execute("quit")
            try:
                async with asyncio.timeout(grace):
                    await self.process.wait()
            except TimeoutError:
                await self.kill()
        await self._cleanup()
        rc = self.process.returncode
        assert rc is not None
        return rc

    async def reattach_relay(self, ready_timeout: float = 30.0, **relay_options: Any) -> Relay:
        """Replaces the relay with a fresh one on the same agent port and socket path.

        What a restarted node agent does for a VM it re-adopts: the agent announces itself
        again when a new host connects, and the new relay ends the sessions of the old one.
        """
        await self.relay.close()
        if self._relay_task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._relay_task
        reader, writer = await asyncio.open_unix_connection(
            str(self.spec.agent_socket), limit=1 << 22
        )
        # orphans of the old relay may hold ids of any slot until the guest has reaped them:
        # start handing out slots where the old relay would have continued
        relay_options.setdefault("first_slot", self.relay.next_slot)
        relay = Relay(self.relay.socket_path, **relay_options)
        await relay.start()
        self.relay = relay
        known = (self.spec.state_dir / READY_FILE).read_bytes()
        self._relay_task = asyncio.create_task(relay.serve_guest(reader, writer, known_ready=known))
        async with asyncio.timeout(ready_timeout):
            await relay.wait_ready()
        return relay

    async def _cleanup(self) -> None:
        await self.relay.close()
        if self._relay_task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._relay_task
        await self.qmp.close()


async def launch(spec: VMSpec, argv: list[str] | None = None) -> asyncio.subprocess.Process:
    """Starts QEMU for ``spec`` (or the given ``argv``, the spec's wrapped in a cgroup or
    namespace): stale sockets removed, own session, no inherited fds, a scrubbed environment,
    QEMU's own output to ``qemu.log``."""
    spec.state_dir.mkdir(parents=True, exist_ok=True)
    for stale in (spec.qmp_socket, spec.agent_socket, spec.console_socket, spec.console_log):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    return await spawn(argv if argv is not None else spec.argv(), spec.qemu_log)


async def until_connected(
    connect: Callable[[], Awaitable[T]], exited: Callable[[], bool], what: str
) -> T:
    """Connects once QEMU has created the socket; gives up once ``exited()`` says QEMU is gone."""
    delay = 0.002
    while True:
        try:
            return await connect()
        except (FileNotFoundError, ConnectionRefusedError):
            if exited():
                raise ConnectionError(f"QEMU exited before opening its {what} socket") from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)


async def boot(
    spec: VMSpec,
    relay_socket: Path,
    *,
    ready_timeout: float = 60.0,
    relay_options: dict[str, Any] | None = None,
) -> VirtualMachine:
    """Starts the VM and returns once the guest agent said ``core.ready``."""
    blog = log.bind(vm=spec.name, accel=spec.accel)
    started = time.monotonic()
    spec.state_dir.mkdir(parents=True, exist_ok=True)
    try:
        daemons = await start_shares(spec)
    except ShareError as exc:
        raise BootError(str(exc), "", "") from exc
    try:
        process = await launch(spec)
    except BaseException:
        await stop_shares(daemons)
        raise

    def gone() -> bool:
        return process.returncode is not None

    qmp: QMPClient | None = None
    relay: Relay | None = None
    relay_task: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(ready_timeout):
            qmp = await until_connected(lambda: QMPClient.connect(spec.qmp_socket), gone, "QMP")
            reader, writer = await until_connected(
                lambda: asyncio.open_unix_connection(str(spec.agent_socket), limit=1 << 22),
                gone,
                "agent",
            )
            relay = Relay(relay_socket, **(relay_options or {}))
            await relay.start()
            relay_task = asyncio.create_task(relay.serve_guest(reader, writer))
            exited = asyncio.create_task(process.wait())
            ready = asyncio.ensure_future(relay.wait_ready())
            try:
                done, _ = await asyncio.wait({exited, ready}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in (exited, ready):
                    waiter.cancel()
                await asyncio.gather(exited, ready, return_exceptions=True)
            if ready not in done or ready.exception() is not None:
                raise BootError(
                    f"QEMU exited with status {process.returncode} before the agent was ready",
                    tail(spec.console_log),
                    tail(spec.qemu_log, 2000),
                )
            raw_ready = ready.result()
    except TimeoutError:
        await _abort(process, qmp, relay, relay_task)
        await stop_shares(daemons)
        blog.warning("vm.boot_timeout", timeout=ready_timeout)
        raise BootError(
            f"guest agent not ready after {ready_timeout:.0f}s; VM killed",
            tail(spec.console_log),
            tail(spec.qemu_log, 2000),
        ) from None
    except (BootError, ConnectionError, RelayClosedError, OSError) as exc:
        if not isinstance(exc, BootError):
            # a broken socket during startup is usually QEMU dying: say so when it is
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await process.wait()
        await _abort(process, qmp, relay, relay_task)
        await stop_shares(daemons)
        if isinstance(exc, BootError):
            raise
        reason = f"boot failed: {exc}"
        if process.returncode is not None and process.returncode >= 0:
            reason = f"QEMU exited with status {process.returncode} during startup ({exc})"
        raise BootError(reason, tail(spec.console_log), tail(spec.qemu_log, 2000)) from exc
    assert qmp is not None
    assert relay is not None
    vm = VirtualMachine(spec, process, qmp, relay, _relay_task=relay_task)
    vm.started_at, vm.ready_at = started, time.monotonic()
    vm.ready = decode_body(raw_ready[9:]).payload
    (spec.state_dir / READY_FILE).write_bytes(raw_ready)  # for re-adoption by a new relay
    blog.info("vm.ready", seconds=round(vm.boot_seconds, 3), pid=process.pid)
    return vm


async def _abort(
    process: asyncio.subprocess.Process,
    qmp: QMPClient | None,
    relay: Relay | None,
    relay_task: asyncio.Task[None] | None,
) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    await process.wait()
    if relay is not None:
        await relay.close()
    if relay_task is not None:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await relay_task
    if qmp is not None:
        await qmp.close()
