"""The devenv's real node: a kubelet + containerd + kube-proxy node joined to a real control
plane, running a Pod whose image comes from a plain-HTTP registry on loopback through the
``docker.io`` mirror; logs, exec, a ClusterIP Service from the host, kubectl in a Pod reaching
the apiserver through the ``kubernetes`` Service with its ServiceAccount token (in-cluster
configuration, TLS verified), and the machine-wide lock. One node for the module (the
lock allows one per machine); ``test_realnode_stop`` checks what a stop leaves."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import select
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client

from kubesandbox_devenv import hostnet
from kubesandbox_devenv.binaries import KUBERNETES_VERSION, ensure_binaries, ensure_node_binaries
from kubesandbox_devenv.controlplane import ControlPlane
from kubesandbox_devenv.nodeconfig import NODE_AGENT_LABEL, POD_SUBNET
from kubesandbox_devenv.realnode import NodeStartReport, RealNode, RealNodeBusyError
from kubesandbox_devenv.registry import Layout, Registry, build_image, file, layer_tar
from kubesandbox_devenv.services import busybox_image_entries
from tests.support.waiting import eventually

pytestmark = [pytest.mark.controlplane, pytest.mark.registry, pytest.mark.slow]

NAMESPACE = "default"
KUBECTL_IMAGE = "kubesandbox-test/kubectl:1"
SERVER_POD = "web"
HTTP_PORT = 8080
SERVER_SCRIPT = (
    "mkdir -p /www && hostname > /www/index.html && echo serving-from-the-pod && "
    f"exec httpd -f -p {HTTP_PORT} -h /www"
)


@dataclass(frozen=True)
class NodeEnv:
    plane: ControlPlane
    node: RealNode
    report: NodeStartReport
    registry: Registry


def fetch(url: str) -> str:
    """GET without any proxy from the environment (these addresses are on this machine)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as response:
        return str(response.read().decode())


def push_busybox(registry: Registry, workdir: Path) -> None:
    """busybox as Docker Hub's ``library/busybox:1.36``, so ``busybox:1.36`` resolves through
    the node's ``docker.io`` mirror (as the devenv registry preloads it)."""
    layout = Layout(workdir)
    layout.add_image("busybox", build_image([layer_tar(busybox_image_entries())]))
    registry.push(layout, "busybox", "library/busybox", "1.36")


def push_kubectl(registry: Registry, workdir: Path, kubectl: Path) -> str:
    """busybox plus our static kubectl, by its loopback address (plain HTTP, no mirror)."""
    layout = Layout(workdir)
    tools = layer_tar([file("bin/kubectl", kubectl.read_bytes(), 0o755)])
    layout.add_image(
        "kubectl", build_image([layer_tar(busybox_image_entries()), tools], compress=False)
    )
    repository, tag = KUBECTL_IMAGE.split(":")
    return registry.push(layout, "kubectl", repository, tag)


def pod(name: str, command: str, image: str = "busybox:1.36", **spec: object) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": name}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": image, "command": ["sh", "-c", command]}],
            **spec,
        },
    }


def wait_pod(
    plane: ControlPlane, name: str, phase: str = "Running", timeout: float = 120.0
) -> client.V1Pod:
    with plane.api_client() as api:
        core = client.CoreV1Api(api)

        def reached() -> client.V1Pod | None:
            found = core.read_namespaced_pod(name, NAMESPACE)
            return found if found.status and found.status.phase == phase else None

        def describe() -> str:
            return plane.kubectl("describe", "pod", name, "-n", NAMESPACE, check=False).stdout

        return eventually(reached, timeout, describe)


@pytest.fixture(scope="module")
def node_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeEnv]:
    work = tmp_path_factory.mktemp("realnode")
    registry = Registry(work / "registry").start()
    try:
        push_busybox(registry, work / "layout")
        with ControlPlane(work / "env", real_node=True, binaries=ensure_binaries()) as plane:
            node = RealNode(plane, binaries=ensure_node_binaries())
            node.configure_registry(registry.host, mirror_docker_io=True)
            report = node.start()
            try:
                yield NodeEnv(plane, node, report, registry)
            finally:
                node.stop()
    finally:
        registry.stop()


@pytest.fixture(scope="module")
def web(node_env: NodeEnv) -> client.V1Pod:
    """A Pod serving its hostname over HTTP on 8080, Running."""
    node_env.plane.kubectl(
        "apply", "-f", "-", input_text=json.dumps(pod(SERVER_POD, SERVER_SCRIPT))
    )
    return wait_pod(node_env.plane, SERVER_POD)


def test_the_node_registers_ready_with_its_name_address_and_labels(node_env: NodeEnv) -> None:
    with node_env.plane.api_client() as api:
        node = client.CoreV1Api(api).read_node(node_env.node.node_name)
    assert node.status is not None
    assert node.metadata is not None
    ready = next(c for c in node.status.conditions or [] if c.type == "Ready")
    assert ready.status == "True"
    addresses = {a.type: a.address for a in node.status.addresses or []}
    assert addresses["InternalIP"] == node_env.node.node_ip
    labels = node.metadata.labels or {}
    assert labels["kubernetes.io/os"] == "linux"
    assert labels[NODE_AGENT_LABEL] == "true"
    info = node.status.node_info
    assert info is not None
    assert info.kubelet_version == KUBERNETES_VERSION
    assert info.container_runtime_version.startswith("containerd://1.6")
    assert not [t for t in (node.spec.taints if node.spec else None) or []]
    assert set(node_env.report.components) == {"containerd", "kubelet", "kube-proxy"}
    pids = node_env.node.status()
    again = node_env.node.start()
    assert again.components == {}
    assert node_env.node.status() == pids


