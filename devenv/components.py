"""The control-plane processes: their command lines, and the Component shape they share.

A component is anything ``kubesandbox-devenv up`` keeps running: it can be started, asked
whether it is alive, and stopped. The four control-plane processes are ``ProcessComponent``s;
later issues add the operator, node agent, registry and gateway the same way.

Why these flags (docs/devenv.md has the long version):

* everything listens on 127.0.0.1 only, on ports picked free at start; with a real node
  (``node_ip`` given, see ``realnode``) kube-apiserver listens on every address and advertises
  the node's, so Pods reach it through the ``kubernetes`` Service (10.96.0.1:443) via
  kube-proxy, and the endpoint reconciler (lease) keeps that Service's endpoints;
* etcd is single-member with ``--unsafe-no-fsync``: the data is disposable and fsync is what
  makes etcd slow on a shared disk;
* kube-apiserver authenticates x509 clients against the cluster CA and service-account tokens
  against our signing key, authorizes with the Node authorizer and RBAC and admits with
  ``NodeRestriction`` (a kubelet may touch only its own Node and its Pods), reaches kubelets
  with a client certificate bound to ``system:kubelet-api-admin`` and verifies their serving
  certificates against our CA, and carries the requestheader flags with the separate
  front-proxy CA so an aggregated API can be registered later;
* without a real node (the kubelet-less Nodes of ``nodes``) nothing would ever clear the
  ``node.kubernetes.io/not-ready`` taint: the ``TaintNodesByCondition`` admission plugin is
  disabled and so is the node-lifecycle controller (it would mark the registered Nodes
  NotReady after 40 s without heartbeats and evict their Pods). Tests that need a lost node set
  its Ready condition themselves. With a real node both are on, as in a real cluster: the
  kubelet heartbeats, and the controller lifts the taint once the node reports Ready;
* the controller manager and the scheduler use their own client certificates
  (``system:kube-controller-manager``, ``system:kube-scheduler``: the bootstrap RBAC names) and
  serve their health ports with a certificate from our CA, so probes verify TLS.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from kubesandbox_devenv.binaries import Binaries
from kubesandbox_devenv.certs import ClusterPKI
from kubesandbox_devenv.probes import HealthProbe, wait_healthy
from kubesandbox_devenv.processes import ManagedProcess

SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
DISABLED_CONTROLLERS = ("node-lifecycle-controller",)
DISABLED_ADMISSION_PLUGINS = ("TaintNodesByCondition",)
"""Both only without a real node (see the module docstring)."""
ENABLED_ADMISSION_PLUGINS = ("NodeRestriction",)
KUBELET_ADDRESS_TYPES = ("InternalIP", "Hostname")
"""The apiserver tries a Node's hostname first by default; ours does not resolve."""


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` ports the kernel says are free on ``host`` now (all bound at once, so they
    are distinct); another process may take one before its user binds it."""
    with ExitStack() as stack:
        sockets = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]


class Component(Protocol):
    """What ``up``/``down``/``status`` and ``ControlPlane`` need from a running piece."""

    name: str

    def start(self) -> None:
        """Launch it; return without waiting for it to be ready."""

    def wait_ready(self, deadline: float) -> float:
        """Block until it serves (monotonic ``deadline``); return the seconds waited."""

    def is_alive(self) -> bool: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class Ports:
    """The loopback ports of one control plane (kept in the state dir for restarts)."""

    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int

    @classmethod
    def pick(cls) -> Ports:
        """Ports the kernel says are free now."""
        return cls(*free_ports(5))

    @classmethod
    def load(cls, path: Path) -> Ports | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (FileNotFoundError, TypeError, ValueError):
            return None

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")


@dataclass(frozen=True)
class Layout:
    """Where everything of one environment lives, under its state directory."""

    root: Path

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def ports(self) -> Path:
        return self.root / "run" / "ports.json"

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (certificates embedded)."""
        return self.root / "kubeconfig"

    @property
    def component_kubeconfigs(self) -> Path:
        return self.root / "kubeconfigs"


class ProcessComponent:
    """A component that is one child process with a health endpoint."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        probe: HealthProbe,
        layout: Layout,
        *,
        tied: bool,
    ) -> None:
        self.name = name
        self.argv = argv
        self.probe = probe
        self.tied = tied
        self.process = ManagedProcess(name, layout.logs, layout.run)

    def start(self) -> None:
        self.process.start(self.argv, tied=self.tied)

    def wait_ready(self, deadline: float) -> float:
        return wait_healthy(self.process, self.probe, deadline)

    def is_alive(self) -> bool:
        return self.process.is_alive()

    def stop(self) -> None:
        self.process.stop()


def etcd_argv(binaries: Binaries, layout: Layout, ports: Ports) -> list[str]:
    client = f"http://127.0.0.1:{ports.etcd_client}"
    peer = f"http://127.0.0.1:{ports.etcd_peer}"
    return [
        str(binaries.etcd),
        "--name=kubesandbox",
        f"--data-dir={layout.etcd_data}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=kubesandbox={peer}",
        "--unsafe-no-fsync=true",
        "--log-level=warn",
    ]


def apiserver_argv(
    binaries: Binaries, layout: Layout, pki: ClusterPKI, ports: Ports, node_ip: str | None = None
) -> list[str]:
    """``node_ip``: a real node runs, and its Pods must reach us at that address."""
    if node_ip is None:
        # The `kubernetes` Service's endpoints would have to be 127.0.0.1, which Endpoints
        # validation refuses; no Pod runs here to use them anyway.
        network = ["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"]
        network.append("--endpoint-reconciler-type=none")
        network.append(f"--disable-admission-plugins={','.join(DISABLED_ADMISSION_PLUGINS)}")
    else:
        network = ["--bind-address=0.0.0.0", f"--advertise-address={node_ip}"]
        network.append("--endpoint-reconciler-type=lease")
    return [
        str(binaries.kube_apiserver),
        f"--etcd-servers=http://127.0.0.1:{ports.etcd_client}",
        *network,
        f"--secure-port={ports.apiserver}",
        f"--cert-dir={layout.root / 'apiserver-certs'}",
        f"--tls-cert-file={pki.apiserver.cert}",
        f"--tls-private-key-file={pki.apiserver.key}",
        f"--client-ca-file={pki.ca.cert}",
        "--authorization-mode=Node,RBAC",
        f"--enable-admission-plugins={','.join(ENABLED_ADMISSION_PLUGINS)}",
        f"--kubelet-client-certificate={pki.apiserver_kubelet_client.cert}",
        f"--kubelet-client-key={pki.apiserver_kubelet_client.key}",
        f"--kubelet-certificate-authority={pki.ca.cert}",
        f"--kubelet-preferred-address-types={','.join(KUBELET_ADDRESS_TYPES)}",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={pki.service_account.public}",
        f"--service-account-signing-key-file={pki.service_account.private}",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        "--allow-privileged=true",
        f"--requestheader-client-ca-file={pki.front_proxy_ca.cert}",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki.front_proxy_client.cert}",
        f"--proxy-client-key-file={pki.front_proxy_client.key}",
        "--profiling=false",
    ]


def controller_manager_argv(
    binaries: Binaries, layout: Layout, pki: ClusterPKI, ports: Ports, *, real_node: bool = False
) -> list[str]:
    kubeconfig = layout.component_kubeconfigs / "controller-manager.kubeconfig"
    disabled = () if real_node else DISABLED_CONTROLLERS
    return [
        str(binaries.kube_controller_manager),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={ports.controller_manager}",
        f"--tls-cert-file={pki.components_serving.cert}",
        f"--tls-private-key-file={pki.components_serving.key}",
        f"--service-account-private-key-file={pki.service_account.private}",
        f"--root-ca-file={pki.ca.cert}",
        f"--cluster-signing-cert-file={pki.ca.cert}",
        f"--cluster-signing-key-file={pki.ca.key}",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        "--use-service-account-credentials=true",
        f"--controllers={','.join(['*', *('-' + name for name in disabled)])}",
        "--cluster-name=kubesandbox",
        "--leader-elect=false",
        "--profiling=false",
    ]


def scheduler_argv(binaries: Binaries, layout: Layout, pki: ClusterPKI, ports: Ports) -> list[str]:
    kubeconfig = layout.component_kubeconfigs / "scheduler.kubeconfig"
    return [
        str(binaries.kube_scheduler),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={ports.scheduler}",
        f"--tls-cert-file={pki.components_serving.cert}",
        f"--tls-private-key-file={pki.components_serving.key}",
        "--leader-elect=false",
        "--profiling=false",
    ]


def control_plane_components(
    binaries: Binaries,
    layout: Layout,
    pki: ClusterPKI,
    ports: Ports,
    *,
    tied: bool,
    node_ip: str | None = None,
) -> list[list[ProcessComponent]]:
    """The control plane in start order: each stage waits for the one before it.

    ``node_ip``: configured for a real node with that address (see ``apiserver_argv``)."""
    etcd = ProcessComponent(
        "etcd",
        etcd_argv(binaries, layout, ports),
        HealthProbe(ports.etcd_client, "/health"),
        layout,
        tied=tied,
    )
    apiserver = ProcessComponent(
        "kube-apiserver",
        apiserver_argv(binaries, layout, pki, ports, node_ip),
        HealthProbe(ports.apiserver, "/readyz", ca=pki.ca.cert, client=pki.admin),
        layout,
        tied=tied,
    )
    controller_manager = ProcessComponent(
        "kube-controller-manager",
        controller_manager_argv(binaries, layout, pki, ports, real_node=node_ip is not None),
        HealthProbe(ports.controller_manager, "/healthz", ca=pki.ca.cert),
        layout,
        tied=tied,
    )
    scheduler = ProcessComponent(
        "kube-scheduler",
        scheduler_argv(binaries, layout, pki, ports),
        HealthProbe(ports.scheduler, "/healthz", ca=pki.ca.cert),
        layout,
        tied=tied,
    )
    return [[etcd], [apiserver], [controller_manager, scheduler]]


def start_stages(stages: Sequence[Sequence[Component]], timeout: float) -> dict[str, float]:
    """Start what is not alive, stage by stage; returns seconds to healthy per started name."""
    deadline = time.monotonic() + timeout
    timings: dict[str, float] = {}
    for stage in stages:
        started = [component for component in stage if not component.is_alive()]
        began = time.monotonic()
        for component in started:
            component.start()
        for component in stage:
            component.wait_ready(deadline)
        for component in started:
            timings[component.name] = time.monotonic() - began
    return timings
