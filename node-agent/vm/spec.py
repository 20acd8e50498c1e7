"""What a microVM is made of, and the QEMU command line that runs it.

``VMSpec`` is plain data (a frozen dataclass) so that the node agent can persist it, diff it
and rebuild the exact argv when it re-adopts a VM. ``argv()`` is a pure function of it.

The machine is QEMU's ``microvm``: no PCI, no firmware tables beyond ACPI, virtio-mmio
devices only, which boots a stock distribution kernel in about a second under TCG.
Choices, all on purpose:

- ``-nodefaults -no-user-config -nographic``: no device, config file or display we did not ask
  for; ``-no-reboot`` + ``panic=-1`` so a guest reboot or panic ends the QEMU process.
- Console: the ISA serial port (``ttyS0``, available before any module loads) into a socket
  chardev that also logs to ``console.log``; the watchdog quotes the log's tail on failure.
- Control: QMP on a unix socket. Agent channel: ``virtio-serial-device`` with one
  ``virtserialport`` named ``agent`` on a unix socket chardev (the relay connects to it).
  Both sockets are QEMU-side servers, so a restarted node agent can connect again.
- Disks: ``virtio-blk-device`` with ``serial=`` (the guest finds them by serial, never by
  probe order); writable ones with ``auto-read-only=off`` so that saving the VM's state
  (suspend) never reopens them by path.
- Host directories: virtio-fs (``vhost-user-fs-device`` with a mount tag, served by one
  ``virtiofsd`` per share, :mod:`.virtiofs`); vhost-user needs the guest RAM in shared
  memory, so a VM with shares gets a ``memory-backend-memfd,share=on``, and modern (non-legacy)
  virtio-mmio, which libvhost-user requires. (Not 9p: Debian's cloud kernel is built without
  it.)
- Under TCG, ``tsc_early_khz=<host TSC kHz>``: microvm has no HPET/PM timer to fall back on
  when TSC calibration against the PIT fails, which hung about 1 boot in 7 without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Accel = Literal["kvm", "tcg"]
VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
"""QEMU's own virtio-fs daemon (Debian package ``qemu-system-common``)."""


@dataclass(frozen=True)
class Drive:
    serial: str
    path: Path
    read_only: bool = True
    format: Literal["raw", "qcow2"] = "raw"


@dataclass(frozen=True)
class Share:
    """A host directory exported over virtio-fs with ``tag`` (see :mod:`.virtiofs`)."""

    tag: str
    path: Path
    read_only: bool = True


@dataclass(frozen=True)
class VMSpec:
    name: str
    kernel: Path
    initrd: Path
    state_dir: Path
    cpus: int = 1
    memory_mib: int = 512
    accel: Accel = "tcg"
    tsc_khz: int | None = None
    drives: tuple[Drive, ...] = ()
    shares: tuple[Share, ...] = ()
    kernel_args: tuple[str, ...] = ()
    quiet: bool = True
    tcg_tb_size_mib: int = 64
    qemu: str = "qemu-system-x86_64"
    virtiofsd: str = VIRTIOFSD
    extra_args: tuple[str, ...] = field(default=())

    @property
    def qmp_socket(self) -> Path:
        return self.state_dir / "qmp.sock"

    @property
    def agent_socket(self) -> Path:
        """QEMU's end of the agent port; the relay connects here."""
        return self.state_dir / "agent-port.sock"

    @property
    def console_socket(self) -> Path:
        return self.state_dir / "console.sock"

    def share_socket(self, share: Share) -> Path:
        """The vhost-user socket of ``share``'s virtiofsd (QEMU connects to it)."""
        return self.state_dir / f"fs-{share.tag}.sock"

    @property
    def console_log(self) -> Path:
        return self.state_dir / "console.log"

    @property
    def qemu_log(self) -> Path:
        return self.state_dir / "qemu.log"

    def kernel_cmdline(self) -> str:
        args = ["console=ttyS0", "reboot=t", "panic=-1", "rdinit=/init", "pci=off"]
        if self.quiet:
            args.append("quiet")
        if self.accel == "tcg" and self.tsc_khz:
            args.append(f"tsc_early_khz={self.tsc_khz}")
        args.extend(self.kernel_args)
        return " ".join(args)

    def argv(self) -> list[str]:
        accel = "kvm" if self.accel == "kvm" else f"tcg,tb-size={self.tcg_tb_size_mib}"
        machine = "microvm,x-option-roms=off,isa-serial=on,rtc=on"
        memory: list[str] = []
        if self.shares:
            machine += ",memory-backend=ram"
            memory = [
                "-object", f"memory-backend-memfd,id=ram,size={self.memory_mib}M,share=on",
                # vhost-user (libvhost-user) refuses legacy virtio, microvm's mmio default
                "-global", "virtio-mmio.force-legacy=false",
            ]  # fmt: skip
        argv = [
            self.qemu,
            "-name", self.name,
            "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-machine", machine,
            *memory,
            "-accel", accel,
            "-cpu", "host" if self.accel == "kvm" else "max",
            "-smp", str(self.cpus),
            "-m", f"{self.memory_mib}M",
            "-kernel", str(self.kernel),
            "-initrd", str(self.initrd),
            "-append", self.kernel_cmdline(),
            "-chardev", _socket_chardev("console", self.console_socket, log=self.console_log),
            "-serial", "chardev:console",
            "-chardev", _socket_chardev("qmp", self.qmp_socket),
            "-mon", "chardev=qmp,mode=control",
            "-device", "virtio-serial-device,max_ports=2",
            "-chardev", _socket_chardev("agent", self.agent_socket),
            "-device", "virtserialport,chardev=agent,name=agent",
        ]  # fmt: skip
        for i, drive in enumerate(self.drives):
            # auto-read-only=off: QEMU keeps the writable fd when a migration inactivates the
            # disk, instead of reopening the path read-only, which QEMU (by then -runas)
            # may not open (suspend, vm.snapshot)
            mode = "readonly=on" if drive.read_only else "discard=unmap,auto-read-only=off"
            argv += [
                "-drive",
                f"id=disk{i},file={_escape(drive.path)},format={drive.format},if=none,{mode}",
                "-device", f"virtio-blk-device,drive=disk{i},serial={drive.serial}",
            ]  # fmt: skip
        for i, share in enumerate(self.shares):
            argv += [
                "-chardev", f"socket,id=fs{i},path={_escape(self.share_socket(share))}",
                "-device", f"vhost-user-fs-device,chardev=fs{i},tag={share.tag}",
            ]  # fmt: skip
        argv += list(self.extra_args)
        return argv


def _escape(path: Path) -> str:
    """QEMU option values escape commas by doubling them."""
    return str(path).replace(",", ",,")


def _socket_chardev(id: str, path: Path, *, log: Path | None = None) -> str:
    spec = f"socket,id={id},path={_escape(path)},server=on,wait=off"
    if log is not None:
        spec += f",logfile={_escape(log)},logappend=on"
    return spec
