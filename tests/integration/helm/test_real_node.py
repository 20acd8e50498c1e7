"""The chart installed on a real kubelet node, as ``make up`` installs it
(``kubesandbox_devenv.installed``: the images built from this tree and pulled from a plain-HTTP
registry on loopback, ``devenv/values-devenv.yaml``): every component runs as a Pod, the node
agent announces its HTTPS endpoint and pinned certificate in its Lease, a Sandbox's status is
written past the admission policy, a second ``helm upgrade`` with the same values replaces no
Pod, and ``helm uninstall`` (its pre-delete hook) leaves no Sandbox, QEMU process, network
namespace or sandbox directory. The end-to-end suite (tests/e2e) runs everything else against
the same install; what the node agent's Pod deletion does to a VM is tested there."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from kubesandbox_devenv import services
from kubesandbox_devenv.binaries import REPO_ROOT
from kubesandbox_devenv.helm import CHART_DIR, RELEASE, values_args
from kubesandbox_devenv.installed import (
    DEVENV_VALUES,
    SYSTEM_NAMESPACE,
    InstalledSystem,
    installed_system,
)
from tests.integration.helm.conftest import JsonDict
from tests.support.waiting import eventually

pytestmark = [pytest.mark.controlplane, pytest.mark.registry, pytest.mark.vm, pytest.mark.slow]

SANDBOXES = "sandboxes.kubesandbox.dev"


@pytest.fixture(scope="module")
def installed() -> Iterator[InstalledSystem]:
    with installed_system("ksbh-") as system:
        yield system


def kubectl_json(installed: InstalledSystem, *args: str) -> JsonDict:
    found: JsonDict = json.loads(installed.plane.kubectl(*args, "-o", "json").stdout)
    return found


def system_pods(installed: InstalledSystem) -> dict[str, str]:
    """Pod name → uid in the release's namespace."""
    listed = kubectl_json(installed, "get", "pods", "-n", SYSTEM_NAMESPACE)
    return {pod["metadata"]["name"]: pod["metadata"]["uid"] for pod in listed["items"]}


def test_every_component_runs_as_a_pod_and_the_node_agent_announces_https(
    installed: InstalledSystem,
) -> None:
    for name in ("kubesandbox-operator", "kubesandbox-gateway"):
        deployment = kubectl_json(installed, "get", "deployment", name, "-n", SYSTEM_NAMESPACE)
        assert deployment["status"].get("availableReplicas") == 1, name
    pod = installed.node_agent_pod()
    assert pod is not None
    lease = kubectl_json(
        installed, "get", "lease", f"node-agent-{installed.node.node_name}", "-n", SYSTEM_NAMESPACE
    )
    annotations = lease["metadata"]["annotations"]
    assert annotations["kubesandbox.dev/endpoint"] == f"https://{pod['status']['hostIP']}:9443"
    assert annotations["kubesandbox.dev/emulation"] == "true"
    assert "BEGIN CERTIFICATE" in annotations["kubesandbox.dev/tls-certificate"]


def test_an_upgrade_with_the_same_values_replaces_no_pod(installed: InstalledSystem) -> None:
    before = system_pods(installed)
    installed.helm.run(
        "upgrade", RELEASE, str(CHART_DIR), "--namespace", SYSTEM_NAMESPACE,
        "--values", str(DEVENV_VALUES), *values_args(installed.release.values()),
        "--wait", "--timeout", "4m",
    )  # fmt: skip
    assert system_pods(installed) == before


def running(installed: InstalledSystem, name: str) -> JsonDict | None:
    sandbox = kubectl_json(installed, "get", SANDBOXES, name, "-n", "default")
    ready = [c for c in sandbox.get("status", {}).get("conditions", []) if c["type"] == "Ready"]
    return sandbox if ready and ready[0]["status"] == "True" else None


def test_uninstall_leaves_no_vm_netns_or_sandbox_directory(installed: InstalledSystem) -> None:
    installed.plane.kubectl("apply", "-n", "default", "-f", str(REPO_ROOT / "examples/hello.yaml"))
    sandbox = eventually(lambda: running(installed, "hello"), 300, "hello Ready")
    assert sandbox["status"]["nodeName"] == installed.node.node_name  # written past the policy
    uid = sandbox["metadata"]["uid"]
    state = installed.dirs.state
    assert len(services.qemu_processes(str(state))) == 1
    assert f"ksb-{uid[:8]}" in services.netns_names()

    installed.helm.run(
        "uninstall", RELEASE, "--namespace", SYSTEM_NAMESPACE, "--wait", "--timeout", "4m"
    )  # fmt: skip

    assert kubectl_json(installed, "get", SANDBOXES, "-A")["items"] == []
    assert services.qemu_processes(str(state)) == {}
    assert f"ksb-{uid[:8]}" not in services.netns_names()
    assert list((state / "sandboxes").iterdir()) == []
    assert list((state / "rootfs").iterdir()) == []
    # what stays: the CRD, the TLS identity, the (empty) named volume folder, the image cache
    assert installed.plane.kubectl("get", "crd", SANDBOXES).returncode == 0
    assert (state / "tls" / "tls.crt").is_file()
