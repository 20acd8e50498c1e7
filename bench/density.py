"""Density with idle suspend: N sandboxes on this machine, each answering an exec.

    .venv/bin/python bench/density.py [--count 100] [--idle 30] [--memory 128]

The system as ``make up`` installs it (the Helm chart on the real kubelet node), with sandbox
Pod requests shrunk so that ``--count`` of them fit on one 2-core node (the overcommit a
platform team relying on idle suspend would configure: ``sandboxPods.cpuAllocationRatio``
100, 5m CPU and 32 MiB memory overhead). Then, in one ``kubectl apply``, ``--count``
Sandboxes (``busybox:1.36``, 1 vCPU, ``--memory`` MiB, ``idleAction: Suspend`` after
``--idle`` seconds, ``restartPolicy: OnFailure``; each sandbox seen Crashed is reported).
Measured, with the machine sampled every 2 s (host CPU in cores from ``/proc/stat``, memory
in use from ``/proc/meminfo``, the number of QEMU processes of this system and their summed
RSS):

- **boot**: time until every Sandbox has been Running at least once, and the peak of VMs
  alive at once (the early ones go to sleep while the last ones boot);
- **asleep**: time until every Sandbox is Suspended, then one idle minute: CPU, memory, QEMU
  processes (none expected), and the saved state on disk (``status.suspension.stateBytes``);
- **exec**: each Sandbox in turn, through the gateway with the unchanged microsandbox SDK
  (``Sandbox.get`` → ``connect`` → ``shell("cat /proc/uptime")``): the latency of that first
  command, which wakes the sandbox if it sleeps; split into woken and already running. A
  woken VM ran for at least the idle timeout before its nap, so its uptime read back is at
  least that when it was restored (a reboot would read a few seconds): counted, not asserted.

Prints JSON. Speed is measured, never asserted; results go to docs/suspend.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from apply import sandbox_list  # bench/apply.py: this folder is on sys.path
from microsandbox import BackendKind, Sandbox, backend_scope

from kubesandbox_devenv import installed, services

NAMESPACE = "default"
PREFIX = "dense"
CAPACITY = {
    "sandboxPods": {
        "cpuAllocationRatio": 100,
        "cpuOverheadMillicores": 5,
        "memoryOverheadMiB": 32,
    }
}


def manifest(count: int, idle: int, memory: int) -> str:
    lifecycle = {"idleTimeoutSeconds": idle, "idleAction": "Suspend", "restartPolicy": "OnFailure"}
    names = [f"{PREFIX}-{i:03d}" for i in range(count)]
    return sandbox_list(names, {"memory": memory, "lifecycle": lifecycle}, namespace=NAMESPACE)


class Sampler(threading.Thread):
    """Host CPU (cores busy), memory in use, and this system's QEMU processes, every 2 s."""

    def __init__(self, marker: str) -> None:
        super().__init__(daemon=True)
        self.marker = marker
        self.samples: list[dict[str, float]] = []
        self.stopped = threading.Event()

    @staticmethod
    def cpu_ticks() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields) - idle, sum(fields)

    @staticmethod
    def memory_used() -> int:
        info = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, value = line.split(":", 1)
            info[key] = int(value.split()[0]) * 1024
        return info["MemTotal"] - info["MemAvailable"]

    @staticmethod
    def rss(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def run(self) -> None:
        cores = os.cpu_count() or 1
        busy, total = self.cpu_ticks()
        while not self.stopped.wait(2.0):
            now_busy, now_total = self.cpu_ticks()
            span = max(now_total - total, 1)
            vms = services.qemu_processes(self.marker)
            self.samples.append(
                {
                    "t": time.monotonic(),
                    "cpu_cores": cores * (now_busy - busy) / span,
                    "memory_used": self.memory_used(),
                    "vms": len(vms),
                    "vm_rss": sum(self.rss(pid) for pid in vms),
                }
            )
            busy, total = now_busy, now_total

    def window(self, began: float, ended: float) -> list[dict[str, float]]:
        return [s for s in self.samples if began <= s["t"] <= ended]


def summary(samples: list[dict[str, float]]) -> dict[str, Any]:
    if not samples:
        return {}
    return {
        "cpu_cores_mean": round(statistics.fmean(s["cpu_cores"] for s in samples), 3),
        "memory_used_mib_mean": round(statistics.fmean(s["memory_used"] for s in samples) / 2**20),
        "vms_max": max(int(s["vms"]) for s in samples),
        "vm_rss_mib_max": round(max(s["vm_rss"] for s in samples) / 2**20),
    }


def sandboxes(system: installed.InstalledSystem) -> list[dict[str, Any]]:
    listed = system.plane.kubectl("get", "sandboxes", "-n", NAMESPACE, "-o", "json")
    items: list[dict[str, Any]] = json.loads(listed.stdout)["items"]
    return [s for s in items if s["metadata"]["name"].startswith(PREFIX)]


def track(
    system: installed.InstalledSystem,
    count: int,
    until: str,
    timeout: float,
    seen: set[str],
    failures: set[tuple[str, str]],
) -> float:
    """Seconds until every sandbox has been in phase ``until`` at least once (``seen`` keeps
    the names across calls; ``failures`` gets each sandbox seen Crashed or Failed, with its
    reason); fails with the phases it saw at the deadline."""
    began = time.monotonic()
    report = began + 30.0
    while True:
        phases = {}
        for body in sandboxes(system):
            status = body.get("status") or {}
            phase = status.get("phase", "")
            phases[body["metadata"]["name"]] = phase
            # startedAt is written with Running: a short Running between two polls counts too
            if phase == until or (until == "Running" and status.get("startedAt")):
                seen.add(body["metadata"]["name"])
            if phase in ("Crashed", "Failed"):
                reason = ((body.get("status") or {}).get("exitStatus") or {}).get("reason", "")
                failures.add((body["metadata"]["name"], reason))
        if len(seen) >= count:
            return time.monotonic() - began
        if time.monotonic() >= report:
            print(f"  {len(seen)}/{count} reached {until}; now {tally(phases)}", flush=True)
            report += 30.0
        if time.monotonic() - began > timeout:
            raise SystemExit(
                f"{len(seen)}/{count} reached {until} in {timeout:.0f} s: {tally(phases)}"
            )
        time.sleep(2.0)


def tally(phases: dict[str, str]) -> dict[str, int]:
    counted: dict[str, int] = {}
    for phase in phases.values():
        counted[phase or "-"] = counted.get(phase or "-", 0) + 1
    return counted


async def exec_each(system: installed.InstalledSystem, names: list[str]) -> list[dict[str, Any]]:
    url = f"{system.gateway_url}/ns/{NAMESPACE}"
    results = []
    with backend_scope(BackendKind.CLOUD, url=url, api_key=system.demo_token):
        for name in names:
            before = await asyncio.to_thread(phase_of, system, name)
            began = time.monotonic()
            handle = await Sandbox.get(name)
            box = await handle.connect()
            output = await box.shell("cut -d' ' -f1 /proc/uptime")
            seconds = time.monotonic() - began
            uptime = float(output.stdout_text.strip())
            results.append(
                {
                    "name": name,
                    "before": before,
                    "seconds": round(seconds, 3),
                    "uptime": uptime,
                }
            )
    return results


def phase_of(system: installed.InstalledSystem, name: str) -> str:
    got = system.plane.kubectl("get", "sandbox", name, "-n", NAMESPACE, "-o", "json")
    phase: str = (json.loads(got.stdout).get("status") or {}).get("phase", "")
    return phase


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def latency(rows: list[dict[str, Any]]) -> dict[str, Any]:
    values = [r["seconds"] for r in rows]
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": round(statistics.median(values), 3),
        "p95": round(percentile(values, 0.95), 3),
        "max": round(max(values), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--idle", type=int, default=30, help="idleTimeoutSeconds")
    parser.add_argument("--memory", type=int, default=128, help="guest MiB")
    parser.add_argument("--boot-timeout", type=float, default=2400.0)
    args = parser.parse_args()
    # A SIGTERM (a timeout) unwinds like ^C, so that the system is torn down, not left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    print("installing the chart on the real node", flush=True)
    with installed.installed_system("ksbd-", overrides=CAPACITY, cleanup_timeout=900) as system:
        print(f"installed; applying {args.count} Sandboxes", flush=True)
        sampler = Sampler(str(system.dirs.state))
        sampler.start()
        time.sleep(10)  # a baseline of the installed system, no sandbox yet
        baseline = summary(sampler.window(0, time.monotonic()))

        applied = time.monotonic()
        system.plane.kubectl(
            "apply", "-f", "-", input_text=manifest(args.count, args.idle, args.memory)
        )
        running: set[str] = set()
        failures: set[tuple[str, str]] = set()
        boot = track(system, args.count, "Running", args.boot_timeout, running, failures)
        booted = time.monotonic()
        print(f"all {args.count} Running at least once after {boot:.1f} s", flush=True)

        asleep: set[str] = set()
        settle = track(system, args.count, "Suspended", args.boot_timeout, asleep, failures)
        settled = time.monotonic()
        print(f"all Suspended {settle:.1f} s later; an idle minute", flush=True)
        time.sleep(60)
        idle = summary(sampler.window(settled, time.monotonic()))
        state_bytes = [
            ((s.get("status") or {}).get("suspension") or {}).get("stateBytes") or 0
            for s in sandboxes(system)
        ]

        names = [f"{PREFIX}-{i:03d}" for i in range(args.count)]
        rows = asyncio.run(exec_each(system, names))
        execs_done = time.monotonic()
        sampler.stopped.set()

        woken = [r for r in rows if r["before"] == "Suspended"]
        awake = [r for r in rows if r["before"] != "Suspended"]
        # A woken VM had run at least the idle timeout before its nap: a restore goes on from
        # there, a reboot would read a few seconds.
        restored = [r for r in woken if r["uptime"] >= args.idle]
        result = {
            "count": args.count,
            "idle_timeout_seconds": args.idle,
            "guest_memory_mib": args.memory,
            "host": {"cpus": os.cpu_count()},
            "baseline_no_sandboxes": baseline,
            "crashed_and_restarted": sorted(f"{name}: {reason}" for name, reason in failures),
            "boot": {
                "seconds_to_all_running": round(boot, 1),
                **summary(sampler.window(applied, booted)),
            },
            "asleep": {
                "seconds_from_all_running_to_all_suspended": round(settle, 1),
                **idle,
                "state_mib_total": round(sum(state_bytes) / 2**20),
                "state_mib_per_sandbox": round(statistics.fmean(state_bytes) / 2**20, 1),
            },
            "exec": {
                "all": latency(rows),
                "woken": latency(woken),
                "already_running": latency(awake),
                "woken_with_uptime_at_least_the_idle_timeout": len(restored),
                "woken_uptime_seconds": latency([{"seconds": r["uptime"]} for r in woken]),
                **summary(sampler.window(settled + 60, execs_done)),
            },
        }
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
