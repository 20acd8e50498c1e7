"""The pieces both systems share (the preloaded OCI registry, the demo ServiceAccount and its
token, the demo, finding and removing VMs) and the host-process system built from them.

``make up`` and the end-to-end suite install the chart on a real node (:mod:`.installed`) and
use the registry, the access component and the demo from here. :func:`running_system` runs the
node agent, the operator and the gateway as host processes instead, against a control plane
with a kubelet-less Node: no image build, no real node, so it starts in seconds and several can
run at once (the benchmarks use it). Each piece is a component in the sense of :mod:`.cli`
(start idempotently, say whether it is alive, stop), with its pid and log files under the state
directory. A restarted node agent re-adopts its VMs.

Security trade-offs of the host-process system, documented in docs/devenv.md: the node agent
listens on loopback over plain HTTP, and accepts one static bearer token that the operator
presents (the chart uses TLS and TokenReview); the registry is plain HTTP on loopback, which the
node agent is configured to allow. The gateway runs with the admin kubeconfig (the chart: its
own ServiceAccount with the ``kubesandbox-gateway`` ClusterRole) and serves plain HTTP on
loopback; the demo ServiceAccount's token is long-lived.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from kubesandbox_devenv import helm
from kubesandbox_devenv.binaries import REPO_ROOT, ensure_binaries
from kubesandbox_devenv.controlplane import ControlPlane
from kubesandbox_devenv.nodes import NodeShape, node_names
from kubesandbox_devenv.processes import ManagedProcess
from kubesandbox_devenv.registry import (
    BUSYBOX,
    Layout,
    TarEntry,
    build_image,
    directory,
    file,
    free_port,
    layer_tar,
    symlink,
)

SYSTEM_NAMESPACE = "kubesandbox-system"
GATEWAY_SERVICE = "kubesandbox-gateway"
GATEWAY_URL_ANNOTATION = "kubesandbox.dev/url"
DEMO_ACCOUNT = ("default", "demo", "edit")
"""namespace, ServiceAccount, ClusterRole bound in that namespace: the identity ``make up``
hands out in ``.kubesandbox/token`` and ``.kubesandbox/demo.kubeconfig``."""
DEMO_TOKEN_DURATION_HOURS = 720
"""30 days. SDK handles keep the token they were created with (PROTOCOL.md §3), so a short
token would break long-lived handles; a long one stays valid if it leaks, until it expires or
the ServiceAccount is deleted (which invalidates it at once). ``up`` issues a new one when less
than a day is left."""
MAX_UNIX_SOCKET_PATH = 107  # sun_path is 108 bytes, NUL included
DEMO_IMAGES = {"library/busybox": ("1.36", "latest")}
"""What the registry holds, as Docker Hub names: ``busybox:1.36`` resolves through the node
agent's ``docker.io`` mirror to ``<registry>/library/busybox:1.36``."""


class ServiceError(Exception):
    """A service did not start; the message says which and shows its log tail."""


@dataclass(frozen=True)
class Paths:
    state_dir: Path
    tied: bool = False
    """Tests: the services die with the process that started them (``make up``: they outlive it)."""

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def run(self) -> Path:
        return self.state_dir / "run"

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    def remembered_port(self, name: str) -> int:
        """A loopback port chosen once per environment, so restarts keep their addresses."""
        record = self.run / f"{name}.port"
        if record.is_file():
            return int(record.read_text())
        record.parent.mkdir(parents=True, exist_ok=True)
        port = free_port()
        record.write_text(str(port))
        return port

    def token(self) -> Path:
        path = self.state_dir / "node-agent-token"
        if not path.is_file():
            path.write_text(secrets.token_hex(32))
            path.chmod(0o600)
        return path


def _cache_dir() -> Path:
    return Path(os.environ.get("KUBESANDBOX_CACHE") or Path.home() / ".cache" / "kubesandbox")


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (loopback)
            return bool(200 <= response.status < 300)
    except (urllib.error.URLError, OSError):
        return False


