"""The whole system of ``make up``, in a pytest temporary directory: a control plane with one
node, the preloaded registry, a node agent and the operator, all tied to the test process."""

import asyncio
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kubesandbox_devenv import services
from kubesandbox_devenv.binaries import REPO_ROOT, ensure_binaries
from kubesandbox_devenv.controlplane import ControlPlane

Service = services.RegistryService | services.NodeAgentService | services.OperatorService


@dataclass
class System:
    plane: ControlPlane
    node_agent: services.NodeAgentService

    def sandbox(self, name: str) -> dict[str, Any] | None:
        got = self.plane.kubectl("get", "sandbox", name, "-o", "json", check=False)
        return json.loads(got.stdout) if got.returncode == 0 else None

    def wait_for_phase(
        self, name: str, phases: set[str], timeout: float = 240.0, *, ready: bool = False
    ) -> dict[str, Any]:
        """Until the phase is one of ``phases`` (and, with ``ready``, Ready=True if Running)."""
        deadline = time.monotonic() + timeout
        while True:
            body = self.sandbox(name) or {}
            status = body.get("status") or {}
            phase = status.get("phase")
            is_ready = any(
                c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", [])
            )
            if phase in phases and (not ready or phase != "Running" or is_ready):
                return body
            if time.monotonic() > deadline:
                pytest.fail(f"{name} never reached {phases}: {json.dumps(body.get('status'))}")
            time.sleep(0.5)

    def run(self, name: str, command: str) -> tuple[int, str]:
        body = self.sandbox(name)
        assert body is not None
        socket = self.node_agent.relay_socket(body["metadata"]["uid"])
        return asyncio.run(services.run_in_sandbox(socket, command))

    def delete_and_wait(self, path: Path) -> None:
        self.plane.kubectl("delete", "-f", str(path), "--wait", "--timeout=120s")


@pytest.fixture(scope="session")
def system() -> Iterator[System]:
    # Short on purpose: unix socket paths (the node agent's relay sockets live under its state
    # dir) are limited to 108 bytes, and pytest's temporary directories are deep.
    state = Path(tempfile.mkdtemp(prefix="ksb-e2e-", dir="/tmp"))
    with ControlPlane(state, nodes=1, binaries=ensure_binaries()) as plane:
        plane.install_crds(REPO_ROOT / "crds")
        services.SystemNamespace(plane).start()
        paths = services.Paths(state, tied=True)
        registry = services.RegistryService(paths)
        node_agent = services.NodeAgentService(paths, registry)
        operator = services.OperatorService(paths)
        started: list[
            services.RegistryService | services.NodeAgentService | services.OperatorService
        ] = []
        try:
            for service in (registry, node_agent, operator):
                service.start()
                started.append(service)
            yield System(plane, node_agent)
        finally:
            services.remove_all_sandboxes(plane, timeout=60)
            for service in reversed(started):
                service.stop()
            services.kill_leftover_vms(state)
    # Only now: the control plane finds its processes through pid files in the state dir.
    shutil.rmtree(state, ignore_errors=True)
