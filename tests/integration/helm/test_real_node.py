"""The chart installed on a real kubelet node (the devenv's ``RealNode``: kubelet, containerd,
kube-proxy) with the images built from this tree (``devenv/images.py``), pulled from a plain-HTTP
registry on loopback, and ``devenv/values-devenv.yaml``: the operator, the gateway and the node
agent run as Pods, a Sandbox boots a real VM (TCG), the VM survives the deletion of the node
agent's Pod (same QEMU process, re-adopted by the new Pod), and ``helm uninstall`` (its
pre-delete hook) leaves no Sandbox, QEMU process, network namespace or sandbox directory.

The node agent's directories are a short temporary folder (QEMU's unix sockets live below the
state directory, and socket paths are limited to 108 bytes), not the host's /var/lib."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubesandbox_devenv import images
from kubesandbox_devenv.binaries import (
    REPO_ROOT,
    ensure_binaries,
    ensure_helm,
    ensure_node_binaries,
)
from kubesandbox_devenv.controlplane import ControlPlane
from kubesandbox_devenv.helm import CHART_DIR, RELEASE, Helm, values_args
from kubesandbox_devenv.realnode import RealNode
from kubesandbox_devenv.registry import Registry
from tests.integration.devenv.test_realnode import push_busybox
from tests.integration.helm.conftest import DEVENV_VALUES, SYSTEM, JsonDict
from tests.support.waiting import eventually

pytestmark = [pytest.mark.controlplane, pytest.mark.registry, pytest.mark.vm, pytest.mark.slow]

SANDBOXES = "sandboxes.kubesandbox.dev"
NODE_AGENT = "app.kubernetes.io/component=node-agent"


@dataclass(frozen=True)
class Installed:
    plane: ControlPlane
    helm: Helm
    node: RealNode
    state_dir: Path

    def kubectl_json(self, *args: str) -> JsonDict:
        found: JsonDict = json.loads(self.plane.kubectl(*args, "-o", "json").stdout)
        return found

    def node_agent_pod(self) -> JsonDict | None:
        pods = self.kubectl_json("get", "pods", "-n", SYSTEM, "-l", NODE_AGENT)["items"]
        ready = [
            p for p in pods
            if not p["metadata"].get("deletionTimestamp")
            and any(c["type"] == "Ready" and c["status"] == "True"
                    for c in p.get("status", {}).get("conditions", []))
        ]  # fmt: skip
        return ready[0] if len(ready) == 1 else None

    def logs(self, selector: str) -> str:
        result = self.plane.kubectl(
            "logs", "-n", SYSTEM, "-l", selector, "--tail=40", check=False
        )  # fmt: skip
        return result.stdout[-4000:] + result.stderr[-1000:]


def frozen_source(into: Path) -> Path:
    """This checkout's build inputs in a repository of their own (others edit the checkout
    meanwhile; the image tag must not move under this module)."""
    for name in images.input_files(REPO_ROOT):
        (into / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, into / name)
    subprocess.run(["git", "init", "-q", str(into)], check=True)
    subprocess.run(["git", "-C", str(into), "add", "-A"], check=True)
    return into


def qemu_pids(state_dir: Path) -> dict[int, str]:
    """QEMU processes of this node agent (their sockets are below its state directory)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            argv
            and argv[0].endswith(b"qemu-system-x86_64")
            and str(state_dir).encode() in (b" ".join(argv))
        ):
            found[int(proc.name)] = (proc / "stat").read_text().split()[21]  # start time
    return found


def netns_names() -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    work = tmp_path_factory.mktemp("chart-on-node")
    short = Path(tempfile.mkdtemp(prefix="ksbh-", dir="/tmp"))
    short.chmod(0o755)  # as /var/lib is: QEMU drops to `nobody` and still opens its files
    registry = Registry(work / "registry").start()
    try:
        push_busybox(registry, work / "layout")
        built = images.build_images(registry.host, repo=frozen_source(work / "source"))
        with ControlPlane(work / "env", real_node=True, binaries=ensure_binaries()) as plane:
            helm = Helm(ensure_helm(), home=work / "helm", kubeconfig=Path(plane.kubeconfig))
            node = RealNode(plane, binaries=ensure_node_binaries())
            node.configure_registry(registry.host, mirror_docker_io=True)
            node.start()
            try:
                values = {
                    "image": {"registry": registry.host, "tag": built.tag},
                    "nodeAgent": {
                        "plainHttpRegistries": [registry.host],
                        "registryMirrors": {"docker.io": registry.host},
                        "stateDir": str(short / "state"),
                        "cacheDir": str(short / "cache"),
                    },
                }
                helm.run(
                    "install", RELEASE, str(CHART_DIR), "--namespace", SYSTEM,
                    "--create-namespace", "--values", str(DEVENV_VALUES), *values_args(values),
                    "--wait", "--timeout", "4m",
                )  # fmt: skip
                yield Installed(plane, helm, node, short / "state")
            finally:
                # a no-op after the uninstall test; the hook is for that test to exercise
                helm.run("uninstall", RELEASE, "-n", SYSTEM, "--no-hooks", check=False)
                node.stop()
    finally:
        registry.stop()
        for pid in qemu_pids(short):
            subprocess.run(["kill", "-9", str(pid)], check=False)
        shutil.rmtree(short, ignore_errors=True)


