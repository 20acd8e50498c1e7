"""A fake VMM (the fake guest agent behind a real ``SandboxRelay``) and a fake preparer."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubesandbox_api.conditions import Reason
from kubesandbox_api.status import ImageStatus, LayerPin
from kubesandbox_node.runtime.model import DesiredSandbox
from kubesandbox_node.runtime.relay import SandboxRelay
from kubesandbox_node.runtime.snapshots import SnapshotStore
from kubesandbox_node.runtime.supervisor import PrepareError
from kubesandbox_node.runtime.vmm import ExitInfo, Incoming, VMRecord
from kubesandbox_node.vm import bootconfig
from kubesandbox_node.vm.machine import BootError
from kubesandbox_node.vm.snapshot import SnapshotError
from kubesandbox_node.vm.spec import Drive, VMSpec
from tests.support.fakeguest import FakeGuest, guest_pair

DIGEST = "sha256:" + "a" * 64
_pids = itertools.count(1000)


@dataclass
class FakeHandle:
    record: VMRecord
    relay: SandboxRelay
    guest: FakeGuest
    vmm: FakeVMM
    obeys_shutdown: bool = True
    paused: bool = False
    console: str = ""
    calls: list[str] = field(default_factory=list)
    _ended: asyncio.Future[ExitInfo] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    def end(self, code: int | None, shutdown_reason: str | None = None, console: str = "") -> None:
        if not self._ended.done():
            self.vmm.alive.discard(self.record.pid)
            self._ended.set_result(ExitInfo(code, shutdown_reason, console or self.console))

    async def pause(self) -> None:
        self.calls.append("pause")
        self.paused = True

    async def resume(self) -> None:
        self.calls.append("resume")
        self.paused = False

    async def query(self, command: str) -> Any:
        return {"status": "paused" if self.paused else "running"}

    async def save_state(self, path: Path, *, within: float) -> int:
        """Writes the fake guest's "memory" (its pid) to ``path``, as QEMU would, 0600."""
        self.calls.append("save_state")
        self.paused = True
        if self.vmm.save_error is not None:
            raise self.vmm.save_error
        return _write_private(path, f"memory of vm {self.record.pid}\n".encode() * 64)

    async def request_shutdown(self) -> None:
        self.calls.append("shutdown")
        if self.obeys_shutdown:
            self.end(0, "guest-shutdown")

    async def quit(self) -> None:
        self.calls.append("quit")
        self.end(0, "host-qmp-quit")

    async def kill(self) -> None:
        self.calls.append("kill")
        self.end(137)

    async def wait_exit(self) -> ExitInfo:
        info = await asyncio.shield(self._ended)
        await self._close()
        return info

    async def detach(self) -> None:
        await self._close()

    async def _close(self) -> None:
        await self.relay.close()
        self.guest.writer.close()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def console_tail(self, limit: int = 4000) -> str:
        return self.console[-limit:]


@dataclass
class FakeVMM:
    accel: str = "tcg"
    boot_error: BootError | None = None
    restore_error: BootError | None = None
    save_error: SnapshotError | None = None
    restored_from: list[bytes] = field(default_factory=list)
    obeys_shutdown: bool = True
    boot_delay: float = 0.0
    """Seconds between the relay's start and the guest's ready frame (a slow boot)."""
    handles: list[FakeHandle] = field(default_factory=list)
    alive: set[int] = field(default_factory=set)
    specs: list[VMSpec] = field(default_factory=list)

    async def _handle(self, record: VMRecord, relay_socket: Path) -> FakeHandle:
        guest, reader, writer = await guest_pair()
        relay = SandboxRelay(relay_socket)
        await relay.start()
        tasks = [
            asyncio.create_task(guest.run()),
            asyncio.create_task(relay.serve_guest(reader, writer)),
        ]
        handle = FakeHandle(record, relay, guest, self, self.obeys_shutdown, _tasks=tasks)
        self.handles.append(handle)
        return handle

    async def start(self, spec: VMSpec, relay_socket: Path, *, ready_timeout: float) -> FakeHandle:
        self.specs.append(spec)
        if self.boot_error is not None:
            raise self.boot_error
        pid = next(_pids)
        record = VMRecord(
            pid=pid, start_ticks=1, state_dir=str(spec.state_dir), qmp_socket="q",
            agent_socket="a", console_log="c", ready_frame="",
        )  # fmt: skip
        handle = await self._handle(record, relay_socket)
        ready = await handle.relay.wait_ready()
        await asyncio.sleep(self.boot_delay)
        record.ready_frame = base64.b64encode(ready).decode()
        self.alive.add(pid)
        return handle

    async def reap_orphans(self, known: set[str]) -> int:
        return 0

    async def adopt(
        self, record: VMRecord, relay_socket: Path, *, resume: bool = False
    ) -> FakeHandle | None:
        if record.pid not in self.alive:
            return None
        return await self._handle(record, relay_socket)

    async def restore(
        self, saved: Incoming, relay_socket: Path, *, ready_timeout: float
    ) -> FakeHandle:
        spec, state_file = saved.spec, saved.state_file
        self.specs.append(spec)
        if self.restore_error is not None:
            raise self.restore_error
        self.restored_from.append(_read(state_file))
        pid = next(_pids)
        record = VMRecord(
            pid=pid, start_ticks=1, state_dir=str(spec.state_dir), qmp_socket="q",
            agent_socket="a", console_log="c", ready_frame=saved.ready_frame,
        )  # fmt: skip
        self.alive.add(pid)
        saved.before_continue(record)
        handle = await self._handle(record, relay_socket)
        await handle.relay.wait_ready()
        return handle

    @property
    def last(self) -> FakeHandle:
        return self.handles[-1]


