"""Facts about the host a VM needs: the TSC frequency, and whether KVM really runs guests.

TSC: the kernel does not export its calibrated TSC frequency everywhere, so several sources
are tried in order of trust: ``/sys/devices/system/cpu/cpu0/tsc_freq_khz`` (some kernels),
the kernel's own calibration in the log (``tsc: Refined TSC clocksource calibration`` /
``tsc: Detected``), then ``cpu MHz`` from ``/proc/cpuinfo`` when the CPU has a constant TSC.
``None`` when nothing is trustworthy; the VM then boots without the hint.

KVM: ``/dev/kvm`` existing proves nothing (ENVIRONMENT.md: a PVM backend here aborts or spins
stock kernels), so ``kvm_usable`` boots the real kernel once under KVM without a root
filesystem and accepts KVM only if the kernel gets as far as looking for one. The verdict
is cached per (host kernel, QEMU binary, guest kernel).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import structlog

from kubesandbox_node.vm.spec import Accel

log = structlog.get_logger(__name__)

_MHZ = re.compile(r"tsc: (?:Refined TSC clocksource calibration|Detected): ([0-9.]+) MHz")


def tsc_khz(
    sysfs: Path = Path("/sys/devices/system/cpu/cpu0/tsc_freq_khz"),
    cpuinfo: Path = Path("/proc/cpuinfo"),
    kernel_log: str | None = None,
) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        value = int(sysfs.read_text().strip())
        if value > 0:
            return value
    if kernel_log is None:
        kernel_log = _read_kernel_log()
    found = _MHZ.findall(kernel_log)
    if found:
        # the refined calibration comes after the first estimate: take the last one
        return round(float(found[-1]) * 1000)
    with contextlib.suppress(OSError):
        text = cpuinfo.read_text()
        if re.search(r"^flags\s*:.*\bconstant_tsc\b", text, re.M):
            mhz = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", text, re.M)
            if mhz:
                return round(float(mhz.group(1)) * 1000)
    return None


def _read_kernel_log() -> str:
    for argv in (["dmesg"], ["journalctl", "-k", "-b", "--no-pager", "-q"]):
        if shutil.which(argv[0]) is None:
            continue
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            result = subprocess.run(
                argv, capture_output=True, text=True, timeout=5, stdin=subprocess.DEVNULL
            )
            if result.returncode == 0 and "tsc" in result.stdout:
                return result.stdout
    return ""


def _probe_key(qemu: str, kernel: Path) -> str:
    qemu_path = shutil.which(qemu) or qemu
    parts = [platform.release(), qemu_path, str(os.stat(qemu_path).st_mtime_ns), kernel.name]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


async def kvm_usable(
    kernel: Path, cache_dir: Path, *, qemu: str = "qemu-system-x86_64", probe_seconds: float = 15.0
) -> bool:
    """Whether a KVM guest of ``kernel`` boots here (cached; the probe costs a few seconds)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    cache = cache_dir / f"kvm-probe-{_probe_key(qemu, kernel)}.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        return bool(json.loads(cache.read_text())["usable"])
    usable, detail = await _probe(kernel, qemu, probe_seconds)
    log.info("kvm.probe", usable=usable, detail=detail)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"usable": usable, "detail": detail, "at": time.time()}))
    return usable


async def _probe(kernel: Path, qemu: str, limit: float) -> tuple[bool, str]:
    with tempfile.TemporaryDirectory(prefix="kvm-probe-") as tmp:
        console = Path(tmp) / "console.log"
        proc = await asyncio.create_subprocess_exec(
            qemu,
            "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-machine", "microvm", "-accel", "kvm", "-cpu", "host", "-m", "256M",
            "-kernel", str(kernel),
            "-append", "console=ttyS0 panic=-1 reboot=t root=/dev/nonexistent",
            "-chardev", f"file,id=con,path={console}", "-serial", "chardev:con",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
        try:
            async with asyncio.timeout(limit):
                _, stderr = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return False, "guest kernel did not finish booting under KVM (spins)"
        text = console.read_text(errors="replace") if console.exists() else ""
        if "VFS: Unable to mount root fs" in text or "Kernel panic" in text:
            return True, "guest kernel booted to its root mount under KVM"
        return False, f"QEMU exited {proc.returncode}: {stderr.decode(errors='replace')[-300:]}"


class EmulationNotAllowedError(RuntimeError):
    """KVM cannot run guests here and software emulation was not allowed."""


async def choose_accel(kernel: Path, cache_dir: Path, *, allow_emulation: bool) -> Accel:
    """``kvm`` when a probe proved it runs guests; else ``tcg`` if emulation is allowed."""
    if await kvm_usable(kernel, cache_dir):
        return "kvm"
    if allow_emulation:
        return "tcg"
    raise EmulationNotAllowedError(
        "KVM cannot run guests on this node (see the kvm-probe file in the cache) and "
        "software emulation is not allowed"
    )
