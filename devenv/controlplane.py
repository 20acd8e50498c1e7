"""``ControlPlane``: etcd, kube-apiserver, kube-controller-manager and kube-scheduler on loopback.

Start order is etcd → kube-apiserver (until ``/readyz``) → controller manager and scheduler
together (until ``/healthz``), then the apiserver's kubelet client is bound to
``system:kubelet-api-admin`` and the kubelet-less Nodes are registered. Every step is bounded by
one start timeout; a failure names the component and shows its last log lines.

``real_node=True`` configures it for a real kubelet (``realnode.RealNode``) instead of
kubelet-less Nodes: the apiserver listens on the node's address too and advertises it, so Pods
reach it through the ``kubernetes`` Service, and the node-lifecycle controller and the
``TaintNodesByCondition`` admission plugin are on (see ``components``).

``start`` is idempotent: with an existing state directory it reuses the PKI, the etcd data, the
ports of components still alive, and starts only what is dead. Tests use it as a context
manager with processes *tied* to the test process (see ``processes``); ``kubesandbox-devenv up``
uses it *detached* and ``down`` stops it again from the pid files.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubesandbox_devenv.binaries import Binaries, ensure_binaries
from kubesandbox_devenv.certs import KUBELET_CLIENT_NAME, CertPair, ClusterPKI
from kubesandbox_devenv.components import (
    Layout,
    Ports,
    ProcessComponent,
    control_plane_components,
    start_stages,
)
from kubesandbox_devenv.hostnet import primary_ipv4
from kubesandbox_devenv.kubeconfig import write_kubeconfig
from kubesandbox_devenv.nodes import NodeShape, node_names, register_nodes
from kubesandbox_devenv.probes import ComponentFailedError
from kubesandbox_devenv.processes import ManagedProcess

DEFAULT_START_TIMEOUT = 120.0
PORT_ATTEMPTS = 3
ADDRESS_IN_USE = "address already in use"
CRD_SUFFIXES = (".yaml", ".yml", ".json")
COMPONENT_NAMES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
KUBELET_API_ADMIN = "system:kubelet-api-admin"
KUBELET_CLIENT_BINDING = "kubesandbox:apiserver-kubelet-client"


class KubectlError(subprocess.CalledProcessError):
    """kubectl failed; unlike its base class, the message includes what kubectl said."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{(self.stderr or '').strip()}"


@dataclass(frozen=True)
class StartReport:
    """How long each component took from launch to healthy, and the whole start."""

    total: float
    components: Mapping[str, float] = field(default_factory=dict)
    nodes: float = 0.0