@dataclass
class FakePreparer:
    root: Path
    image_error: PrepareError | None = None
    built: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    updated: list[int] = field(default_factory=list)
    forked: list[tuple[str, str]] = field(default_factory=list)
    rotated: list[dict[str, str]] = field(default_factory=list)
    trusted: list[str] = field(default_factory=list)
    """uids whose guest was given the egress CA."""
    claim_networks: list[tuple[str, int]] = field(default_factory=list)
    """(member uid, the claimant's secret count) per claim."""
    pins: dict[str, str] = field(default_factory=dict)
    snapshots: SnapshotStore | None = None
    """uid → the uid whose image it shares (snapshots)."""

    async def image(self, desired: DesiredSandbox) -> ImageStatus | None:
        if self.image_error is not None:
            raise self.image_error
        return ImageStatus(
            reference=desired.spec.image.oci or "", digest=DIGEST,
            layers=[LayerPin(digest=DIGEST, size=1)],
        )  # fmt: skip

    async def build(self, desired: DesiredSandbox, vm_dir: Path) -> VMSpec:
        """A machine whose writable layer is ``<root>/<uid>/upper.ext4`` (made once, as the
        real one: from the snapshot's copy for a sandbox from a snapshot)."""
        self.built.append(desired.uid)
        upper = self.root / desired.uid / "upper.ext4"
        if not upper.exists():
            upper.parent.mkdir(parents=True, exist_ok=True)
            seed = desired.resolved.snapshot_of
            if seed is not None and self.snapshots is not None:
                upper.write_bytes(self.snapshots.upper(seed).read_bytes())
            else:
                upper.write_bytes(b"fresh layer of " + desired.uid.encode())
        return VMSpec(
            name=desired.uid[:8], kernel=Path("k"), initrd=Path("i"), state_dir=vm_dir,
            drives=(Drive("upper", upper, read_only=False),),
        )  # fmt: skip

    async def claim_env(self, desired: DesiredSandbox) -> list[str]:
        return [f"{v.name}={v.value}" for v in desired.spec.env if v.value is not None]

    async def update_live(self, previous: DesiredSandbox, desired: DesiredSandbox) -> None:
        self.updated.append(desired.generation)

    async def fork(
        self, desired: DesiredSandbox, source_uid: str
    ) -> tuple[bootconfig.Network | None, list[str]]:
        self.forked.append((source_uid, desired.uid))
        return None, []

    async def remove(self, desired: DesiredSandbox) -> None:
        self.removed.append(desired.uid)

    async def egress_trust(self, desired: DesiredSandbox, relay_socket: Path) -> None:
        self.trusted.append(desired.uid)

    async def claim_network(self, member: DesiredSandbox, claimant: DesiredSandbox) -> None:
        self.claim_networks.append((member.uid, len(claimant.spec.secrets)))

    def rotate_secrets(self, desired: DesiredSandbox) -> None:
        self.rotated.append(dict(desired.resolved.secrets))

    def share_image(self, source_uid: str, uid: str) -> None:
        self.pins[uid] = source_uid

    def release_image(self, uid: str) -> None:
        self.pins.pop(uid, None)


def _write_private(path: Path, data: bytes) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return len(data)


def _read(path: Path) -> bytes:
    return path.read_bytes()


def not_found() -> PrepareError:
    return PrepareError(Reason.IMAGE_NOT_FOUND, "registry does not know busybox:nope")