def test_every_component_runs_as_a_pod_and_the_node_agent_announces_https(
    installed: Installed,
) -> None:
    for name in ("kubesandbox-operator", "kubesandbox-gateway"):
        deployment = installed.kubectl_json("get", "deployment", name, "-n", SYSTEM)
        assert deployment["status"].get("availableReplicas") == 1, name
    # Helm's --wait counts a DaemonSet ready with maxUnavailable (1) Pods not ready yet
    pod = eventually(
        installed.node_agent_pod, 180, lambda: "the node agent Ready: " + installed.logs(NODE_AGENT)
    )
    lease = installed.kubectl_json(
        "get", "lease", f"node-agent-{installed.node.node_name}", "-n", SYSTEM
    )
    annotations = lease["metadata"]["annotations"]
    assert annotations["kubesandbox.dev/endpoint"] == f"https://{pod['status']['hostIP']}:9443"
    assert annotations["kubesandbox.dev/emulation"] == "true"
    assert "BEGIN CERTIFICATE" in annotations["kubesandbox.dev/tls-certificate"]


def running(installed: Installed, name: str) -> JsonDict | None:
    sandbox = installed.kubectl_json("get", SANDBOXES, name, "-n", "default")
    ready = [c for c in sandbox.get("status", {}).get("conditions", []) if c["type"] == "Ready"]
    return sandbox if ready and ready[0]["status"] == "True" else None


def test_a_sandbox_runs_and_survives_the_node_agents_pod(installed: Installed) -> None:
    installed.plane.kubectl("apply", "-n", "default", "-f", str(REPO_ROOT / "examples/hello.yaml"))
    sandbox = eventually(
        lambda: running(installed, "hello"), 300,
        lambda: "hello Ready: " + installed.logs(NODE_AGENT) + installed.logs(
            "app.kubernetes.io/component=operator"),
    )  # fmt: skip
    assert sandbox["status"]["phase"] == "Running"
    assert sandbox["status"]["nodeName"] == installed.node.node_name  # written past the policy
    before = qemu_pids(installed.state_dir)
    assert len(before) == 1, before

    old = installed.node_agent_pod()
    assert old is not None
    installed.plane.kubectl("delete", "pod", old["metadata"]["name"], "-n", SYSTEM)

    def replaced() -> JsonDict | None:
        pod = installed.node_agent_pod()
        return pod if pod and pod["metadata"]["uid"] != old["metadata"]["uid"] else None

    eventually(replaced, 300, lambda: "a new node agent Pod: " + installed.logs(NODE_AGENT))
    assert qemu_pids(installed.state_dir) == before  # the same process, never restarted
    after = eventually(lambda: running(installed, "hello"), 120, "hello Ready again")
    assert after["status"]["phase"] == "Running"
    logs = installed.logs(NODE_AGENT)
    assert '"adopted": 1' in logs, logs


def test_uninstall_leaves_no_vm_netns_or_sandbox_directory(installed: Installed) -> None:
    uid = installed.kubectl_json("get", SANDBOXES, "hello", "-n", "default")["metadata"]["uid"]
    assert f"ksb-{uid[:8]}" in netns_names()
    installed.helm.run("uninstall", RELEASE, "--namespace", SYSTEM, "--wait", "--timeout", "4m")
    listed = installed.kubectl_json("get", SANDBOXES, "-A")
    assert listed["items"] == []
    assert qemu_pids(installed.state_dir) == {}
    assert f"ksb-{uid[:8]}" not in netns_names()
    assert list((installed.state_dir / "sandboxes").iterdir()) == []
    assert list((installed.state_dir / "rootfs").iterdir()) == []
    # what stays: the CRD, the TLS identity, the (empty) named volume folder, the image cache
    assert installed.plane.kubectl("get", "crd", SANDBOXES).returncode == 0
    assert (installed.state_dir / "tls" / "tls.crt").is_file()
