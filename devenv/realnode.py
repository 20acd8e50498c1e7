"""``RealNode``: a real Kubernetes node on this machine, joined to a ``ControlPlane``.

containerd (Debian's, with its own configuration, root, state and socket under
``<state>/node/``), kubelet and kube-proxy (built from source at the control plane's version,
``binaries.ensure_node_binaries``), the CNI bridge and portmap plugins (Debian's), and a pause
image built here (``pause``). The control plane must have been created with
``real_node=True`` (the apiserver then listens on the node's address too, so Pods reach it
through the ``kubernetes`` Service). ``nodeconfig`` renders the configuration files;
``hostnet`` finds and removes what the node leaves on the host.

Lifecycle as the rest of the devenv: each of the three is a ``ManagedProcess`` with a pid file
in ``<state>/run/`` and a log in ``<state>/logs/``, *tied* to the caller (tests) or *detached*
(``make up``) as the control plane is; ``start`` is idempotent (what runs is kept, what died is
started again) and bounded; start order is containerd (socket answers; the pause image is
imported) → kubelet and kube-proxy (their ``/healthz``) → the Node is Ready and schedulable.

Only one real node can run per machine: kube-proxy's and the kubelet's iptables chains, the
``cni0`` bridge, the kernel settings and the ``kubepods`` cgroups are machine-wide. ``start``
takes a machine-wide lock (``/run/kubesandbox/real-node.json``) and fails naming the state
directory of a node that holds it; a holder that is gone (its processes dead) is cleaned up
after and replaced.

``stop`` removes what the node leaves behind: the kubelet first (so it restarts nothing), then
every Pod sandbox through the CRI (``crictl rmp --all --force``: containers killed, CNI DEL run,
network namespaces removed), kube-proxy and ``kube-proxy --cleanup``, containerd and any shim
of ours, processes and cgroups left under ``kubepods``, every ``KUBE-*``/``CNI-*`` chain, the
``cni0`` bridge, mounts under the node's directory, the kubelet's log links, and the kernel
settings the kubelet changed are put back.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubesandbox_devenv import hostnet
from kubesandbox_devenv.binaries import NodeBinaries, ensure_node_binaries
from kubesandbox_devenv.certs import Authority, CertPair, certificate_ips
from kubesandbox_devenv.components import free_ports
from kubesandbox_devenv.controlplane import ControlPlane
from kubesandbox_devenv.kubeconfig import write_kubeconfig
from kubesandbox_devenv.nodeconfig import (
    CNI_BRIDGE,
    DOCKER_HUB_HOSTS,
    NODE_AGENT_LABEL,
    NODE_NAME,
    NodeLayout,
    NodePorts,
    cni_conflist,
    containerd_config,
    docker_hub_mirror_hosts,
    kube_proxy_config,
    kubelet_config,
    registry_hosts,
)
from kubesandbox_devenv.pause import PAUSE_IMAGE, PAUSE_REPOSITORY, pause_image_archive
from kubesandbox_devenv.probes import ComponentFailedError, HealthProbe, wait_healthy
from kubesandbox_devenv.processes import ManagedProcess, start_time

LOCK_DIR = Path("/run/kubesandbox")
COMPONENT_NAMES = ("containerd", "kubelet", "kube-proxy")
K8S_NAMESPACE = "k8s.io"
"""containerd's namespace for everything the CRI (the kubelet) does."""
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""runc, iptables and mount live in sbin, which a user's PATH may lack."""
MAX_SOCKET_PATH = 100
"""sun_path holds 107 bytes; containerd adds ``.ttrpc`` to its socket's path."""
POLL_INTERVAL = 0.2
TOOL_TIMEOUT = 120.0
LOOPBACK_REGISTRY = re.compile(r"^(127\.0\.0\.1|localhost|\[::1\]):[0-9]{1,5}$")
NOT_READY_TAINT = "node.kubernetes.io/not-ready"
KUBELET_FIXED_DIR = Path("/var/lib/kubelet")


class RealNodeError(RuntimeError):
    """The node did not start, or a tool it runs failed; the message says what and shows logs."""


class RealNodeBusyError(RealNodeError):
    """Another environment's real node runs on this machine (only one can)."""


