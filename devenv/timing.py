"""Measuring how long a control plane takes to start and stop from the cached binaries.

``kubesandbox-devenv measure --runs 5`` prints one line per run and the medians; the numbers in
docs/devenv.md come from it. Each run uses a fresh temporary state directory (new PKI, empty
etcd), which is what a test session pays.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kubesandbox_devenv.binaries import ensure_binaries
from kubesandbox_devenv.controlplane import ControlPlane, StartReport


@dataclass(frozen=True)
class Run:
    start: StartReport
    stop: float

    def describe(self) -> str:
        parts = [f"start {self.start.total:.2f}s"]
        parts += [f"{name} {secs:.2f}s" for name, secs in self.start.components.items()]
        parts += [f"nodes {self.start.nodes:.2f}s", f"stop {self.stop:.2f}s"]
        return "  ".join(parts)


def measure(runs: int, nodes: int = 2) -> list[Run]:
    binaries = ensure_binaries(show_progress=True)
    results = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="kubesandbox-measure-") as state:
            plane = ControlPlane(Path(state), nodes=nodes, binaries=binaries)
            report = plane.start()
            began = time.monotonic()
            plane.stop()
            results.append(Run(report, time.monotonic() - began))
    return results


def report(runs: list[Run]) -> str:
    lines = [run.describe() for run in runs]
    start = statistics.median(run.start.total for run in runs)
    stop = statistics.median(run.stop for run in runs)
    lines.append(f"median of {len(runs)}: start {start:.2f}s, stop {stop:.2f}s")
    return "\n".join(lines)