def _wait(check_alive: ManagedProcess, url: str, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not http_ok(url):
        if not check_alive.is_alive():
            raise ServiceError(f"{what} exited:\n{check_alive.log_tail()}")
        if time.monotonic() > deadline:
            raise ServiceError(f"{what} not ready after {timeout:.0f}s:\n{check_alive.log_tail()}")
        time.sleep(0.2)


def busybox_image_entries() -> list[TarEntry]:
    """A busybox root filesystem with every applet linked, as Debian's busybox-static has them."""
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    entries = [directory(d) for d in ("bin", "sbin", "etc", "root", "dev", "proc", "sys", "run")]
    entries += [directory("tmp", 0o1777), file("bin/busybox", BUSYBOX.read_bytes(), 0o755)]
    entries += [symlink(f"bin/{applet}", "busybox") for applet in applets if applet != "busybox"]
    entries.append(symlink("sbin/init", "/bin/busybox"))  # where inits are looked for
    entries += [
        file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"),
        file("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        file("etc/hostname", "busybox\n"),
    ]
    return entries


class RegistryService:
    """Debian's ``docker-registry`` on loopback, preloaded with the demo images."""

    name = "registry"

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.process = ManagedProcess("registry", paths.logs, paths.run)
        self.port = paths.remembered_port("registry")
        self.host = f"127.0.0.1:{self.port}"
        self.dir = paths.state_dir / "registry-data"

    def start(self) -> str:
        if not self.is_alive():
            self.dir.mkdir(parents=True, exist_ok=True)
            config = self.dir / "config.yml"
            config.write_text(
                yaml.safe_dump(
                    {
                        "version": 0.1,
                        "log": {"level": "warn"},
                        "storage": {"filesystem": {"rootdirectory": str(self.dir / "data")}},
                        "http": {"addr": self.host},
                    }
                )
            )
            self.process.start(["docker-registry", "serve", str(config)], tied=self.paths.tied)
            _wait(self.process, f"http://{self.host}/v2/", "the registry", 30)
        pushed = self._preload()
        # `.kubesandbox/registry` holds host:port (what the node agent may use over plain HTTP).
        (self.paths.state_dir / "registry").write_text(self.host + "\n")
        return f"{self.host} ({', '.join(pushed) or 'demo images already loaded'})"

    def _preload(self) -> list[str]:
        pushed = []
        layout: Layout | None = None
        for repository, tags in DEMO_IMAGES.items():
            for tag in tags:
                if http_ok(f"http://{self.host}/v2/{repository}/manifests/{tag}"):
                    continue
                if layout is None:
                    layout = Layout(self.dir / "layout")
                    layout.add_image("busybox", build_image([layer_tar(busybox_image_entries())]))
                self._push(layout, "busybox", repository, tag)
                pushed.append(f"{repository}:{tag}")
        return pushed

    def _push(self, layout: Layout, source_tag: str, repository: str, tag: str) -> None:
        subprocess.run(
            [
                "skopeo",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                f"oci:{layout.path}:{source_tag}",
                f"docker://{self.host}/{repository}:{tag}",
            ],
            check=True,
            capture_output=True,
        )

    def is_alive(self) -> bool:
        return self.process.is_alive() and http_ok(f"http://{self.host}/v2/")

    def stop(self) -> None:
        self.process.stop()


class NodeAgentService:
    """The node agent for the environment's one node, with software emulation allowed."""

    name = "node-agent"

    def __init__(
        self,
        paths: Paths,
        registry: RegistryService,
        *,
        dns: Sequence[str] = (),
        egress_upstream_cas: Sequence[str] = (),
    ) -> None:
        self.paths = paths
        self.registry = registry
        self.dns = list(dns)
        """Upstream resolvers of the sandboxes' resolvers (empty: the machine's)."""
        self.egress_upstream_cas = list(egress_upstream_cas)
        """PEM files the egress proxy trusts besides the machine's trust store."""
        self.process = ManagedProcess("node-agent", paths.logs, paths.run)
        self.port = paths.remembered_port("node-agent")
        self.node = node_names(1)[0]

    @property
    def state(self) -> Path:
        # Short on purpose: QEMU's and the relay's unix sockets live below the node agent's
        # state directory, and socket paths are limited to 108 bytes.
        return self.paths.state_dir / "na"

    def start(self) -> str:
        if self.is_alive():
            return f"running on {self.node} at http://127.0.0.1:{self.port}"
        # The deepest socket: QEMU's end of the agent port (a UID is 36 characters).
        longest = self.relay_socket("0" * 36).with_name("vm") / "agent-port.sock"
        if len(str(longest).encode()) > MAX_UNIX_SOCKET_PATH:
            raise ServiceError(
                f"the state directory {self.paths.state_dir} is too deep: the node agent's "
                f"sockets ({longest}) would exceed the {MAX_UNIX_SOCKET_PATH}-byte limit of "
                "unix socket paths; use a shorter --state-dir"
            )
        config = {
            "nodeName": self.node,
            "namespace": SYSTEM_NAMESPACE,
            "stateDir": str(self.state),
            "cacheDir": str(_cache_dir() / "node-agent"),
            "listen": f"127.0.0.1:{self.port}",
            "endpoint": f"http://127.0.0.1:{self.port}",
            "kubeconfig": str(self.paths.kubeconfig),
            "staticTokenFile": str(self.paths.token()),
            "plainHttpRegistries": [self.registry.host],
            "registryMirrors": {"docker.io": self.registry.host},
            "allowEmulation": True,
            # One cgroup parent per environment: a node agent reaps VMs in its parent that it
            # has no record of, so two environments must never share one.
            "cgroupParent": "kubesandbox-devenv-"
            + hashlib.sha256(str(self.paths.state_dir).encode()).hexdigest()[:8],
        }
        if self.dns:
            config["dns"] = self.dns
        if self.egress_upstream_cas:
            config["egressUpstreamCAs"] = self.egress_upstream_cas
        config_file = self.paths.state_dir / "node-agent.yaml"
        config_file.parent.mkdir(parents=True, exist_ok=True)
        config_file.write_text(yaml.safe_dump(config))
        self.process.start(
            [sys.executable, "-P", "-m", "kubesandbox_node", "--config", str(config_file)],
            tied=self.paths.tied,
            cwd=REPO_ROOT,
        )
        _wait(self.process, f"http://127.0.0.1:{self.port}/healthz", "the node agent", 120)
        return f"{self.node} at http://127.0.0.1:{self.port} (emulation allowed)"

    def relay_socket(self, uid: str) -> Path:
        return self.state / "sandboxes" / uid / "agent.sock"

    def is_alive(self) -> bool:
        return self.process.is_alive() and http_ok(f"http://127.0.0.1:{self.port}/healthz")

    def stop(self) -> None:
        self.process.stop()


class OperatorService:
    name = "operator"

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.process = ManagedProcess("operator", paths.logs, paths.run)

    def start(self) -> str:
        if self.is_alive():
            return "running"
        operator = Path(sys.executable).with_name("kubesandbox-operator")
        self.process.start(
            [
                str(operator),
                "--kubeconfig",
                str(self.paths.kubeconfig),
                "--namespace",
                SYSTEM_NAMESPACE,
                "--node-agent-token-file",
                str(self.paths.token()),
            ],
            tied=self.paths.tied,
        )
        time.sleep(0.5)
        if not self.process.is_alive():
            raise ServiceError(f"the operator exited:\n{self.process.log_tail()}")
        return "running"

    def is_alive(self) -> bool:
        return self.process.is_alive()

    def stop(self) -> None:
        self.process.stop()


class SystemNamespace:
    """``kubesandbox-system``: where the operator's and node agents' Leases live."""

    name = "namespace"

    def __init__(self, control_plane: ControlPlane) -> None:
        self.control_plane = control_plane

    def start(self) -> str:
        manifest = json.dumps(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM_NAMESPACE}}
        )
        self.control_plane.kubectl("apply", "-f", "-", input_text=manifest)
        return SYSTEM_NAMESPACE

    def is_alive(self) -> bool:
        result = self.control_plane.kubectl("get", "namespace", SYSTEM_NAMESPACE, check=False)
        return result.returncode == 0

    def stop(self) -> None:
        """Lives in etcd with everything else."""


