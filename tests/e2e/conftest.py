"""The whole system of ``make up``, in a pytest temporary directory: a control plane with one
node, the preloaded registry, a node agent and the operator, all tied to the test process."""

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kubesandbox_devenv import services
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
    with services.running_system("ksb-e2e-") as running:
        yield System(running.plane, running.node_agent)
