"""The whole system as ``make up`` installs it, in a temporary directory and tied to the test
process: a control plane, a real kubelet node, the preloaded registry, the Dockerfile's images
built from this tree, and the Helm chart, whose operator, gateway and node agent run as Pods
(``kubesandbox_devenv.installed``). One for the package: it ends before the other tests that
need the machine's one real node.

For tests of the gateway, the SDK and ``kubectl sandbox``: ``system.gateway_url`` (base URL,
no ``/ns/`` suffix), ``system.demo_token`` (ServiceAccount ``default/demo``, bound to ``edit``
in ``default``), ``system.token_for(namespace, name, cluster_role=None)`` (a new
ServiceAccount's token, bound to that ClusterRole in that namespace when given) and
``system.kubeconfig_for(token, namespace)`` (a kubeconfig file with that token);
``system.upstream_ca``: the CA the node agent trusts upstream (the egress test hosts')."""

import asyncio
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kubesandbox_devenv import installed, services
from kubesandbox_devenv.controlplane import ControlPlane
from tests.support.egress import TestCA
from tests.support.waiting import eventually


@dataclass
class System:
    plane: ControlPlane
    installed: installed.InstalledSystem
    gateway_url: str = ""
    """The gateway's base URL; the SDK's ``MSB_API_URL`` is ``{gateway_url}/ns/{namespace}``."""
    demo_token: str = ""
    """``default/demo``, bound to ``edit`` in ``default``."""
    registry: str = ""
    """The preloaded registry's ``host:port`` (``busybox:1.36`` resolves through it)."""
    files: Path = Path()
    upstream_ca: TestCA | None = None
    """The CA the node agent's egress proxy trusts besides the node's store (test hosts')."""

    def token_for(self, namespace: str, name: str, cluster_role: str | None = None) -> str:
        """A token of the ServiceAccount ``namespace/name`` (created, and the namespace too,
        when missing), bound to ``cluster_role`` (``edit``, ``view``, ...) in ``namespace``
        when given; without one it authenticates but has no rights on sandboxes."""
        self.ensure_namespace(namespace)
        return services.issue_token(self.plane, namespace, name, cluster_role)

    def kubeconfig_for(self, token: str, namespace: str) -> Path:
        """A kubeconfig file (0600) that authenticates with ``token``, namespace ``namespace``."""
        descriptor, name = tempfile.mkstemp(prefix="kubeconfig-", dir=self.files)
        os.close(descriptor)
        return services.write_kubeconfig(self.plane, Path(name), token, namespace)

    def ensure_namespace(self, namespace: str) -> None:
        manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
        self.plane.kubectl("apply", "-f", "-", input_text=json.dumps(manifest))

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
        return asyncio.run(services.run_in_sandbox(self.relay_socket(body), command))

    def relay_socket(self, sandbox: dict[str, Any]) -> Path:
        """The node agent's relay socket of ``sandbox``'s VM (a hostPath of its Pod)."""
        return self.installed.relay_socket(sandbox["metadata"]["uid"])

    def replace_node_agent_pod(self) -> None:
        """Deletes the node agent's Pod (an upgrade, an eviction) and waits until its
        replacement is Ready."""
        old = self.installed.node_agent_pod()
        assert old is not None
        self.plane.kubectl(
            "delete", "pod", old["metadata"]["name"], "-n", installed.SYSTEM_NAMESPACE, "--wait"
        )  # fmt: skip

        def replaced() -> dict[str, Any] | None:
            pod = self.installed.node_agent_pod()
            return pod if pod and pod["metadata"]["uid"] != old["metadata"]["uid"] else None

        eventually(replaced, 300, "a new node agent Pod, Ready")

    def delete_and_wait(self, path: Path) -> None:
        self.plane.kubectl("delete", "-f", str(path), "--wait", "--timeout=120s")


@pytest.fixture(scope="package")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    # The egress tests' hosts serve certificates of this CA; the node agent is installed
    # trusting it upstream (the chart's nodeAgent.egressUpstreamCA), as a platform team
    # would install it for a private CA of the APIs its tenants call.
    upstream_ca = TestCA(tmp_path_factory.mktemp("upstream-ca"))
    overrides = {"nodeAgent": {"egressUpstreamCA": upstream_ca.pem.read_text()}}
    with installed.installed_system("ksbe-", overrides=overrides) as running:
        files = running.paths.state_dir / "e2e"
        files.mkdir(mode=0o700)
        yield System(
            running.plane,
            running,
            gateway_url=running.gateway_url,
            demo_token=running.demo_token,
            registry=running.registry.host,
            files=files,
            upstream_ca=upstream_ca,
        )