class GatewayService:
    """``kubesandbox-gateway`` on a remembered loopback port, plus the Service
    ``kubesandbox-gateway`` in ``kubesandbox-system`` (no selector; annotation
    ``kubesandbox.dev/url``) through which ``kubectl sandbox`` finds it.

    Here it runs with the admin kubeconfig; in a cluster it runs with its ServiceAccount,
    bound to the chart's ``kubesandbox-gateway`` ClusterRole (docs/rbac.md)."""

    name = "gateway"

    def __init__(self, paths: Paths, control_plane: ControlPlane) -> None:
        self.paths = paths
        self.control_plane = control_plane
        self.process = ManagedProcess("gateway", paths.logs, paths.run)
        self.port = paths.remembered_port("gateway")

    @property
    def url(self) -> str:
        """The base URL (the SDK's ``MSB_API_URL`` is this plus ``/ns/<namespace>``)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> str:
        if not self.is_alive():
            gateway = Path(sys.executable).with_name("kubesandbox-gateway")
            self.process.start(
                [
                    str(gateway),
                    "--kubeconfig",
                    str(self.paths.kubeconfig),
                    "--listen",
                    f"127.0.0.1:{self.port}",
                ],
                tied=self.paths.tied,
            )
            _wait(self.process, f"{self.url}/healthz", "the gateway", 60)
        self.control_plane.kubectl("apply", "-f", "-", input_text=json.dumps(self.service()))
        return f"{self.url} (Service {SYSTEM_NAMESPACE}/{GATEWAY_SERVICE})"

    def service(self) -> dict[str, object]:
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": GATEWAY_SERVICE,
                "namespace": SYSTEM_NAMESPACE,
                "labels": {"app.kubernetes.io/name": "kubesandbox"},
                "annotations": {GATEWAY_URL_ANNOTATION: self.url},
            },
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": self.port}]},
        }

    def is_alive(self) -> bool:
        return self.process.is_alive() and http_ok(f"{self.url}/healthz")

    def stop(self) -> None:
        self.process.stop()


def apply_rbac(control_plane: ControlPlane) -> list[str]:
    """Applies the chart's RBAC for users and the gateway (its templates rendered by ``helm
    template``, see :data:`kubesandbox_devenv.helm.RBAC_TEMPLATES`); returns the names of what
    it applied. ``kubesandbox-system`` must exist."""
    manifests = helm.rbac_manifests(SYSTEM_NAMESPACE)
    applied = control_plane.kubectl("apply", "-f", "-", "-o", "name", input_text=manifests).stdout
    return [line.rpartition("/")[2] for line in applied.split()]


def issue_token(
    control_plane: ControlPlane,
    namespace: str,
    name: str,
    cluster_role: str | None = None,
    *,
    duration_hours: int = 2,
) -> str:
    """A TokenRequest token for the ServiceAccount ``namespace/name`` (created if missing),
    bound to ``cluster_role`` in ``namespace`` when given."""
    manifests: list[dict[str, object]] = [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": namespace},
        }
    ]
    if cluster_role is not None:
        manifests.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": f"{name}-{cluster_role}", "namespace": namespace},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": cluster_role,
                },
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
            }
        )
    listing = {"apiVersion": "v1", "kind": "List", "items": manifests}
    control_plane.kubectl("apply", "-f", "-", input_text=json.dumps(listing))
    created = control_plane.kubectl(
        "create", "token", name, "-n", namespace, f"--duration={duration_hours}h"
    )
    return created.stdout.strip()


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT (not verified: only to decide when to issue a new one)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, KeyError, TypeError, ValueError):
        return None


def write_kubeconfig(control_plane: ControlPlane, path: Path, token: str, namespace: str) -> Path:
    """A kubeconfig that authenticates with ``token`` and defaults to ``namespace`` (0600)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "kubesandbox",
                "cluster": {
                    "server": control_plane.server,
                    "certificate-authority-data": base64.b64encode(
                        control_plane.ca.read_bytes()
                    ).decode(),
                },
            }
        ],
        "users": [{"name": "token", "user": {"token": token}}],
        "contexts": [
            {
                "name": "kubesandbox",
                "context": {"cluster": "kubesandbox", "user": "token", "namespace": namespace},
            }
        ],
        "current-context": "kubesandbox",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(config))
    return path


