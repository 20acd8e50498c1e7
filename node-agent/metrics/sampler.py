"""Samples a running VM from the host: nothing here asks the guest.

- CPU: the cgroup's CPU time (v2 ``cpu.stat``, v1 ``cpuacct.usage``) between two samples,
  in percent of one CPU; without a cgroup, QEMU's own utime+stime from ``/proc``.
- Memory: the cgroup's charge (guest RAM QEMU touched plus QEMU itself), and its limit.
- Disk: QMP ``query-blockstats`` summed over the VM's drives (bytes since boot).
- Network: ``/proc/<qemu pid>/net/dev`` shows the interfaces of QEMU's network namespace; the
  sandbox's tap device there counts what the guest sent (tap rx) and received (tap tx).
- Uptime: from the wall-clock start recorded when QEMU started (survives node agent restarts).

``Sampler`` keeps the previous sample per sandbox to turn counters into a CPU rate and holds
the latest one for the API, the Prometheus endpoint and the status writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from kubesandbox_api.status import SandboxMetrics
from kubesandbox_node.runtime.vmm import VMRecord

TAP_PREFIX = "tap"


class Sampled(Protocol):
    """What a sampler needs of a running VM (``QemuHandle`` is one)."""

    record: VMRecord

    async def query(self, command: str) -> Any: ...


@dataclass(frozen=True)
class Counters:
    at: float
    cpu_ns: int


def proc_cpu_ns(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def proc_rss(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def tap_counters(pid: int) -> tuple[int, int] | None:
    """Guest (rx, tx) bytes from the tap in QEMU's network namespace, if it has one."""
    try:
        text = Path(f"/proc/{pid}/net/dev").read_text()
    except OSError:
        return None
    for line in text.splitlines()[2:]:
        name, _, data = line.partition(":")
        if name.strip().startswith(TAP_PREFIX):
            fields = data.split()
            # the host's receive on the tap is what the guest transmitted, and back
            return int(fields[8]), int(fields[0])
    return None


async def block_counters(vm: Sampled) -> tuple[int, int] | None:
    try:
        async with asyncio.timeout(2):
            stats = await vm.query("query-blockstats")
    except (TimeoutError, ConnectionError, OSError, RuntimeError):
        return None
    read = sum(int(d.get("stats", {}).get("rd_bytes", 0)) for d in stats)
    written = sum(int(d.get("stats", {}).get("wr_bytes", 0)) for d in stats)
    return read, written


class Sampler:
    def __init__(self) -> None:
        self._previous: dict[str, Counters] = {}
        self.latest: dict[str, SandboxMetrics] = {}

    def forget(self, uid: str) -> None:
        self._previous.pop(uid, None)
        self.latest.pop(uid, None)

    async def sample(self, uid: str, vm: Sampled) -> SandboxMetrics:
        record = vm.record
        group = record.cgroup()
        now = time.monotonic()
        if group is not None:
            usage = await asyncio.to_thread(group.usage)
            cpu_ns, memory = usage.cpu_ns, usage.memory_bytes
            limit = usage.memory_limit_bytes or record.memory_limit_bytes or None
        else:
            cpu_ns = await asyncio.to_thread(proc_cpu_ns, record.pid)
            memory = await asyncio.to_thread(proc_rss, record.pid)
            limit = record.memory_limit_bytes or None
        cpu_percent: float | None = None
        previous = self._previous.get(uid)
        if previous is not None and now > previous.at and cpu_ns >= previous.cpu_ns:
            cpu_percent = round((cpu_ns - previous.cpu_ns) / ((now - previous.at) * 1e9) * 100, 2)
        self._previous[uid] = Counters(now, cpu_ns)
        disk = await block_counters(vm)
        net = await asyncio.to_thread(tap_counters, record.pid)
        metrics = SandboxMetrics(
            cpu_percent=cpu_percent,
            memory_bytes=memory,
            memory_limit_bytes=limit,
            disk_read_bytes=disk[0] if disk else None,
            disk_write_bytes=disk[1] if disk else None,
            net_rx_bytes=net[0] if net else 0,
            net_tx_bytes=net[1] if net else 0,
            uptime_seconds=round(max(0.0, time.time() - record.started_at), 1),
            timestamp=datetime.now(UTC).replace(microsecond=0),
        )
        self.latest[uid] = metrics
        return metrics
