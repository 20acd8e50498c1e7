"""The system as platform teams install it, on this machine: the chart on a real node.

``make up`` and the end-to-end suite both run kubesandbox this way: a control plane made for a
real node, the local registry (plain HTTP on loopback, preloaded with ``busybox``), the images
of the Dockerfile built from this tree and pushed there (``images.build_images``: the tag is a
hash of the tree, so a changed tree is a new tag), a real kubelet node (``RealNode``) whose
containerd pulls from that registry, and ``helm upgrade --install kubesandbox helm/kubesandbox``
with ``devenv/values-devenv.yaml`` plus what only this run knows (:func:`release_values`). The
operator, the gateway and the node agent then run as Pods built from the image; the host
reaches the gateway on the node's address (a NodePort) and a VM's agent through the node
agent's relay socket, which lives in a hostPath directory (:class:`NodeDirs`).

Each piece is a component in the sense of :mod:`.cli` (start idempotently, say whether it is
alive, stop). :func:`installed_system` runs the same pieces tied to the calling process, in a
temporary directory, for tests and benchmarks.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubesandbox_devenv import images, services
from kubesandbox_devenv.binaries import (
    REPO_ROOT,
    ensure_binaries,
    ensure_helm,
    ensure_node_binaries,
)
from kubesandbox_devenv.controlplane import ControlPlane
from kubesandbox_devenv.helm import CHART_DIR, RELEASE, Helm, values_args
from kubesandbox_devenv.realnode import RealNode

SYSTEM_NAMESPACE = services.SYSTEM_NAMESPACE
DEVENV_VALUES = REPO_ROOT / "devenv" / "values-devenv.yaml"
GATEWAY_NODE_PORT = 30080
"""The gateway Service's NodePort: fixed, so that its URL is known before the install (it is
published on the Service as ``gateway.url``). One real node runs per machine, so one port."""
WORKLOADS = (
    ("deployment", "kubesandbox-operator"),
    ("deployment", "kubesandbox-gateway"),
    ("daemonset", "kubesandbox-node-agent"),
)
NODE_AGENT_PODS = "app.kubernetes.io/component=node-agent"
ROLLOUT_TIMEOUT = 300


@dataclass(frozen=True)
class NodeDirs:
    """The node agent's host directories (``nodeAgent.stateDir`` and ``.cacheDir``).

    ``make up`` uses the chart's defaults, ``/var/lib/kubesandbox`` and
    ``/var/cache/kubesandbox``; tests use a short temporary state directory of their own (the
    VMs' unix sockets live below it, and socket paths are limited to 108 bytes). Every
    directory on the way must be searchable by others: QEMU drops to ``nobody``."""

    state: Path = Path("/var/lib/kubesandbox")
    cache: Path = Path("/var/cache/kubesandbox")

    def relay_socket(self, uid: str) -> Path:
        """The node agent's relay for the VM of the Sandbox with ``uid`` (the agent protocol;
        any number of clients)."""
        return self.state / "sandboxes" / uid / "agent.sock"


def gateway_url(node: RealNode) -> str:
    return f"http://{node.node_ip}:{GATEWAY_NODE_PORT}"


def release_values(registry: str, tag: str, node: RealNode, dirs: NodeDirs) -> dict[str, Any]:
    """What only this run knows, on top of ``devenv/values-devenv.yaml``."""
    return {
        "image": {"registry": registry, "tag": tag},
        "gateway": {"url": gateway_url(node), "service": {"nodePort": GATEWAY_NODE_PORT}},
        "nodeAgent": {
            "plainHttpRegistries": [registry],
            "registryMirrors": {"docker.io": registry},
            "stateDir": str(dirs.state),
            "cacheDir": str(dirs.cache),
        },
    }


def merge_values(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in, map into map (as Helm merges values files)."""
    merged = dict(base)
    for key, value in overrides.items():
        below = merged.get(key)
        if isinstance(value, Mapping) and isinstance(below, Mapping):
            merged[key] = merge_values(below, value)
        else:
            merged[key] = value
    return merged


class RealNodeComponent:
    """The real node, its containerd told to pull from the local registry."""

    name = "node"

    def __init__(self, node: RealNode, registry: services.RegistryService) -> None:
        self.node = node
        self.registry = registry

    def start(self) -> str:
        self.node.configure_registry(self.registry.host, mirror_docker_io=True)
        return f"{self.node.node_name} at {self.node.node_ip}: {self.node.start().summary()}"

    def is_alive(self) -> bool:
        return self.node.is_alive()

    def stop(self) -> None:
        self.node.stop()


