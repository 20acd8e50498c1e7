from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubesandbox_devenv import services
from kubesandbox_devenv.binaries import REPO_ROOT, ensure_binaries
from kubesandbox_devenv.controlplane import ControlPlane
from kubesandbox_devenv.installed import SYSTEM_NAMESPACE as SYSTEM
from kubesandbox_devenv.installed import NodeDirs

from .test_lifecycle import processes_under, running, wait_all_gone

pytestmark = [pytest.mark.controlplane, pytest.mark.slow, pytest.mark.vm, pytest.mark.registry]


# The console script `make up` runs; its sys.path starts at .venv/bin, not at the repository
# root, where the folder `operator/` would shadow the standard library's `operator`.
CONSOLE_SCRIPT = Path(sys.executable).parent / "kubesandbox-devenv"


def devenv(state_dir: Path, *args: str, crds: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CONSOLE_SCRIPT), "--state-dir", str(state_dir), "--crds", str(crds), *args],
        cwd=state_dir.parent,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A shallow temporary directory: the node agent's unix sockets live under the state dir,
    and socket paths are limited to 108 bytes (pytest's own temporary paths are too deep)."""
    path = Path(tempfile.mkdtemp(prefix="ksb-cli-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def kubectl(state: Path, *args: str, kubeconfig: str = "kubeconfig") -> str:
    return subprocess.run(
        [str(state / "bin" / "kubectl"), "--kubeconfig", str(state / kubeconfig), *args],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip


def system_pods(state: Path) -> dict[str, str]:
    """component → uid of the Running Pods in kubesandbox-system."""
    listed = json.loads(kubectl(state, "get", "pods", "-n", SYSTEM, "-o", "json"))
    return {
        pod["metadata"]["labels"]["app.kubernetes.io/component"]: pod["metadata"]["uid"]
        for pod in listed["items"]
        if pod["status"].get("phase") == "Running"
    }


def test_make_up_is_a_helm_install_that_a_second_up_keeps(short_tmp: Path) -> None:
    """The README's first command: the chart on a real kubelet node, the demo, every file it
    writes, the SDK with the three variables it prints; a second ``up`` restarts what died and
    changes nothing else; ``down`` leaves no process."""
    ensure_binaries()
    crds = REPO_ROOT / "crds"
    state = short_tmp / "state"
    try:
        first = devenv(state, "up", crds=crds)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        # make up ends with the output of a command that ran inside a real VM
        assert "A command inside its VM printed:" in first.stdout
        assert "Hello from hello, a microVM: Linux" in first.stdout
        assert (state / "registry").read_text().startswith("127.0.0.1:")
        assert "export KUBECONFIG=" in first.stdout

        # a node with a real kubelet, and kubesandbox installed on it by Helm, as Pods
        node = json.loads(kubectl(state, "get", "node", "kubesandbox-node-0", "-o", "json"))
        assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.35.4"
        helm = subprocess.run(
            [str(state / "bin" / "helm"), "status", "kubesandbox", "-n", SYSTEM, "-o", "json"],
            env=dict(os.environ, KUBECONFIG=str(state / "kubeconfig")),
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        assert json.loads(helm.stdout)["info"]["status"] == "deployed"
        pods = system_pods(state)
        assert set(pods) == {"operator", "gateway", "node-agent"}, pods

        # the gateway, from this host, for the SDK and `kubectl sandbox`
        url = (state / "gateway-url").read_text().strip()
        assert re.fullmatch(r"http://[0-9.]+:30080", url), url
        with urllib.request.urlopen(f"{url}/healthz", timeout=10) as health:  # noqa: S310
            assert health.read() == b"ok"
        token = (state / "token").read_text().strip()
        for secret in (state / "token", state / "demo.kubeconfig"):
            assert secret.stat().st_mode & 0o777 == 0o600
        assert f"MSB_API_URL=$(cat {state / 'gateway-url'})/ns/default" in first.stdout
        assert f"MSB_API_KEY=$(cat {state / 'token'})" in first.stdout
        service = json.loads(
            kubectl(state, "get", "service", "kubesandbox-gateway", "-n", SYSTEM, "-o", "json")
        )
        assert service["metadata"]["annotations"]["kubesandbox.dev/url"] == url
        # the demo identity may read it (that is how `kubectl sandbox` finds the gateway)
        found = kubectl(
            state, "get", "service", "kubesandbox-gateway", "-n", SYSTEM, "-o", "name",
            kubeconfig="demo.kubeconfig",
        )  # fmt: skip
        assert found.strip() == "service/kubesandbox-gateway"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MSB_")}
        env |= {"MSB_BACKEND": "cloud", "MSB_API_URL": f"{url}/ns/default", "MSB_API_KEY": token}
        script = subprocess.run(
            [sys.executable, str(REPO_ROOT / "examples" / "sdk" / "hello_sdk.py")],
            env=env, capture_output=True, text=True, timeout=400, check=False,
        )  # fmt: skip
        assert script.returncode == 0, script.stderr
        assert script.stdout.startswith("Hello from hello-sdk, in /app\n")

        pids = ControlPlane(state).status()
        scheduler = pids.pop("kube-scheduler")
        assert scheduler is not None
        os.kill(scheduler, signal.SIGKILL)
        assert wait_all_gone([scheduler]) == []
        assert devenv(state, "status", crds=crds).returncode == 1

        second = devenv(state, "up", crds=crds)

        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        assert "Hello from hello, a microVM: Linux" in second.stdout
        after = ControlPlane(state).status()
        assert after.pop("kube-scheduler") not in (None, scheduler)
        assert after == pids
        assert system_pods(state) == pods  # the same tree and values: nothing rolled
        assert (state / "gateway-url").read_text().strip() == url
        assert (state / "token").read_text().strip() == token  # still valid: reused
        assert devenv(state, "status", crds=crds).returncode == 0
    finally:
        down = devenv(state, "down", crds=crds)
    assert down.returncode == 0, down.stderr
    assert "node: stopped" in down.stdout
    assert [pid for pid in pids.values() if pid is not None and running(pid)] == []
    assert processes_under(state) == []
    assert services.qemu_processes(str(NodeDirs().state)) == {}
    assert devenv(state, "status", crds=crds).returncode == 1
