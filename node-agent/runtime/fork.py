"""Forking a sandbox (``spec.image.sandbox``): the source's live state as a new machine.

The source's supervisor takes a ``Capture`` (``Supervisor.capture``): its VM's memory and
device state, saved the way a suspend saves it (vCPUs stopped, QEMU migration into a file the
node agent opened, ``vm.snapshot``), and a copy of each writable disk taken while the vCPUs
are stopped and the disks flushed, after which the source continues: the source's pause is
the save plus the copies. A suspended source has its state on disk already: it is copied and
the source stays suspended.

The fork's machine (``fork_machine``) is the source's ``VMSpec`` (the migration needs the
same devices) with the fork's own name, directory, initrd copy, writable disks and network
device (its own namespace and tap, and a new MAC). QEMU restores the state into it; then the
guest agent is told ``core.forked`` (``forked_message``): new hostname, machine-id, entropy,
clock, and the NIC with the new MAC and its configuration applied again.

Copies are made with ``cp --reflink=auto --sparse=always``: a reflink (copy-on-write, constant
time) where the filesystem can, otherwise a sparse copy of the written blocks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubesandbox_node.vm import bootconfig as bc
from kubesandbox_node.vm.spec import VMSpec

ROOT_SERIALS = frozenset({"upper", "root"})
"""Serials of the writable root disk (OCI upper layer, disk-image overlay)."""
SEED_BYTES = 64


class ForkError(Exception):
    """The fork cannot be made; the message says why."""


@dataclass(frozen=True)
class Capture:
    """The source's state for one fork: files in the fork's directory, owned by the fork."""

    spec: VMSpec
    """The source's machine."""
    state_file: Path
    ready_frame: str
    disks: dict[str, Path]
    """Serial of each writable disk → its copy."""
    pause_seconds: float
    """How long the source's vCPUs were stopped (0 for a suspended source)."""
    state_bytes: int
    copy_seconds: float


def fork_refusal(spec: VMSpec | None) -> str | None:
    """Why this machine cannot be forked, or None."""
    if spec is None:
        return "the source's machine is not recorded (it runs from before forks existed)"
    if spec.shares:
        return (
            "it has host directories (bind roots, bind volumes: virtio-fs), whose state QEMU "
            "cannot save"
        )
    shared = [d.serial for d in spec.drives if not d.read_only and d.serial not in ROOT_SERIALS]
    if shared:
        return (
            f"it has writable volumes ({', '.join(shared)}), which two VMs cannot share; "
            "fork a sandbox whose volumes are tmpfs or read-only"
        )
    return None


def fork_machine(
    source: VMSpec,
    *,
    name: str,
    state_dir: Path,
    initrd: Path,
    disks: dict[str, Path],
    nic_args: list[str],
) -> VMSpec:
    """The source's machine for the fork: same devices, the fork's files and network."""
    missing = {d.serial for d in source.drives if not d.read_only} - disks.keys()
    if missing:
        raise ForkError(f"no copy of the writable disk(s) {sorted(missing)}")
    drives = tuple(
        dataclasses.replace(d, path=disks[d.serial]) if not d.read_only else d
        for d in source.drives
    )
    return dataclasses.replace(
        source,
        name=name,
        state_dir=state_dir,
        initrd=initrd,
        drives=drives,
        extra_args=tuple(nic_args),
    )


def source_mac(spec: VMSpec) -> str | None:
    """The MAC of the source's NIC, from its ``-device virtio-net-device,...,mac=`` option."""
    for arg in spec.extra_args:
        if arg.startswith("virtio-net-device,"):
            for part in arg.split(","):
                if part.startswith("mac="):
                    return part[4:]
    return None


def forked_message(
    *, hostname: str, uid: str, old_mac: str | None, network: bc.Network | None
) -> dict[str, Any]:
    """The ``core.forked`` payload: the fork's identity. The machine-id is the fork's UID
    (32 hex digits, unique per Sandbox); the seed is fresh for every message."""
    interfaces = []
    if network is not None:
        for iface in network.interfaces:
            interfaces.append(
                {
                    "old_mac": old_mac or iface.mac,
                    "mac": iface.mac,
                    "addresses": list(iface.addresses),
                    **({"gateway": iface.gateway} if iface.gateway else {}),
                }
            )
    return {
        "hostname": hostname,
        "machine_id": uid.replace("-", "").lower()[:32].ljust(32, "0"),
        "seed": secrets.token_bytes(SEED_BYTES),
        "unix_time_nanos": time.time_ns(),
        "interfaces": interfaces,
    }


async def copy_file(source: Path, target: Path) -> None:
    """A copy-on-write (reflink) or sparse copy of ``source``, mode 0600."""
    process = await asyncio.create_subprocess_exec(
        "cp", "--reflink=auto", "--sparse=always", "--", str(source), str(target),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await process.communicate()
    if process.returncode != 0:
        raise ForkError(f"copying {source.name} failed: {err.decode(errors='replace').strip()}")
    os.chmod(target, 0o600)