@dataclass(frozen=True)
class NodeStartReport:
    """Seconds from launch to healthy per started component, to Ready, and in all."""

    total: float
    components: Mapping[str, float] = field(default_factory=dict)
    ready: float = 0.0

    def summary(self) -> str:
        """One line for ``up``: ``Ready in 5.1s (containerd 0.2s, kubelet 1.5s, ...)``."""
        took = ", ".join(f"{name} {secs:.1f}s" for name, secs in self.components.items())
        return f"{NODE_NAME} Ready in {self.total:.1f}s ({took or 'all were running'})"


# --- the machine-wide lock --------------------------------------------------------------------


@dataclass(frozen=True)
class Holder:
    """Who holds the lock: an environment's state dir, and the process that took the lock."""

    state_dir: str
    pid: int
    start_time: int


def node_processes(state_dir: Path) -> list[ManagedProcess]:
    """The node's processes of the environment in ``state_dir``, found through pid files."""
    return [ManagedProcess(name, state_dir / "logs", state_dir / "run") for name in COMPONENT_NAMES]


class MachineLock:
    """``/run/kubesandbox/real-node.json`` names the holder; an ``flock`` on a file beside it
    makes check-and-take atomic. A holder counts while the process that took the lock lives
    (a test session) or any of its node processes does (``make up``, whose command exits)."""

    def __init__(self, directory: Path = LOCK_DIR) -> None:
        self.directory = directory
        self.record = directory / "real-node.json"

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o755)
        with (self.directory / "real-node.lock").open("w") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            yield

    def holder(self) -> Holder | None:
        try:
            return Holder(**json.loads(self.record.read_text()))
        except (FileNotFoundError, TypeError, ValueError):
            return None

    @staticmethod
    def alive(holder: Holder) -> bool:
        if start_time(holder.pid) == holder.start_time:
            return True
        return any(process.is_alive() for process in node_processes(Path(holder.state_dir)))

    def acquire(self, state_dir: Path) -> Path | None:
        """Take the lock for ``state_dir``; returns the state dir of a holder that is gone
        (whose leftovers the caller cleans up), or None. Raises ``RealNodeBusyError``."""
        with self._guard():
            holder = self.holder()
            stale = None
            if holder is not None and holder.state_dir != str(state_dir):
                if self.alive(holder):
                    raise RealNodeBusyError(
                        f"a real node already runs on this machine, for the environment in "
                        f"{holder.state_dir} (lock {self.record}, taken by pid {holder.pid}); "
                        "only one can run per machine: stop that one first (`kubesandbox-devenv "
                        f"--state-dir {holder.state_dir} down`, or end its test session)"
                    )
                stale = Path(holder.state_dir)
            me = os.getpid()
            record = Holder(str(state_dir), me, start_time(me) or 0)
            self.record.write_text(json.dumps(asdict(record)) + "\n")
            return stale

    def release(self, state_dir: Path) -> None:
        with self._guard():
            holder = self.holder()
            if holder is not None and holder.state_dir == str(state_dir):
                self.record.unlink(missing_ok=True)


# --- probes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SocketProbe:
    """containerd serves once its socket accepts connections (it binds after loading plugins)."""

    socket_path: Path

    @property
    def path(self) -> str:
        return f"connect {self.socket_path}"

    def check(self, timeout: float = 2.0) -> tuple[bool, str]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect(str(self.socket_path))
            except OSError as error:
                return False, f"{type(error).__name__}: {error}"
        return True, "accepting"


# --- the node ---------------------------------------------------------------------------------


