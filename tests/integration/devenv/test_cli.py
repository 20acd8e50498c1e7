from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubesandbox_devenv.binaries import REPO_ROOT, ensure_binaries
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


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A shallow temporary directory: the node agent's unix sockets live under the state dir,
    and socket paths are limited to 108 bytes (pytest's own temporary paths are too deep)."""
    path = Path(tempfile.mkdtemp(prefix="ksb-cli-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_up_is_idempotent_and_down_leaves_nothing(short_tmp: Path) -> None:
    ensure_binaries()
    crds = REPO_ROOT / "crds"
    state = short_tmp / "state"
    try:
        first = devenv(state, "up", crds=crds)
        assert first.returncode == 0, first.stderr
        # make up ends with the output of a command that ran inside a real VM
        assert "A command inside its VM printed:" in first.stdout
        assert "Hello from hello, a microVM: Linux" in first.stdout
        assert (state / "registry").read_text().startswith("127.0.0.1:")
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
        assert "Hello from hello, a microVM: Linux" in second.stdout
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
