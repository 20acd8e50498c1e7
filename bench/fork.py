"""Fork against a cold boot of the same spec, measured in one run (TCG here).

    .venv/bin/python bench/fork.py [--memory 128 512] [--rounds 3] [--fill 0]

For each guest memory size, one source sandbox (busybox from a loopback registry, the real
guest agent, preparer and runtime, no network) runs with a background process; then
``--rounds`` times:

- **fork → exec-ready**: a new sandbox with ``image.sandbox`` naming the source, from the PUT
  until a command (``busybox true``) answers through its relay; the source's pause (its vCPUs
  stopped while its state is saved and its writable layer copied) and the state's size are
  recorded, the fork is checked to have the source's background process, and it is removed;
- **cold boot → exec-ready**: a new sandbox of the same spec (``image.oci``), until the same
  command answers, then removed.

The source is checked to keep its QEMU process throughout. ``--fill N`` writes N MiB of random
data into the source's page cache first. Prints medians and fork/cold-boot ratios as JSON.
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


def desired(name: str, image: dict[str, Any], memory: int, fork_of: str | None) -> DesiredSandbox:
    return DesiredSandbox.model_validate(
        {"namespace": "bench", "name": name, "uid": str(uuid.uuid4()), "generation": 1,
         "spec": {"image": image, "memory": memory, "network": {"policy": "None"}},
         "resolved": {"forkOf": fork_of} if fork_of else {}}
    )  # fmt: skip


async def to_exec_ready(runtime: Runtime, wanted: DesiredSandbox) -> tuple[float, Supervisor]:
    began = time.monotonic()
    supervisor = runtime.put(wanted)
    await until(supervisor, Phase.RUNNING)
    await run(supervisor, "true")
    return time.monotonic() - began, supervisor


async def measure(runtime: Runtime, memory: int, rounds: int, fill: int) -> dict[str, Any]:
    name = f"source-{memory}"
    oci = {"oci": "busybox:1.36"}
    _, source = await to_exec_ready(runtime, desired(name, oci, memory, None))
    sleeper = await run(source, "setsid sleep 100000 </dev/null >/dev/null 2>&1 & echo $!")
    if fill:
        await run(source, f"dd if=/dev/urandom of=/fill bs=1M count={fill} 2>/dev/null")
    vm = source.record.vm
    assert vm is not None
    forks, colds, pauses, sizes = [], [], [], []
    for i in range(rounds):
        wanted = desired(f"fork-{memory}-{i}", {"sandbox": {"name": name}}, memory, source.uid)
        seconds, fork = await to_exec_ready(runtime, wanted)
        forks.append(seconds)
        record = fork.record.fork
        if record is None:
            raise RuntimeError("the fork has no fork record")
        pauses.append(record.pause_seconds)
        sizes.append(record.state_bytes)
        if not (await run(fork, f"cat /proc/{sleeper.strip()}/cmdline")).startswith("sleep"):
            raise RuntimeError("the fork lacks the source's background process")
        await runtime.remove(fork.uid)
        seconds, cold = await to_exec_ready(
            runtime, desired(f"cold-{memory}-{i}", oci, memory, None)
        )
        colds.append(seconds)
        await runtime.remove(cold.uid)
        if process_start_ticks(vm.pid) != vm.start_ticks or source.phase != Phase.RUNNING:
            raise RuntimeError("the source did not keep running in its QEMU")
        print(
            f"{memory} MiB round {i}: fork→exec {forks[-1]:.3f}s (source paused "
            f"{pauses[-1]:.3f}s, state {sizes[-1] >> 20} MiB) cold boot→exec {colds[-1]:.3f}s",
            flush=True,
        )
    await runtime.remove(source.uid)
    fork_s, cold_s = statistics.median(forks), statistics.median(colds)
    return {
        "memory_mib": memory,
        "fill_mib": fill,
        "fork_to_exec_s": round(fork_s, 3),
        "cold_boot_to_exec_s": round(cold_s, 3),
        "fork_over_cold_boot": round(fork_s / cold_s, 3),
        "source_pause_s": round(statistics.median(pauses), 3),
        "state_mib": round(statistics.median(sizes) / (1 << 20), 1),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--memory", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fill", type=int, default=0, help="MiB put in the source's page cache")
    args = parser.parse_args()
    async with bench_runtime("ksb-bench-fork-") as runtime:
        results = [await measure(runtime, m, args.rounds, args.fill) for m in args.memory]
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
