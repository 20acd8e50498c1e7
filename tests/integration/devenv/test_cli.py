from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kubesandbox_devenv.binaries import ensure_binaries
from kubesandbox_devenv.controlplane import ControlPlane

from .test_lifecycle import processes_under, running, wait_all_gone

pytestmark = [pytest.mark.controlplane, pytest.mark.slow]


# The console script `make up` runs; its sys.path starts at .venv/bin, not at the repository
# root, where the folder `operator/` would shadow the standard library's `operator`.
CONSOLE_SCRIPT = Path(sys.executable).parent / "kubesandbox-devenv"


def devenv(state_dir: Path, *args: str, crds: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CONSOLE_SCRIPT), "--state-dir", str(state_dir), "--crds", str(crds), *args],
        cwd=state_dir.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_up_is_idempotent_and_down_leaves_nothing(tmp_path: Path) -> None:
    ensure_binaries()
    crds = tmp_path / "crds"
    crds.mkdir()
    state = tmp_path / "state"
    try:
        first = devenv(state, "up", crds=crds)
        assert first.returncode == 0, first.stderr
        assert "export KUBECONFIG=" in first.stdout
        kubectl = state / "bin" / "kubectl"
        nodes = subprocess.run(
            [str(kubectl), "--kubeconfig", str(state / "kubeconfig"), "get", "nodes", "-o", "name"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert nodes.stdout.split() == ["node/kubesandbox-node-0"]
        pids = ControlPlane(state).status()
        scheduler = pids.pop("kube-scheduler")
        assert scheduler is not None
        os.kill(scheduler, signal.SIGKILL)
        assert wait_all_gone([scheduler]) == []
        assert devenv(state, "status", crds=crds).returncode == 1

        second = devenv(state, "up", crds=crds)

        assert second.returncode == 0, second.stderr
        after = ControlPlane(state).status()
        assert after.pop("kube-scheduler") not in (None, scheduler)
        assert after == pids
        assert devenv(state, "status", crds=crds).returncode == 0
    finally:
        down = devenv(state, "down", crds=crds)
    assert down.returncode == 0, down.stderr
    assert [pid for pid in pids.values() if pid is not None and running(pid)] == []
    assert processes_under(state) == []
    assert devenv(state, "status", crds=crds).returncode == 1