class AccessComponent:
    """The chart's RBAC, and the demo ServiceAccount (``edit`` in ``default``) whose token
    ``up`` writes to ``.kubesandbox/token`` and ``.kubesandbox/demo.kubeconfig``."""

    name = "access"

    def __init__(
        self, paths: Paths, control_plane: ControlPlane, *, apply_rbac: bool = True
    ) -> None:
        self.paths = paths
        self.control_plane = control_plane
        self.apply_rbac = apply_rbac
        """False when the chart is installed: the RBAC is the release's (Helm refuses to adopt
        objects that someone else applied)."""

    @property
    def token_file(self) -> Path:
        return self.paths.state_dir / "token"

    @property
    def kubeconfig_file(self) -> Path:
        return self.paths.state_dir / "demo.kubeconfig"

    def start(self) -> str:
        if self.apply_rbac:
            apply_rbac(self.control_plane)
        namespace, account, role = DEMO_ACCOUNT
        token = self.token_file.read_text().strip() if self.token_file.is_file() else ""
        expiry = token_expiry(token) if token else None
        reused = expiry is not None and expiry > time.time() + 86400 and self._valid(token)
        if not reused:
            token = issue_token(
                self.control_plane,
                namespace,
                account,
                role,
                duration_hours=DEMO_TOKEN_DURATION_HOURS,
            )
            self.token_file.touch(mode=0o600)
            self.token_file.write_text(token + "\n")
        write_kubeconfig(self.control_plane, self.kubeconfig_file, token, namespace)
        applied = "RBAC applied; " if self.apply_rbac else ""
        return (
            f"{applied}ServiceAccount {namespace}/{account} ({role}), "
            f"token {'reused' if reused else 'issued'} in {self.token_file.name}"
        )

    def _valid(self, token: str) -> bool:
        """Still accepted by the apiserver (the ServiceAccount may have been recreated)."""
        with tempfile.TemporaryDirectory() as scratch:
            kubeconfig = write_kubeconfig(
                self.control_plane, Path(scratch) / "kubeconfig", token, DEMO_ACCOUNT[0]
            )
            result = subprocess.run(
                [str(self.control_plane.binaries.kubectl), "--kubeconfig", str(kubeconfig),
                 "auth", "whoami", "-o", "name"],
                capture_output=True, text=True, check=False, timeout=60,
            )  # fmt: skip
        return result.returncode == 0

    def is_alive(self) -> bool:
        return self.token_file.is_file() and self.kubeconfig_file.is_file()

    def stop(self) -> None:
        """RBAC and the ServiceAccount live in etcd; the token stays valid until it expires."""


