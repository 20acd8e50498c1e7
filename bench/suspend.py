"""Suspend and resume against a cold boot of the same sandbox, measured in one run (TCG here).

    .venv/bin/python bench/suspend.py [--memory 128 512] [--rounds 3] [--fill 0]

For each guest memory size, one sandbox (busybox from a loopback registry, the real guest
agent, the real preparer and runtime) goes through ``--rounds`` cycles of:

- **suspend**: ``lifecycle.state`` Suspended until the phase is Suspended (QEMU gone); the
  state file's size is recorded;
- **resume → exec-ready**: Running until a command (``busybox true``) answers through the
  relay, and the guest's ``/proc/uptime`` is checked to go on (a restore, not a boot);
- **cold start → exec-ready**: a stop (Kill) and a start of the *same* sandbox from its
  writable layer, until the same command answers: what the sandbox would cost without suspend.

``--fill N`` writes N MiB of random data into the guest's page cache first, so the state
holds more than an idle guest's memory. Prints medians and resume/cold-start ratios as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))  # appended, not prepended: the repo's operator/ must not shadow

from kubesandbox_api.conditions import Phase  # noqa: E402
from kubesandbox_node.runtime.manager import Runtime  # noqa: E402
from kubesandbox_node.runtime.model import DesiredSandbox  # noqa: E402
from kubesandbox_node.runtime.supervisor import Supervisor  # noqa: E402
from kubesandbox_node.runtime.vmm import process_start_ticks  # noqa: E402
from tests.support.runtimes import bench_runtime, run, until  # noqa: E402


def desired(uid: str, memory: int, generation: int, state: str, stop_mode: str) -> DesiredSandbox:
    return DesiredSandbox.model_validate(
        {"namespace": "bench", "name": f"suspend-{memory}", "uid": uid, "generation": generation,
         "spec": {"image": {"oci": "busybox:1.36"}, "memory": memory,
                  "network": {"policy": "None"},
                  "lifecycle": {"state": state, "stopMode": stop_mode}}}
    )  # fmt: skip


async def uptime(supervisor: Supervisor) -> float:
    return float((await run(supervisor, "cut -d' ' -f1 /proc/uptime")).strip())


class Steer:
    """One sandbox, driven through the runtime the way the operator's PUTs drive it."""

    def __init__(self, runtime: Runtime, memory: int) -> None:
        self.runtime, self.memory = runtime, memory
        self.uid, self.generation = str(uuid.uuid4()), 0

    def put(self, state: str) -> Supervisor:
        self.generation += 1
        return self.runtime.put(desired(self.uid, self.memory, self.generation, state, "Kill"))

    async def stop(self, supervisor: Supervisor) -> None:
        """Stopped, and the stop's task finished: the supervisor ignores a new generation
        while an operation still runs (the operator's next PUT would catch up)."""
        self.generation += 1
        task = supervisor.apply(desired(self.uid, self.memory, self.generation, "Stopped", "Kill"))
        if task is not None:
            await task
        await until(supervisor, Phase.STOPPED)

    async def to_exec_ready(self, state: str, phase: Phase) -> tuple[float, Supervisor]:
        began = time.monotonic()
        supervisor = self.put(state)
        await until(supervisor, phase)
        await run(supervisor, "true")
        return time.monotonic() - began, supervisor


async def measure(runtime: Runtime, memory: int, rounds: int, fill: int) -> dict[str, Any]:
    steer = Steer(runtime, memory)
    _, supervisor = await steer.to_exec_ready("Running", Phase.RUNNING)
    suspends, resumes, colds, sizes = [], [], [], []
    for i in range(rounds):
        if fill:
            await run(supervisor, f"dd if=/dev/urandom of=/fill bs=1M count={fill} 2>/dev/null")
        before = await uptime(supervisor)
        vm = supervisor.record.vm
        assert vm is not None
        began = time.monotonic()
        steer.put("Suspended")
        await until(supervisor, Phase.SUSPENDED)
        suspends.append(time.monotonic() - began)
        if process_start_ticks(vm.pid) == vm.start_ticks:
            raise RuntimeError("QEMU still runs while suspended")
        suspension = supervisor.status().suspension
        if suspension is None or suspension.state_bytes is None:
            raise RuntimeError("no state size in the status")
        sizes.append(suspension.state_bytes)
        seconds, supervisor = await steer.to_exec_ready("Running", Phase.RUNNING)
        resumes.append(seconds)
        after = await uptime(supervisor)
        if after < before:
            raise RuntimeError(f"uptime went back from {before} to {after}: that was a boot")
        await steer.stop(supervisor)
        seconds, supervisor = await steer.to_exec_ready("Running", Phase.RUNNING)
        colds.append(seconds)
        print(
            f"{memory} MiB round {i}: suspend {suspends[-1]:.3f}s state {sizes[-1] >> 20} MiB"
            f" resume→exec {resumes[-1]:.3f}s cold start→exec {colds[-1]:.3f}s",
            flush=True,
        )
    await runtime.remove(steer.uid)
    resume, cold = statistics.median(resumes), statistics.median(colds)
    return {
        "memory_mib": memory,
        "fill_mib": fill,
        "suspend_s": statistics.median(suspends),
        "state_file_mib": round(statistics.median(sizes) / (1 << 20), 1),
        "state_over_memory": round(statistics.median(sizes) / (memory << 20), 3),
        "resume_to_exec_s": resume,
        "cold_start_to_exec_s": cold,
        "resume_over_cold_start": round(resume / cold, 3),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--memory", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fill", type=int, default=0, help="MiB put in the guest's page cache")
    args = parser.parse_args()
    async with bench_runtime("ksb-bench-suspend-") as runtime:
        results = [await measure(runtime, m, args.rounds, args.fill) for m in args.memory]
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