class RealNode:
    """containerd + kubelet + kube-proxy registered as ``kubesandbox-node-0`` with ``plane``."""

    name = "real-node"
    node_name = NODE_NAME

    def __init__(
        self,
        plane: ControlPlane,
        *,
        binaries: NodeBinaries | None = None,
        start_timeout: float | None = None,
        lock_dir: Path = LOCK_DIR,
    ) -> None:
        if not plane.real_node:
            raise ValueError(
                "plane: a real node needs a control plane made with ControlPlane(..., "
                "real_node=True) (its apiserver must be reachable from Pods)"
            )
        self.plane = plane
        self.state_dir = plane.layout.root
        self.layout = NodeLayout(self.state_dir / "node")
        self.tied = not plane.detached
        self.start_timeout = start_timeout or plane.start_timeout
        self.lock = MachineLock(lock_dir)
        self._binaries = binaries
        self.containerd, self.kubelet, self.kube_proxy = node_processes(self.state_dir)
        socket_path = str(self.layout.containerd_socket)
        if len(socket_path.encode()) > MAX_SOCKET_PATH:
            raise ValueError(
                f"state dir {self.state_dir} is too deep: containerd's socket {socket_path} "
                f"would exceed {MAX_SOCKET_PATH} bytes (unix socket paths are limited)"
            )

    # -- what it is --------------------------------------------------------------------------

    @property
    def binaries(self) -> NodeBinaries:
        if self._binaries is None:
            self._binaries = ensure_node_binaries()
        return self._binaries

    @property
    def node_ip(self) -> str:
        return self.plane.node_ip

    @property
    def containerd_address(self) -> str:
        """The CRI endpoint, as kubelet and crictl take it."""
        return f"unix://{self.layout.containerd_socket}"

    def status(self) -> dict[str, int | None]:
        """Component name → pid of the running process, or None."""
        return {process.name: process.pid() for process in self._processes()}

    def is_alive(self) -> bool:
        return all(pid is not None for pid in self.status().values())

    def _processes(self) -> list[ManagedProcess]:
        return [self.containerd, self.kubelet, self.kube_proxy]

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> NodeStartReport:
        """Start what is not running and wait until the Node is Ready and schedulable."""
        began = time.monotonic()
        deadline = began + self.start_timeout
        stale = self.lock.acquire(self.state_dir)
        if stale is not None:
            sweep_host(NodeLayout(stale / "node"))
        try:
            self._prepare()
            timings: dict[str, float] = {}
            if not self.containerd.is_alive():
                self.containerd.start(self._containerd_argv(), tied=self.tied, env=_env())
                wait_healthy(self.containerd, SocketProbe(self.layout.containerd_socket), deadline)
                timings["containerd"] = time.monotonic() - began
            self._import_pause()
            stage_began = time.monotonic()
            started = []
            for process, argv in (
                (self.kubelet, self._kubelet_argv()),
                (self.kube_proxy, self._kube_proxy_argv()),
            ):
                if not process.is_alive():
                    process.start(argv, tied=self.tied, env=_env())
                    started.append(process)
            ports = self.ports
            wait_healthy(self.kubelet, HealthProbe(ports.kubelet_healthz, "/healthz"), deadline)
            wait_healthy(
                self.kube_proxy, HealthProbe(ports.kube_proxy_healthz, "/healthz"), deadline
            )
            for process in started:
                timings[process.name] = time.monotonic() - stage_began
            ready_began = time.monotonic()
            self._wait_schedulable(deadline)
            ready = time.monotonic() - ready_began
        except BaseException:
            if self.tied:
                self.stop()
            raise
        return NodeStartReport(time.monotonic() - began, timings, ready)

    def stop(self) -> None:
        """Stop the node and remove what it left on the host (see the module docstring).

        ``kube-proxy --cleanup`` and the host sweep run only when no other environment's node
        holds the machine lock: the ``down`` of an environment whose node is long gone must not
        clean up the node another one runs now."""
        holder = self.lock.holder()
        host_is_ours = (
            holder is None or holder.state_dir == str(self.state_dir) or not self.lock.alive(holder)
        )
        self.kubelet.stop()
        self._remove_pods()
        self.kube_proxy.stop()
        if host_is_ours and self.layout.kube_proxy_config.exists():
            kube_proxy = self._binaries or NodeBinaries.in_cache()
            self._logged(self.kube_proxy, [str(kube_proxy.kube_proxy), "--cleanup"])
        self.containerd.stop()
        if host_is_ours:
            sweep_host(self.layout)
        self.lock.release(self.state_dir)

    def __enter__(self) -> RealNode:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- images and registries ---------------------------------------------------------------

    def configure_registry(self, host: str, *, mirror_docker_io: bool = True) -> None:
        """Let containerd pull from the plain-HTTP registry ``host`` (``127.0.0.1:<port>``),
        and with ``mirror_docker_io`` resolve ``docker.io`` images (``busybox:1.36``) there
        first. Takes effect at the next pull: containerd reads the hosts files per pull."""
        if not LOOPBACK_REGISTRY.match(host):
            raise ValueError(f"host: {host!r} is not a loopback registry address (127.0.0.1:PORT)")
        entries = {host: registry_hosts(host)}
        if mirror_docker_io:
            entries[DOCKER_HUB_HOSTS] = docker_hub_mirror_hosts(host)
        for name, text in entries.items():
            directory = self.layout.registry_hosts / name
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "hosts.toml").write_text(text)

    def load_image(self, archive: Path, base_name: str | None = None) -> str:
        """Import an OCI or docker archive into the CRI's image store (what the kubelet sees);
        ``base_name`` names images whose archive gives only a tag. Returns ctr's report."""
        args = ["images", "import"]
        if base_name is not None:
            args += ["--base-name", base_name]
        return self.ctr(*args, str(archive)).stdout

    def images(self) -> list[str]:
        return self.ctr("images", "list", "--quiet").stdout.split()

    def ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        """containerd's own CLI on our socket, in the CRI's namespace; raises on failure."""
        argv = ["ctr", "--address", str(self.layout.containerd_socket)]
        return _tool([*argv, "--namespace", K8S_NAMESPACE, *args])

    def crictl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """crictl on our containerd (``crictl pods``, ``ps -a``, ``logs``...)."""
        address = self.containerd_address
        crictl = (self._binaries or NodeBinaries.in_cache()).crictl  # stop never builds
        argv = [str(crictl), "--runtime-endpoint", address]
        argv += ["--image-endpoint", address, "--timeout", "60s", *args]
        return _tool(argv, check=check)

    # -- internals ---------------------------------------------------------------------------

    @property
    def ports(self) -> NodePorts:
        ports = NodePorts.load(self.layout.ports)
        if ports is None:
            ports = NodePorts(*free_ports(4, "0.0.0.0"))  # noqa: S104 (kubelet: node IP)
            self.layout.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            ports.save(self.layout.ports)
        return ports

    def _prepare(self) -> None:
        """Directories, certificates, kubeconfigs and configuration files (brought up to date
        each start, so a restarted control plane's new port reaches a restarted kubelet)."""
        layout = self.layout
        for directory in (
            layout.root,
            layout.pki,
            layout.containerd_root,
            layout.containerd_state,
            layout.registry_hosts,
            layout.kubelet_root,
            layout.kubelet_cert_dir,
            layout.pod_logs,
            layout.volume_plugins,
            layout.cni_conf_dir,
            layout.cni_ipam,
        ):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        kubelet_client, serving, proxy_client = self._ensure_certificates()
        for path, user, pair in (
            (layout.kubelet_kubeconfig, f"system:node:{NODE_NAME}", kubelet_client),
            (layout.kube_proxy_kubeconfig, "system:kube-proxy", proxy_client),
        ):
            write_kubeconfig(
                path,
                server=self.plane.server,
                ca=self.plane.ca,
                user=user,
                client=pair,
                embed=False,
            )
        ports = self.ports
        runc = _which("runc")
        _write_if_changed(layout.containerd_config, containerd_config(layout, runc))
        _write_if_changed(layout.cni_conf_dir / "10-kubesandbox.conflist", cni_conflist(layout))
        _write_if_changed(
            layout.kubelet_config,
            kubelet_config(
                layout,
                node_ip=self.node_ip,
                ports=ports,
                client_ca=self.plane.ca,
                serving_cert=serving.cert,
                serving_key=serving.key,
            ),
        )
        _write_if_changed(layout.kube_proxy_config, kube_proxy_config(layout, ports=ports))
        if not layout.sysctls.exists():
            layout.sysctls.write_text(json.dumps(hostnet.read_sysctls(hostnet.KUBELET_SYSCTLS)))

    def _ensure_certificates(self) -> tuple[CertPair, CertPair, CertPair]:
        """The kubelet's client (``system:node:<name>`` in ``system:nodes``: what the Node
        authorizer and NodeRestriction recognise) and serving certificates (node name and IP,
        verified by the apiserver against our CA), and kube-proxy's client certificate
        (``system:kube-proxy``, bound to ``system:node-proxier`` by the default RBAC)."""
        pki = self.layout.pki
        pairs = [CertPair(pki / f"{stem}.crt", pki / f"{stem}.key") for stem in (
            "kubelet-client", "kubelet-serving", "kube-proxy"
        )]  # fmt: skip
        kubelet_client, serving, proxy_client = pairs
        missing = [pair for pair in pairs if not (pair.cert.is_file() and pair.key.is_file())]
        if serving not in missing and self.node_ip not in certificate_ips(serving.cert):
            missing.append(serving)
        if missing:
            ca = Authority.load(self.plane.pki.ca)
            if kubelet_client in missing:
                ca.issue(
                    kubelet_client,
                    f"system:node:{NODE_NAME}",
                    organizations=("system:nodes",),
                    client=True,
                )
            if serving in missing:
                ca.issue(
                    serving,
                    NODE_NAME,
                    dns_names=(NODE_NAME, "localhost"),
                    ip_addresses=(self.node_ip, "127.0.0.1"),
                    server=True,
                )
            if proxy_client in missing:
                ca.issue(proxy_client, "system:kube-proxy", client=True)
        return kubelet_client, serving, proxy_client

    def _containerd_argv(self) -> list[str]:
        config = str(self.layout.containerd_config)
        return [_which("containerd").as_posix(), "--config", config, "--log-level", "info"]

    def _kubelet_argv(self) -> list[str]:
        layout = self.layout
        return [
            str(self.binaries.kubelet),
            f"--config={layout.kubelet_config}",
            f"--kubeconfig={layout.kubelet_kubeconfig}",
            f"--root-dir={layout.kubelet_root}",
            f"--cert-dir={layout.kubelet_cert_dir}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={self.node_ip}",
            f"--node-labels={NODE_AGENT_LABEL}=true",
            "--v=1",
        ]

    def _kube_proxy_argv(self) -> list[str]:
        return [str(self.binaries.kube_proxy), f"--config={self.layout.kube_proxy_config}", "--v=1"]

    def _import_pause(self) -> None:
        if PAUSE_IMAGE not in self.images():
            self.load_image(pause_image_archive(), base_name=PAUSE_REPOSITORY)

    def _wait_schedulable(self, deadline: float) -> None:
        """Until the Node says Ready and the node-lifecycle controller lifted the not-ready
        taint (before that the scheduler would not place a Pod on it)."""
        observed = "not registered yet"
        with self.plane.api_client() as api:
            core = client.CoreV1Api(api)
            while True:
                if not self.kubelet.is_alive():
                    raise ComponentFailedError(
                        f"kubelet exited (status {self.kubelet.exit_code()}) before its Node was "
                        f"Ready; last lines of {self.kubelet.log_path}:\n{self.kubelet.log_tail()}"
                    )
                try:
                    node = core.read_node(NODE_NAME)
                except ApiException as error:
                    if error.status != 404:
                        raise
                else:
                    observed = _describe_node(node)
                    if observed == "Ready":
                        return
                if time.monotonic() >= deadline:
                    raise ComponentFailedError(
                        f"Node {NODE_NAME} not schedulable in time ({observed}); last lines of "
                        f"{self.kubelet.log_path}:\n{self.kubelet.log_tail()}"
                    )
                time.sleep(POLL_INTERVAL)

    def _remove_pods(self) -> None:
        """Every Pod sandbox through the CRI, so containerd runs CNI DEL (veth, IP, chains)
        and removes the network namespace. A containerd that died (with its shims and
        containers still running) is started for this and stopped again by ``stop``."""
        sandboxes = self.layout.containerd_root / "io.containerd.grpc.v1.cri" / "sandboxes"
        if not self.containerd.is_alive():
            if not (sandboxes.is_dir() and any(sandboxes.iterdir())):
                return
            self.containerd.start(self._containerd_argv(), tied=True, env=_env())
            try:
                deadline = time.monotonic() + self.start_timeout
                wait_healthy(self.containerd, SocketProbe(self.layout.containerd_socket), deadline)
            except ComponentFailedError:
                return  # the host sweep below still kills and removes what it can
        self.crictl("rmp", "--all", "--force", check=False)

    def _logged(self, process: ManagedProcess, argv: list[str]) -> None:
        """Run ``argv`` to the end with its output appended to ``process``'s log."""
        with process.log_path.open("ab") as log:
            log.write(f"=== running: {' '.join(argv)}\n".encode())
            log.flush()
            subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_env(),
                check=False,
                timeout=TOOL_TIMEOUT,
            )


