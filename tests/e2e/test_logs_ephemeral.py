"""The sandbox log and ephemeral sandboxes through the unmodified SDK and ``msb`` CLI
(microsandbox 0.7.11, cloud backend) on a real VM: exec output and system lines come back
from ``log_stream(follow=True)`` as microsandbox's cloud-backend example reads them, and
``msb run IMAGE -- CMD`` leaves nothing behind."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from microsandbox import BackendKind, LogReadSource, Sandbox, backend_scope

from tests.e2e.conftest import System

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.registry]

IMAGE = "busybox:1.36"
NAMESPACE = "default"


def sandbox_names(system: System) -> set[str]:
    listed = system.plane.kubectl("get", "sandboxes", "-n", NAMESPACE, "-o", "json")
    return {item["metadata"]["name"] for item in json.loads(listed.stdout)["items"]}


def kubectl_sandbox_logs(system: System, name: str) -> subprocess.CompletedProcess[str]:
    kubeconfig = system.kubeconfig_for(system.demo_token, NAMESPACE)
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBESANDBOX_GATEWAY")}
    cli = Path(sys.executable).parent / "kubectl-sandbox"
    return subprocess.run(
        [str(cli), "--kubeconfig", str(kubeconfig), "logs", name],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )


async def test_the_log_streams_exec_output_and_system_lines(system: System) -> None:
    url = f"{system.gateway_url}/ns/{NAMESPACE}"
    with backend_scope(BackendKind.CLOUD, url=url, api_key=system.demo_token):
        sandbox = await Sandbox.create("logs-e2e", image=IMAGE)
        try:
            ran = await sandbox.shell("echo to-stdout; echo to-stderr >&2")
            assert ran.exit_code == 0
            stream = await sandbox.log_stream(
                sources=[LogReadSource.STDOUT, LogReadSource.STDERR, LogReadSource.SYSTEM],
                follow=True,
            )
            seen: list[tuple[str, str]] = []
            while not {"to-stdout", "to-stderr"} <= {text for _, text in seen}:
                try:
                    entry = await asyncio.wait_for(stream.__anext__(), timeout=60)
                except (StopAsyncIteration, TimeoutError):
                    pytest.fail(f"the log ended or went silent after {seen}")
                seen.append((str(entry.source).rsplit(".", 1)[-1].lower(), entry.text().strip()))
                assert entry.cursor
            assert ("stdout", "to-stdout") in seen
            assert ("stderr", "to-stderr") in seen
            assert any(s == "system" and t.startswith("sandbox Running") for s, t in seen)
            assert any(s == "system" and t.endswith("exec /bin/sh") for s, t in seen)

            # Followed: output written after the stream opened arrives on it.
            await sandbox.shell("echo later")
            while True:
                entry = await asyncio.wait_for(stream.__anext__(), timeout=60)
                if entry.text().strip() == "later":
                    break

            # kubectl sandbox logs reads the same log to its end, streams apart.
            printed = await asyncio.to_thread(kubectl_sandbox_logs, system, "logs-e2e")
            assert printed.returncode == 0, printed.stderr
            assert printed.stdout.splitlines() == ["to-stdout", "later"]
            assert printed.stderr.splitlines() == ["to-stderr"]
        finally:
            await sandbox.stop()
            await Sandbox.remove("logs-e2e")
    assert system.sandbox("logs-e2e") is None


def test_msb_run_leaves_nothing_behind(system: System) -> None:
    msb = shutil.which("msb", path=str(Path(sys.executable).parent))
    assert msb is not None, "the SDK's msb CLI is installed beside the interpreter"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSB_")}
    env |= {
        "MSB_BACKEND": "cloud",
        "MSB_API_URL": f"{system.gateway_url}/ns/{NAMESPACE}",
        "MSB_API_KEY": system.demo_token,
    }
    before = sandbox_names(system)
    result = subprocess.run(
        [msb, "run", "--no-tty", IMAGE, "--", "echo", "hello from msb run"],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert "hello from msb run" in result.stdout
    deadline = time.monotonic() + 120
    while (left := sandbox_names(system) - before) and time.monotonic() < deadline:
        time.sleep(1)
    assert not left, f"msb run left {left} behind"
