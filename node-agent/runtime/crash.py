"""Why a VM ended, from what the host can see: QMP's ``SHUTDOWN`` reason, the guest console
and the cgroup's OOM-kill counter. Pure, so every case is unit-tested.

The kernel runs with ``panic=-1`` and QEMU with ``-no-reboot``, so a guest panic becomes a
reset request and QEMU exits (``guest-reset``); the console says ``Kernel panic``. A guest
out-of-memory panic (init killed) also prints ``Out of memory``; a host OOM kill of QEMU
shows in the cgroup's ``oom_kill`` count and as SIGKILL.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubesandbox_api.conditions import Phase, Reason
from kubesandbox_node.runtime.vmm import ExitInfo

PANIC_MARKERS = ("Kernel panic", "kernel BUG at", "Attempted to kill init")
OOM_MARKERS = (
    "Out of memory",
    "oom-kill",
    "Memory cgroup out of memory",
    "System is deadlocked on memory",  # the kernel itself ran out, with nothing to kill
)


@dataclass(frozen=True)
class Ending:
    phase: Phase
    reason: Reason
    success: bool
    code: int | None
    message: str


def classify(info: ExitInfo, oom_kills_before: int = 0) -> Ending:
    console = info.console
    panicked = any(marker in console for marker in PANIC_MARKERS)
    oom_in_guest = any(marker in console for marker in OOM_MARKERS)
    code = info.code
    if info.oom_kills > oom_kills_before:
        return Ending(
            Phase.CRASHED, Reason.OUT_OF_MEMORY, False, code,
            "the VM exceeded its memory limit on the host and was killed",
        )  # fmt: skip
    if panicked and oom_in_guest:
        return Ending(
            Phase.CRASHED, Reason.OUT_OF_MEMORY, False, code,
            "the guest ran out of memory: " + _last_line(console, OOM_MARKERS),
        )  # fmt: skip
    if panicked or info.shutdown_reason == "guest-panicked":
        return Ending(
            Phase.CRASHED, Reason.GUEST_PANIC, False, code,
            "the guest kernel panicked: " + _last_line(console, PANIC_MARKERS),
        )  # fmt: skip
    if info.shutdown_reason == "guest-shutdown":
        return Ending(Phase.STOPPED, Reason.GUEST_POWER_OFF, True, code, "the guest powered off")
    detail = f"with status {code}" if code is not None else "unexpectedly"
    if info.shutdown_reason:
        detail += f" ({info.shutdown_reason})"
    return Ending(Phase.CRASHED, Reason.VMM_EXITED, False, code, f"QEMU exited {detail}")


def boot_failure(message: str, console: str) -> tuple[Reason, str]:
    """Why a boot failed (``BootError``): a kernel panic on the console says more than the
    watchdog's verdict. Too little guest memory for the kernel (64 MiB with Debian's cloud
    kernel) panics before the guest agent starts: ``OutOfMemory``, not ``VMMExited``."""
    if any(marker in console for marker in PANIC_MARKERS):
        if any(marker in console for marker in OOM_MARKERS):
            line = _last_line(console, OOM_MARKERS)
            return Reason.OUT_OF_MEMORY, f"the guest ran out of memory while booting: {line}"
        line = _last_line(console, PANIC_MARKERS)
        return Reason.GUEST_PANIC, f"the guest kernel panicked while booting: {line}"
    return (Reason.BOOT_TIMEOUT if "not ready after" in message else Reason.VMM_EXITED), message


def _last_line(console: str, markers: tuple[str, ...]) -> str:
    for line in reversed(console.splitlines()):
        if any(marker in line for marker in markers):
            return line.strip()[-300:]
    return ""