# --- host cleanup -----------------------------------------------------------------------------


def sweep_host(layout: NodeLayout) -> None:
    """Remove, idempotently, what a node with this layout leaves on the host once its processes
    are stopped (or were killed with their owner): see the module docstring."""
    socket_path = str(layout.containerd_socket)
    failures = []
    for step in (
        lambda: _kill(_processes_matching(lambda argv: "-address" in argv and socket_path in argv)),
        lambda: _kill(_pod_cgroup_processes()),
        hostnet.remove_pod_cgroups,
        hostnet.remove_chains,
        lambda: hostnet.delete_link(CNI_BRIDGE),
        lambda: hostnet.unmount_below(layout.root),
        lambda: _remove_log_links(layout.pod_logs),
        _remove_kubelet_fixed_paths,
        lambda: _restore_sysctls(layout.sysctls),
    ):
        try:
            step()
        except (OSError, hostnet.HostCommandError, ValueError) as error:
            failures.append(f"{type(error).__name__}: {error}")
    if failures:
        raise RealNodeError("cleaning up after the node failed:\n" + "\n".join(failures))


def _restore_sysctls(record: Path) -> None:
    if record.exists():
        hostnet.restore_sysctls(json.loads(record.read_text()))
        record.unlink()


def _processes_matching(predicate: Callable[[list[str]], bool]) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            raw = (entry / "cmdline").read_bytes().split(b"\0")
            argv = [part.decode(errors="replace") for part in raw]
        except OSError:
            continue
        if predicate(argv):
            found.append(int(entry.name))
    return found


