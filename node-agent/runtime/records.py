"""The per-sandbox JSON record: everything the node agent knows about a sandbox, written
atomically on every transition, so that a restarted node agent picks up where it was.

Layout under the state directory: ``sandboxes/<uid>/record.json`` next to the VM's own files
(``vm/``: QMP and agent-port sockets, console and QEMU logs, the initrd), the relay socket
``agent.sock`` that node-local clients (and the SDK's ``AgentClient.connect``) use, and, while
the sandbox is suspended, its saved VM state ``suspended.state`` (0600).
A pool VM claimed by another Sandbox stays in its own folder; ``sandboxes/<claimant uid>`` is a
symbolic link to it, so node-local clients find every sandbox's relay socket by its uid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, Field

from kubesandbox_api.conditions import Phase
from kubesandbox_api.status import Condition, ExitStatus, ImageStatus, SuspensionStatus
from kubesandbox_node.runtime.model import DesiredSandbox
from kubesandbox_node.runtime.vmm import VMRecord
from kubesandbox_node.vm.spec import VMSpec

RECORD = "record.json"
STATE_FILE = "suspended.state"


class SavedVM(BaseModel):
    """A suspended VM: the machine to start again (the exact same devices) and its state."""

    spec: VMSpec
    state_file: str
    size_bytes: int
    ready_frame: str
    """The guest's ``core.ready`` from before (the relay's last resort after a restore)."""
    was_paused: bool = False
    reason: str = "SuspendedByUser"
    """Why it sleeps: ``IdleTimeout`` (idleAction Suspend) is woken by the next use."""


class ForkRecord(BaseModel):
    """A fork's origin and identity (sent again to the guest after a later cold start)."""

    source: str
    """The source Sandbox's name."""
    source_uid: str
    source_mac: str | None = None
    hostname: str
    network: dict[str, object] | None = None
    """The fork's guest network configuration (``bootconfig.Network``), JSON."""
    pause_seconds: float = 0.0
    state_bytes: int = 0


class SandboxRecord(BaseModel):
    desired: DesiredSandbox
    phase: Phase = Phase.SCHEDULED
    conditions: list[Condition] = []
    image: ImageStatus | None = None
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    exit_status: ExitStatus | None = None
    message: str | None = None
    vm: VMRecord | None = None
    runs: int = 0
    started_generation: int | None = None
    oom_kills_at_start: int = 0
    ending: str | None = Field(default=None, description="reason of a stop we asked for")
    spec: VMSpec | None = Field(default=None, description="the machine of the current run")
    saved: SavedVM | None = None
    suspension: SuspensionStatus | None = None
    fork: ForkRecord | None = None
    claimed_by: str | None = Field(
        default=None,
        description="uid of the Sandbox a pool VM was handed to; the VM keeps its own uid "
        "(``desired.uid``) for everything on the node",
    )
    pool: str | None = None


class RecordStore:
    def __init__(self, root: Path) -> None:
        self.root = root / "sandboxes"
        self.root.mkdir(parents=True, exist_ok=True)

    def dir(self, uid: str) -> Path:
        return self.root / uid

    def save(self, uid: str, record: SandboxRecord) -> None:
        folder = self.dir(uid)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".record.")
        try:
            with os.fdopen(fd, "w") as out:
                out.write(record.model_dump_json(by_alias=True))
            os.replace(tmp, folder / RECORD)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def link(self, alias: str, uid: str) -> None:
        """``sandboxes/<alias>`` → ``sandboxes/<uid>`` (a claimed pool VM)."""
        link = self.dir(alias)
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(uid)

    def unlink(self, alias: str) -> None:
        if self.dir(alias).is_symlink():
            self.dir(alias).unlink()

    def load_all(self) -> dict[str, SandboxRecord]:
        found: dict[str, SandboxRecord] = {}
        for path in sorted(self.root.glob(f"*/{RECORD}")):
            if path.parent.is_symlink():
                continue  # a claimant's link to a pool VM's folder
            try:
                found[path.parent.name] = SandboxRecord.model_validate_json(path.read_text())
            except (OSError, ValueError):
                continue
        return found

    def delete(self, uid: str) -> None:
        if self.dir(uid).is_symlink():
            self.dir(uid).unlink()
            return
        shutil.rmtree(self.dir(uid), ignore_errors=True)