def test_a_pod_runs_from_the_loopback_registry_with_a_pod_ip(
    node_env: NodeEnv, web: client.V1Pod
) -> None:
    assert web.status is not None
    assert web.spec is not None
    assert web.spec.node_name == node_env.node.node_name
    assert ipaddress.ip_address(web.status.pod_ip or "") in ipaddress.ip_network(POD_SUBNET)
    images = node_env.node.images()
    assert "docker.io/library/busybox:1.36" in images


def test_logs_exec_port_forward_and_the_node_proxy_reach_the_kubelet(
    node_env: NodeEnv, web: client.V1Pod
) -> None:
    """What the apiserver does through the kubelet, with its client certificate."""
    plane = node_env.plane
    assert "serving-from-the-pod" in plane.kubectl("logs", SERVER_POD, "-n", NAMESPACE).stdout
    executed = plane.kubectl(
        "exec", SERVER_POD, "-n", NAMESPACE, "--", "sh", "-c", "echo exec-$(hostname)"
    ).stdout
    assert executed.strip() == f"exec-{SERVER_POD}"
    healthz = f"/api/v1/nodes/{node_env.node.node_name}/proxy/healthz"
    assert plane.kubectl("get", "--raw", healthz).stdout == "ok"
    forward = subprocess.Popen(
        [str(plane.binaries.kubectl), "port-forward", "-n", NAMESPACE, f"pod/{SERVER_POD}",
         f":{HTTP_PORT}"],
        env=dict(os.environ, KUBECONFIG=str(plane.kubeconfig)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        assert forward.stdout is not None
        ready, _, _ = select.select([forward.stdout], [], [], 60)
        assert ready, "kubectl port-forward said nothing in 60 s"
        announced = forward.stdout.readline()  # Forwarding from 127.0.0.1:<port> -> 8080
        local = re.search(r"127\.0\.0\.1:(\d+)", announced)
        assert local, announced
        assert fetch(f"http://127.0.0.1:{local.group(1)}/").strip() == SERVER_POD
    finally:
        forward.terminate()
        forward.wait(timeout=10)
        if forward.stdout is not None:
            forward.stdout.close()


def test_a_cluster_ip_service_reaches_the_pod_from_the_host(
    node_env: NodeEnv, web: client.V1Pod
) -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": SERVER_POD, "namespace": NAMESPACE},
        "spec": {"selector": {"app": SERVER_POD}, "ports": [{"port": 80, "targetPort": HTTP_PORT}]},
    }
    node_env.plane.kubectl("apply", "-f", "-", input_text=json.dumps(service))
    cluster_ip = node_env.plane.kubectl(
        "get", "service", SERVER_POD, "-n", NAMESPACE, "-o", "jsonpath={.spec.clusterIP}"
    ).stdout

    def answer() -> str | None:
        try:
            return fetch(f"http://{cluster_ip}/")
        except OSError:
            return None  # until kube-proxy has programmed the Service

    body = eventually(answer, 60, f"GET http://{cluster_ip}/ (Service {SERVER_POD})")
    assert body.strip() == SERVER_POD


def test_kubectl_in_a_pod_reaches_the_apiserver_through_the_kubernetes_service(
    node_env: NodeEnv, tmp_path: Path
) -> None:
    """In-cluster configuration: 10.96.0.1:443 from the injected environment, the token and
    the CA of the ServiceAccount volume; kube-proxy carries it to the apiserver on the node IP,
    whose certificate must be valid for 10.96.0.1."""
    image = push_kubectl(node_env.registry, tmp_path / "layout", node_env.plane.binaries.kubectl)
    script = (
        'echo "via $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"; kubectl auth whoami -o json'
    )
    manifest = pod("whoami", script, image=image, restartPolicy="Never")
    node_env.plane.kubectl("apply", "-f", "-", input_text=json.dumps(manifest))
    wait_pod(node_env.plane, "whoami", phase="Succeeded")
    logs = node_env.plane.kubectl("logs", "whoami", "-n", NAMESPACE).stdout
    via, _, answer = logs.partition("\n")
    assert via == "via 10.96.0.1:443"
    user = json.loads(answer)["status"]["userInfo"]
    assert user["username"] == f"system:serviceaccount:{NAMESPACE}:default"
    assert user["extra"]["authentication.kubernetes.io/node-name"] == [node_env.node.node_name]


def test_a_second_real_node_on_the_machine_is_refused_naming_the_holder(
    node_env: NodeEnv, web: client.V1Pod, tmp_path: Path
) -> None:
    other = RealNode(ControlPlane(tmp_path, real_node=True), binaries=node_env.node.binaries)
    with pytest.raises(RealNodeBusyError, match=re.escape(str(node_env.plane.layout.root))):
        other.start()
    chains = hostnet.our_chains()
    # The `down` of an environment whose node ran once and is gone leaves this one alone.
    other.layout.root.mkdir(parents=True)
    shutil.copy(node_env.node.layout.kube_proxy_config, other.layout.kube_proxy_config)
    other.stop()
    assert node_env.node.is_alive()
    assert hostnet.our_chains() == chains
    assert wait_pod(node_env.plane, SERVER_POD).status is not None


def test_start_again_restarts_only_a_dead_kubelet(node_env: NodeEnv) -> None:
    before = node_env.node.status()
    kubelet = before["kubelet"]
    assert kubelet is not None
    os.kill(kubelet, signal.SIGKILL)
    eventually(lambda: not node_env.node.kubelet.is_alive(), 15, "the killed kubelet gone")
    report = node_env.node.start()
    assert list(report.components) == ["kubelet"]
    after = node_env.node.status()
    assert after["kubelet"] not in (None, kubelet)
    assert {k: v for k, v in after.items() if k != "kubelet"} == {
        k: v for k, v in before.items() if k != "kubelet"
    }
