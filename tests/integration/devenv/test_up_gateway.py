"""``make up`` with the gateway: the files it writes (gateway URL, demo token, demo
kubeconfig), what it prints, the Service the CLI discovers it by, a microsandbox script run
with exactly the three printed environment variables, a killed gateway restarted on its port by
the next ``up``, and nothing left after ``down``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from kubesandbox_devenv.binaries import REPO_ROOT, ensure_binaries

from .test_cli import devenv, short_tmp  # noqa: F401 (a fixture)
from .test_lifecycle import processes_under, wait_all_gone

pytestmark = [pytest.mark.controlplane, pytest.mark.slow, pytest.mark.vm]


def gateway_pid(state: Path) -> int:
    return int((state / "run" / "gateway.pid").read_text().split()[0])


def kubectl(state: Path, *args: str) -> str:
    return subprocess.run(
        [str(state / "bin" / "kubectl"), *args],
        env=dict(os.environ, KUBECONFIG=str(state / "kubeconfig")),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


def test_up_runs_the_gateway_for_the_sdk(short_tmp: Path) -> None:  # noqa: F811
    ensure_binaries()
    crds = REPO_ROOT / "crds"
    state = short_tmp / "state"
    try:
        first = devenv(state, "up", crds=crds)
        assert first.returncode == 0, first.stderr

        url = (state / "gateway-url").read_text().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url), url
        with urllib.request.urlopen(f"{url}/healthz", timeout=10) as health:  # noqa: S310
            assert health.read() == b"ok"
        token = (state / "token").read_text().strip()
        for secret in (state / "token", state / "demo.kubeconfig"):
            assert secret.stat().st_mode & 0o777 == 0o600
        printed = f"MSB_BACKEND=cloud MSB_API_URL=$(cat {state / 'gateway-url'})/ns/default"
        assert printed in first.stdout
        assert f"MSB_API_KEY=$(cat {state / 'token'})" in first.stdout

        service = json.loads(
            kubectl(state, "get", "service", "kubesandbox-gateway", "-n", "kubesandbox-system",
                    "-o", "json")
        )  # fmt: skip
        assert service["metadata"]["annotations"]["kubesandbox.dev/url"] == url
        # the demo identity may read it (that is how `kubectl sandbox` finds the gateway)
        demo = subprocess.run(
            [str(state / "bin" / "kubectl"), "--kubeconfig", str(state / "demo.kubeconfig"),
             "get", "service", "kubesandbox-gateway", "-n", "kubesandbox-system", "-o", "name"],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        assert demo.stdout.strip() == "service/kubesandbox-gateway", demo.stderr

        # a script written for microsandbox, with only the three variables `up` printed
        env = {k: v for k, v in os.environ.items() if not k.startswith("MSB_")}
        env |= {"MSB_BACKEND": "cloud", "MSB_API_URL": f"{url}/ns/default", "MSB_API_KEY": token}
        script = subprocess.run(
            [sys.executable, str(REPO_ROOT / "examples" / "sdk" / "hello_sdk.py")],
            env=env, capture_output=True, text=True, timeout=400, check=False,
        )  # fmt: skip
        assert script.returncode == 0, script.stderr
        assert script.stdout.startswith("Hello from hello-sdk, in /app\n")

        old = gateway_pid(state)
        os.kill(old, signal.SIGKILL)
        assert wait_all_gone([old]) == []
        assert devenv(state, "status", crds=crds).returncode == 1

        second = devenv(state, "up", crds=crds)

        assert second.returncode == 0, second.stderr
        assert gateway_pid(state) != old
        assert (state / "gateway-url").read_text().strip() == url  # same port
        assert (state / "token").read_text().strip() == token  # still valid: reused
        with urllib.request.urlopen(f"{url}/healthz", timeout=10) as health:  # noqa: S310
            assert health.read() == b"ok"
        assert devenv(state, "status", crds=crds).returncode == 0
    finally:
        down = devenv(state, "down", crds=crds)
    assert down.returncode == 0, down.stderr
    assert "gateway: stopped" in down.stdout
    assert processes_under(state) == []