def _pod_cgroup_processes() -> list[int]:
    found: set[int] = set()
    for top in hostnet.CGROUP_ROOT.glob(f"*/{hostnet.POD_CGROUP}"):
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                found.update(int(line) for line in procs.read_text().split())
    return sorted(found)


def _kill(pids: list[int], timeout: float = 10.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(start_time(pid) is not None for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def _remove_log_links(pod_logs: Path) -> None:
    """The kubelet links each container's log into ``/var/log/containers``; removing Pods
    through the CRI instead of the kubelet leaves those links dangling."""
    links = Path("/var/log/containers")
    if not links.is_dir():
        return
    for link in links.iterdir():
        with contextlib.suppress(OSError):
            if link.is_symlink() and os.readlink(link).startswith(str(pod_logs)):
                link.unlink()


def _remove_kubelet_fixed_paths() -> None:
    """``--root-dir`` does not move the device-plugin socket: the kubelet always makes
    ``/var/lib/kubelet/device-plugins/kubelet.sock`` (ENVIRONMENT.md). Directories go only
    when empty (a machine may have a kubelet of its own)."""
    plugins = KUBELET_FIXED_DIR / "device-plugins"
    (plugins / "kubelet.sock").unlink(missing_ok=True)
    for directory in (plugins, KUBELET_FIXED_DIR):
        with contextlib.suppress(OSError):
            directory.rmdir()


def _describe_node(node: client.V1Node) -> str:
    """ "Ready" when Ready=True and no not-ready taint is left, else what is missing."""
    conditions = {c.type: c for c in (node.status.conditions if node.status else None) or []}
    ready = conditions.get("Ready")
    if ready is None or ready.status != "True":
        reason = f"{ready.reason}: {ready.message}" if ready is not None else "no Ready condition"
        return f"not Ready ({reason})"
    taints = [t.key for t in (node.spec.taints if node.spec else None) or []]
    if NOT_READY_TAINT in taints:
        return f"Ready, still tainted {NOT_READY_TAINT}"
    return "Ready"


def _write_if_changed(path: Path, text: str) -> None:
    """kube-proxy watches its configuration file and exits when it is written, even with the
    same content: a second ``up`` must not touch what did not change."""
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


def _env() -> dict[str, str]:
    return dict(os.environ, PATH=HOST_PATH)


def _which(tool: str) -> Path:
    for directory in HOST_PATH.split(":"):
        candidate = Path(directory) / tool
        if os.access(candidate, os.X_OK):
            return candidate
    raise RealNodeError(
        f"{tool} is not installed: the real node needs Debian's containerd, runc and "
        "containernetworking-plugins (devenv/debian-packages.txt; `make deps` installs them)"
    )


def _tool(argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=_env(),
        check=False,
        timeout=TOOL_TIMEOUT,
    )
    if check and result.returncode != 0:
        output = (result.stderr or result.stdout).strip()
        raise RealNodeError(f"{' '.join(argv)} exited {result.returncode}: {output}")
    return result