@dataclass(frozen=True)
class RunningSystem:
    """The host-process system, as :func:`running_system` started it."""

    plane: ControlPlane
    paths: Paths
    node_agent: NodeAgentService
    operator: OperatorService
    gateway: GatewayService
    demo_token: str
    """A token of ``default/demo``, bound to ``edit`` in ``default``."""

    @property
    def gateway_url(self) -> str:
        return self.gateway.url


_Service = RegistryService | NodeAgentService | OperatorService | GatewayService


@contextmanager
def running_system(
    prefix: str,
    *,
    node_shape: NodeShape | None = None,
    cleanup_timeout: float = 60.0,
    dns: Sequence[str] = (),
    egress_upstream_cas: Sequence[str] = (),
) -> Iterator[RunningSystem]:
    """The host-process system, in a fresh temporary directory, tied to this process
    (benchmarks and tests that want no real node); on exit every sandbox is deleted, the
    processes stopped, the directory removed. The directory is short on purpose (unix socket
    paths are limited to 108 bytes). ``dns``: the node agent's upstream resolvers (a test
    zone's server); ``egress_upstream_cas``: PEM files the egress proxy trusts (a test CA)."""
    state = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        with ControlPlane(
            state, nodes=1, binaries=ensure_binaries(), node_shape=node_shape
        ) as plane:
            plane.install_crds(REPO_ROOT / "crds")
            SystemNamespace(plane).start()
            paths = Paths(state, tied=True)
            access = AccessComponent(paths, plane)
            access.start()
            registry = RegistryService(paths)
            node_agent = NodeAgentService(
                paths, registry, dns=dns, egress_upstream_cas=egress_upstream_cas
            )
            operator = OperatorService(paths)
            gateway = GatewayService(paths, plane)
            order: list[_Service] = [registry, node_agent, operator, gateway]
            started: list[_Service] = []
            try:
                for service in order:
                    service.start()
                    started.append(service)
                demo_token = access.token_file.read_text().strip()
                yield RunningSystem(plane, paths, node_agent, operator, gateway, demo_token)
            finally:
                remove_all_sandboxes(plane, timeout=cleanup_timeout)
                for service in reversed(started):
                    service.stop()
                kill_leftover_vms(state)
    finally:
        # Only after the control plane stopped: it finds its processes through pid files here.
        shutil.rmtree(state, ignore_errors=True)