class ImagesComponent:
    """The Dockerfile's images for this tree, in the local registry (cached by content)."""

    name = "images"

    def __init__(self, registry: services.RegistryService, *, repo: Path = REPO_ROOT) -> None:
        self.registry = registry
        self.repo = repo
        self.built: images.Images | None = None

    def start(self) -> str:
        self.built = images.build_images(self.registry.host, repo=self.repo, log=True)
        return self.built.describe().replace("\n", "; ")

    @property
    def tag(self) -> str:
        if self.built is None:
            raise services.ServiceError("images: not built yet (start comes first)")
        return self.built.tag

    def is_alive(self) -> bool:
        """Images do not run; they are there when the registry is."""
        return self.registry.is_alive()

    def stop(self) -> None:
        """The registry keeps them; the build cache too."""


class ReleaseComponent:
    """``helm upgrade --install`` of the chart, then every workload rolled out and the gateway
    answering on the node's address. An unchanged tree and values change nothing (Helm makes
    no new Pods); a changed tree is a new image tag, which rolls what uses it."""

    name = "release"

    def __init__(
        self,
        helm: Helm,
        plane: ControlPlane,
        node: RealNode,
        images_component: ImagesComponent,
        registry: services.RegistryService,
        dirs: NodeDirs,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.helm = helm
        self.plane = plane
        self.node = node
        self.images = images_component
        self.registry = registry
        self.dirs = dirs
        self.overrides = overrides or {}

    @property
    def gateway_url(self) -> str:
        return gateway_url(self.node)

    def values(self) -> dict[str, Any]:
        values = release_values(self.registry.host, self.images.tag, self.node, self.dirs)
        return merge_values(values, self.overrides)

    def start(self) -> str:
        self.helm.run(
            "upgrade", "--install", RELEASE, str(CHART_DIR),
            "--namespace", SYSTEM_NAMESPACE, "--create-namespace",
            "--values", str(DEVENV_VALUES), *values_args(self.values()),
            "--wait", "--timeout", "4m",
        )  # fmt: skip
        for kind, name in WORKLOADS:
            # helm --wait counts a DaemonSet of one node ready while its one Pod is not
            # (maxUnavailable 1): rollout status waits for the Pod itself.
            self.plane.kubectl(
                "rollout", "status", f"{kind}/{name}", "-n", SYSTEM_NAMESPACE,
                f"--timeout={ROLLOUT_TIMEOUT}s",
            )  # fmt: skip
        self.wait_gateway()
        status = json.loads(
            self.helm.run("status", RELEASE, "-n", SYSTEM_NAMESPACE, "-o", "json").stdout
        )
        return f"revision {status['version']}, images {self.images.tag}, gateway {self.gateway_url}"

    def wait_gateway(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not services.http_ok(f"{self.gateway_url}/healthz"):
            if time.monotonic() > deadline:
                raise services.ServiceError(
                    f"the gateway does not answer at {self.gateway_url} (NodePort "
                    f"{GATEWAY_NODE_PORT} through kube-proxy): "
                    + self.logs("app.kubernetes.io/component=gateway")
                )
            time.sleep(0.5)

    def logs(self, selector: str) -> str:
        result = self.plane.kubectl(
            "logs", "-n", SYSTEM_NAMESPACE, "-l", selector, "--tail=30", check=False
        )  # fmt: skip
        return (result.stdout + result.stderr)[-3000:]

    def is_alive(self) -> bool:
        if self.plane.status().get("kube-apiserver") is None:
            return False
        deployed = self.helm.run("status", RELEASE, "-n", SYSTEM_NAMESPACE, check=False)
        return deployed.returncode == 0 and services.http_ok(f"{self.gateway_url}/healthz")

    def stop(self) -> None:
        """The release stays installed (it lives in etcd): the next ``up`` finds it and
        upgrades it. ``helm uninstall`` removes it, its pre-delete hook the sandboxes first."""


class LinkComponent:
    """``.kubesandbox/bin/<name>``: a link to a cached binary of the pinned version."""

    def __init__(self, name: str, link: Path, target: Path) -> None:
        self.name = name
        self.link = link
        self.target = target

    def start(self) -> str:
        self.link.parent.mkdir(parents=True, exist_ok=True)
        if self.link.is_symlink() or self.link.exists():
            self.link.unlink()
        try:
            self.link.symlink_to(self.target)
        except OSError:
            shutil.copy2(self.target, self.link)
        return str(self.link)

    def is_alive(self) -> bool:
        return self.link.exists()

    def stop(self) -> None:
        """The link stays: it is harmless and ``up`` refreshes it."""


@dataclass(frozen=True)
class InstalledSystem:
    """The chart on the real node, as :func:`installed_system` installed it."""

    plane: ControlPlane
    node: RealNode
    helm: Helm
    registry: services.RegistryService
    release: ReleaseComponent
    dirs: NodeDirs
    paths: services.Paths
    demo_token: str
    """A token of ``default/demo``, bound to ``edit`` in ``default``."""

    @property
    def gateway_url(self) -> str:
        return self.release.gateway_url

    def relay_socket(self, uid: str) -> Path:
        return self.dirs.relay_socket(uid)

    def container_pid(self, container: str) -> int:
        """The host pid of the running container ``container`` (``operator``, ``gateway``,
        ``node-agent``) of the release's Pods, from the CRI; ``LookupError`` unless exactly
        one runs."""
        listed = self.node.crictl(
            "ps", "--state", "Running", "--namespace", SYSTEM_NAMESPACE,
            "--label", f"io.kubernetes.container.name={container}", "-q",
        )  # fmt: skip
        ids = listed.stdout.split()
        if len(ids) != 1:
            raise LookupError(f"running {container} containers: {ids}")
        info = json.loads(self.node.crictl("inspect", ids[0]).stdout)["info"]
        pid = info.get("pid")
        if not isinstance(pid, int) or pid <= 0:
            raise LookupError(f"{container} container {ids[0]} has no process: {info}")
        return pid

    def node_agent_pod(self) -> dict[str, Any] | None:
        """The node agent's Pod when exactly one is Ready and none is being deleted."""
        listed = self.plane.kubectl(
            "get", "pods", "-n", SYSTEM_NAMESPACE, "-l", NODE_AGENT_PODS, "-o", "json"
        )  # fmt: skip
        pods = [
            pod for pod in json.loads(listed.stdout)["items"]
            if not pod["metadata"].get("deletionTimestamp")
            and any(c["type"] == "Ready" and c["status"] == "True"
                    for c in pod.get("status", {}).get("conditions", []))
        ]  # fmt: skip
        return pods[0] if len(pods) == 1 else None


@contextmanager
def installed_system(
    prefix: str, *, cleanup_timeout: float = 300.0, overrides: Mapping[str, Any] | None = None
) -> Iterator[InstalledSystem]:
    """Everything ``make up`` installs, in a fresh short temporary directory, tied to this
    process (tests and benchmarks); ``overrides`` are chart values on top of the devenv's (a
    benchmark's capacity settings, say). The node agent's state directory is below it (its cache is
    the chart's default, shared with ``make up``: images are content-addressed). On exit every
    sandbox is deleted while the system still runs, then the node, the registry and the control
    plane stop and the directory is removed. Only one real node runs per machine: this fails
    naming the holder while ``make up``'s environment (or another test's) runs."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    root.chmod(0o755)  # QEMU drops to `nobody` and still opens what is below
    dirs = NodeDirs(state=root / "state")
    paths = services.Paths(root / "env", tied=True)
    try:
        with ExitStack() as stack:
            plane = stack.enter_context(
                ControlPlane(paths.state_dir, real_node=True, binaries=ensure_binaries())
            )
            helm = Helm(ensure_helm(), home=root / "helm", kubeconfig=Path(plane.kubeconfig))
            node = RealNode(plane, binaries=ensure_node_binaries())
            registry = services.RegistryService(paths)
            built = ImagesComponent(registry)
            release = ReleaseComponent(helm, plane, node, built, registry, dirs, overrides)
            access = services.AccessComponent(paths, plane, apply_rbac=False)
            registry.start()
            stack.callback(registry.stop)
            built.start()
            RealNodeComponent(node, registry).start()
            stack.callback(node.stop)
            stack.callback(services.kill_leftover_vms, dirs.state)
            stack.callback(services.remove_all_sandboxes, plane, cleanup_timeout)
            plane.install_crds(REPO_ROOT / "crds")
            release.start()
            access.start()
            demo_token = access.token_file.read_text().strip()
            yield InstalledSystem(plane, node, helm, registry, release, dirs, paths, demo_token)
    finally:
        # Only after the control plane stopped: it finds its processes through pid files here.
        shutil.rmtree(root, ignore_errors=True)