class ControlPlane:
    """A real Kubernetes control plane whose state lives in ``state_dir``."""

    def __init__(
        self,
        state_dir: Path,
        *,
        nodes: int | None = None,
        node_shape: NodeShape | None = None,
        detached: bool = False,
        binaries: Binaries | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        real_node: bool = False,
    ) -> None:
        """``nodes``: kubelet-less Nodes to register (default 1; none with ``real_node``, whose
        kubelet registers ``kubesandbox-node-0`` itself)."""
        if real_node and nodes:
            raise ValueError(
                "nodes: a control plane for a real node registers no kubelet-less Nodes "
                "(the kubelet registers kubesandbox-node-0 itself)"
            )
        self.layout = Layout(state_dir.resolve())
        self.pki = ClusterPKI(self.layout.pki)
        self.real_node = real_node
        self.node_count = (0 if real_node else 1) if nodes is None else nodes
        self._node_ip: str | None = None
        self.node_shape = node_shape or NodeShape()
        self.detached = detached
        self.start_timeout = start_timeout
        self._binaries = binaries
        self._stages: list[list[ProcessComponent]] = []
        self._ports: Ports | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> StartReport:
        """Start every component that is not alive, register the Nodes; stop all on failure.

        Free ports are picked by binding and releasing them, so another process can take one
        before our component binds it; a fresh start that loses that race starts over on new
        ports (at most ``PORT_ATTEMPTS`` times).
        """
        began = time.monotonic()
        for directory in (self.layout.root, self.layout.run, self.layout.logs):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.pki.ensure(apiserver_ips=[self.node_ip] if self.real_node else [])
        for attempt in range(1, PORT_ATTEMPTS + 1):
            fresh = not any(process.is_alive() for process in self._processes())
            try:
                timings, nodes_took = self._start_once()
            except ComponentFailedError as error:
                if not (fresh and attempt < PORT_ATTEMPTS and ADDRESS_IN_USE in str(error)):
                    raise
                self.stop()
                continue
            return StartReport(time.monotonic() - began, timings, nodes_took)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _start_once(self) -> tuple[dict[str, float], float]:
        ports = self._choose_ports()
        if ports != self._ports or not self._stages:
            # Same ports: keep our components, whose process handles reap what they started.
            self._ports = ports
            self._write_kubeconfigs(ports)
            self._stages = control_plane_components(
                self.binaries,
                self.layout,
                self.pki,
                ports,
                tied=not self.detached,
                node_ip=self.node_ip if self.real_node else None,
            )
        try:
            timings = start_stages(self._stages, self.start_timeout)
            nodes_began = time.monotonic()
            with self.api_client() as api:
                bind_kubelet_client(api)
                register_nodes(api, node_names(self.node_count), self.node_shape)
        except BaseException:
            if not self.detached:
                self.stop()
            raise
        return timings, time.monotonic() - nodes_began

    def stop(self) -> None:
        """Stop every component (newest first) and remove their pid files."""
        for process in reversed(self._processes()):
            process.stop()

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def status(self) -> dict[str, int | None]:
        """Component name → pid of the running process, or None."""
        return {process.name: process.pid() for process in self._processes()}

    # -- how to reach it ---------------------------------------------------------------------

    @property
    def node_ip(self) -> str:
        """The host's primary IPv4 address: where a real node's Pods reach the apiserver."""
        if self._node_ip is None:
            self._node_ip = primary_ipv4()
        return self._node_ip

    @property
    def binaries(self) -> Binaries:
        if self._binaries is None:
            self._binaries = ensure_binaries()
        return self._binaries

    @property
    def ports(self) -> Ports:
        ports = self._ports or Ports.load(self.layout.ports)
        if ports is None:
            raise RuntimeError(f"control plane in {self.layout.root} was never started")
        return ports

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (``system:masters``, certificates embedded)."""
        return self.layout.kubeconfig

    @property
    def ca(self) -> Path:
        return self.pki.ca.cert

    @property
    def admin(self) -> CertPair:
        return self.pki.admin

    def issue_user(self, user: str, groups: Sequence[str] = ()) -> CertPair:
        """Client credentials for an x509 user; RBAC decides what it may do."""
        return self.pki.issue_client(user, groups)

    def client_configuration(self, credentials: CertPair | None = None) -> client.Configuration:
        """A ``kubernetes`` client configuration as admin, or as the given x509 user."""
        credentials = credentials or self.admin
        configuration = client.Configuration()
        configuration.host = self.server
        configuration.ssl_ca_cert = str(self.ca)
        configuration.cert_file = str(credentials.cert)
        configuration.key_file = str(credentials.key)
        configuration.verify_ssl = True
        return configuration

    @contextmanager
    def api_client(self, credentials: CertPair | None = None) -> Iterator[client.ApiClient]:
        """A ``kubernetes`` API client whose connections are closed on exit."""
        with client.ApiClient(self.client_configuration(credentials)) as api:
            try:
                yield api
            finally:
                api.rest_client.pool_manager.clear()

    def kubectl(
        self, *args: str, check: bool = True, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the cached kubectl as admin; raises ``KubectlError`` when ``check`` and it fails."""
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig))
        argv = [str(self.binaries.kubectl), *args]
        result = subprocess.run(
            argv,
            env=env,
            input=input_text,
            capture_output=True,
            text=True,
            check=False,
            timeout=self.start_timeout,
        )
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, argv, result.stdout, result.stderr)
        return result

    @staticmethod
    def crd_files(directory: Path) -> list[Path]:
        """The manifests ``install_crds`` applies from ``directory`` (none if it is absent)."""
        return sorted(p for p in directory.glob("*") if p.suffix in CRD_SUFFIXES)

    def install_crds(self, directory: Path) -> list[Path]:
        """Apply every CRD manifest in ``directory`` and wait until each is Established."""
        files = self.crd_files(directory)
        if not files:
            return []
        file_args = [arg for path in files for arg in ("-f", str(path))]
        self.kubectl("apply", "--server-side", "--force-conflicts", *file_args)
        self.kubectl(
            "wait",
            "--for=condition=Established",
            f"--timeout={int(self.start_timeout)}s",
            *file_args,
        )
        return files

    # -- internals ---------------------------------------------------------------------------

    def _processes(self) -> list[ManagedProcess]:
        """Ours when this object started them; otherwise found through their pid files."""
        if self._stages:
            return [component.process for stage in self._stages for component in stage]
        return [ManagedProcess(name, self.layout.logs, self.layout.run) for name in COMPONENT_NAMES]

    def _choose_ports(self) -> Ports:
        """Keep the ports while anything still runs on them; pick new ones otherwise."""
        saved = Ports.load(self.layout.ports)
        if saved is not None and any(process.is_alive() for process in self._processes()):
            return saved
        ports = Ports.pick()
        ports.save(self.layout.ports)
        return ports

    def _write_kubeconfigs(self, ports: Ports) -> None:
        server = f"https://127.0.0.1:{ports.apiserver}"
        write_kubeconfig(
            self.layout.kubeconfig,
            server=server,
            ca=self.pki.ca.cert,
            user="kubesandbox-admin",
            client=self.pki.admin,
            embed=True,
        )
        for name, pair in (
            ("controller-manager", self.pki.controller_manager),
            ("scheduler", self.pki.scheduler),
        ):
            write_kubeconfig(
                self.layout.component_kubeconfigs / f"{name}.kubeconfig",
                server=server,
                ca=self.pki.ca.cert,
                user=f"system:kube-{name}",
                client=pair,
                embed=False,
            )


def bind_kubelet_client(api: client.ApiClient) -> None:
    """Let the apiserver's kubelet client certificate use every kubelet API (logs, exec,
    port-forward, the node proxy): kubelets authorize it by SubjectAccessReview like anyone."""
    body = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": KUBELET_CLIENT_BINDING},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": KUBELET_API_ADMIN,
        },
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": KUBELET_CLIENT_NAME}
        ],
    }
    try:
        binding = client.V1ClusterRoleBinding.model_validate(body)
        client.RbacAuthorizationV1Api(api).create_cluster_role_binding(binding)
    except ApiException as error:
        if error.status != 409:
            raise