def remove_all_sandboxes(control_plane: ControlPlane, timeout: float = 120.0) -> None:
    """Deletes every SandboxPool (which drains its members) and every Sandbox while the
    operator and node agent still run, so VMs and their files go the normal way before
    ``down`` stops the processes."""
    if control_plane.status().get("kube-apiserver") is None:
        return
    control_plane.kubectl(
        "delete", "sandboxpools", "--all", "--all-namespaces", f"--timeout={int(timeout)}s",
        check=False,
    )  # fmt: skip
    control_plane.kubectl(
        "delete", "sandboxes", "--all", "--all-namespaces", f"--timeout={int(timeout)}s",
        check=False,
    )  # fmt: skip


def netns_names() -> list[str]:
    """The named network namespaces on this host (``ip netns list``): where a sandbox's
    ``ksb-<uid prefix>`` would be left behind."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]


def qemu_processes(marker: str) -> dict[int, str]:
    """pid → command line of every QEMU process whose command line names ``marker`` (a state
    directory): the one way the environment, its tests and benchmarks find their VMs. Only
    processes that are QEMU already count (not the ``/bin/sh`` cgroup wrapper before it execs)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not Path(argv[0].decode(errors="replace")).name.startswith("qemu-system"):
            continue
        cmdline = b" ".join(argv).decode(errors="replace")
        if marker in cmdline:
            found[int(proc.name)] = cmdline
    return found


def kill_leftover_vms(state_dir: Path) -> int:
    """Kills QEMU processes that belong to this environment (a last resort for ``down``)."""
    killed = 0
    for pid in qemu_processes(str(state_dir)):
        try:
            os.kill(pid, 9)
            killed += 1
        except ProcessLookupError:
            pass
    return killed


async def run_in_sandbox(relay_socket: Path, command: str) -> tuple[int, str]:
    """Runs ``sh -c command`` through the node agent's relay socket; returns (code, output)."""
    from kubesandbox_protocol.client import AgentClient

    async with await AgentClient.connect(relay_socket) as agent:
        result = await agent.run("/bin/sh", ["-c", command])
    return result.code, (result.stdout + result.stderr).decode(errors="replace")


def demo(
    control_plane: ControlPlane, relay_socket: Callable[[str], Path], timeout: float = 300.0
) -> str:
    """Applies examples/hello.yaml, waits for Running, runs a command in it through the node
    agent's relay (``relay_socket(uid)``); returns its output."""
    control_plane.kubectl("apply", "-f", str(REPO_ROOT / "examples" / "hello.yaml"))
    deadline = time.monotonic() + timeout
    while True:
        got = control_plane.kubectl("get", "sandbox", "hello", "-o", "json", check=False)
        body = json.loads(got.stdout) if got.returncode == 0 else {}
        phase = body.get("status", {}).get("phase")
        if phase == "Running":
            break
        if phase in ("Failed", "Crashed") or time.monotonic() > deadline:
            message = body.get("status", {}).get("message") or json.dumps(
                body.get("status", {}), indent=2
            )
            raise ServiceError(f"sandbox hello is {phase or 'not running'}: {message}")
        time.sleep(1)
    uid = body["metadata"]["uid"]
    code, output = asyncio.run(
        run_in_sandbox(
            relay_socket(uid),
            'echo "Hello from $(hostname), a microVM: $(uname -sr), $(nproc) vCPU"; '
            "cat /proc/meminfo | head -1",
        )
    )
    if code != 0:
        raise ServiceError(f"the demo command exited {code}: {output}")
    return output
