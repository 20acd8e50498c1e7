"""``python -m kubesandbox_node``: the node agent's entry point.

Configuration comes from a YAML file (``--config``) with flags overriding it; the keys are
those of ``NodeAgentConfig`` in camelCase (docs/node-agent.md). Start-up, in order: the boot
image (the guest agent binary + the pinned kernel, cached), the KVM probe (TCG only when
emulation is allowed), the image service and rootfs builder, the runtime, the Kubernetes
client (kubeconfig or in-cluster), the serving certificate, the status writer and the Lease,
then the HTTPS API. On start the runtime re-adopts the VMs a previous node agent left running;
on SIGTERM the agent lets go of them without stopping them.

In a DaemonSet Pod the node agent takes what the Pod gives it (docs/node-agent.md, "Running
in a Pod"): ``NODE_NAME`` (``spec.nodeName``) and ``HOST_IP`` (``status.hostIP``) from the
downward API, the in-cluster service account, ``KUBESANDBOX_GUEST_AGENT`` from the image, and
``tls: auto`` by default.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import ipaddress
import os
import signal
import ssl
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import structlog
import yaml
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from kubesandbox_common import logs
from kubesandbox_kube import KubeClient
from kubesandbox_kube.auth import Access, Authenticator, KubeAuthenticator, User
from kubesandbox_node.bootimage import initramfs, standin
from kubesandbox_node.bootimage.initramfs import BootImage
from kubesandbox_node.images.registry import RegistryClient, RegistryConfig
from kubesandbox_node.images.service import ImageService
from kubesandbox_node.network.netns import NetnsNetwork
from kubesandbox_node.rootfs.assemble import SandboxRootfs
from kubesandbox_node.rootfs.hostpaths import HostPathPolicy
from kubesandbox_node.runtime.cgroups import CgroupManager
from kubesandbox_node.runtime.manager import Runtime
from kubesandbox_node.runtime.prepare import (
    VIRTIOFS_MODULES,
    NetworkProvider,
    NoNetwork,
    SandboxPreparer,
)
from kubesandbox_node.runtime.supervisor import Timing
from kubesandbox_node.runtime.vmm import QemuVMM
from kubesandbox_node.server import tls
from kubesandbox_node.server.app import make_app
from kubesandbox_node.server.services import Services
from kubesandbox_node.status.events import EventRecorder
from kubesandbox_node.status.lease import LeaseRenewer
from kubesandbox_node.status.writer import StatusWriter
from kubesandbox_node.vm.host import kvm_usable, tsc_khz
from kubesandbox_node.vm.spec import VIRTIOFSD
from kubesandbox_node.volumes.prepare import NamedVolumes

log = structlog.get_logger("kubesandbox_node")
REPO = Path(__file__).resolve().parents[1]


def in_cluster() -> bool:
    """Running in a Pod: the kubelet sets the API Service's address in every container."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


class NodeAgentConfig(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    node_name: str = Field(
        default_factory=lambda: os.environ.get("NODE_NAME") or os.uname().nodename
    )
    """``$NODE_NAME`` (the DaemonSet sets it from ``spec.nodeName``), else the host name."""
    host_ip: str | None = Field(default_factory=lambda: os.environ.get("HOST_IP") or None)
    """The node's address callers reach: ``$HOST_IP`` (from ``status.hostIP``) by default."""
    state_dir: Path = Path("/var/lib/kubesandbox")
    cache_dir: Path = Path("/var/cache/kubesandbox")
    listen: str = "0.0.0.0:9443"
    endpoint: str | None = None
    """What the Lease announces; by default ``<scheme>://<hostIp>:<port>`` when ``hostIp`` is
    known, else ``<scheme>://<listen>`` (``https`` when TLS is on)."""
    tls: Literal["auto", "off"] | None = None
    """Without ``tlsCert``/``tlsKey``: ``auto`` makes and keeps a self-signed certificate in
    ``<stateDir>/tls`` and announces it in the Lease; ``off`` serves plain HTTP (a host-process
    development setup). Default: ``auto`` in a cluster, ``off`` outside one."""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    namespace: str = "kubesandbox-system"
    kubeconfig: Path | None = None
    static_token_file: Path | None = None
    """Development only: a file holding one token that is granted every right."""
    allowed_host_paths: list[str] = []
    plain_http_registries: list[str] = []
    registry_mirrors: dict[str, str] = {}
    allow_emulation: bool = False
    guest_agent: Path | None = None
    boot_standin: Literal["ready"] | None = None
    """Tests only: boot the busybox stand-in instead of the guest agent."""
    vmm_user: str | None = "nobody"
    """QEMU drops to this user once set up (``-runas``); empty keeps root."""
    cgroups: bool = True
    cgroup_parent: str = "/kubesandbox"
    """Where VM cgroups go: absolute (``/kubesandbox``) is below each hierarchy's root, so VMs
    outlive the node agent's container; relative is below the node agent's own cgroup."""
    cgroup_root: Path = Path("/sys/fs/cgroup")
    """Where the host's cgroup hierarchies are mounted (``/host/sys/fs/cgroup`` in a Pod)."""
    network: Literal["none", "netns"] = "netns"
    dns: list[ipaddress.IPv4Address] = []
    """Resolvers the sandboxes' resolvers forward to (default: the node's, from
    /etc/resolv.conf, loopback ones left out)."""
    egress_upstream_cas: list[Path] = Field(default=[], alias="egressUpstreamCAs")
    """PEM bundles the egress proxy trusts besides the node's trust store when it verifies
    the servers a sandbox with secrets connects to (docs/networking.md)."""
    ready_timeout: float = 120.0
    sample_interval: float = 5.0
    lease_interval: float = 10.0
    log_level: str = "info"

    @field_validator("tls", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: object) -> object:
        # YAML 1.1 (PyYAML) reads an unquoted `tls: off` as false and `on` as true.
        if isinstance(value, bool):
            return "auto" if value else "off"
        return value

    @model_validator(mode="after")
    def _tls_files_come_in_pairs(self) -> NodeAgentConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            missing = "tlsKey" if self.tls_key is None else "tlsCert"
            raise ValueError(f"{missing}: tlsCert and tlsKey are set together or not at all")
        if self.tls_cert is not None and self.tls == "off":
            raise ValueError("tls: 'off' contradicts tlsCert/tlsKey")
        return self

    @model_validator(mode="after")
    def _cgroup_parent_is_a_plain_path(self) -> NodeAgentConfig:
        parts = self.cgroup_parent.strip("/").split("/")
        if not self.cgroup_parent.strip("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(
                f"cgroupParent: {self.cgroup_parent!r} must name a cgroup below the root "
                "('/kubesandbox', or relative 'kubesandbox'), without '.', '..' or '//'"
            )
        return self

    @property
    def tls_mode(self) -> Literal["files", "auto", "off"]:
        if self.tls_cert is not None:
            return "files"
        return self.tls or ("auto" if in_cluster() else "off")


ADMIN = User("kubesandbox:node-local-admin", uid="static-token")


class StaticTokenAuthenticator:
    """Development: one configured token with every right, other tokens go to ``then``."""

    def __init__(self, token: str, then: Authenticator | None = None) -> None:
        self.token = token
        self.then = then

    async def authenticate(self, token: str) -> User | None:
        if hmac.compare_digest(token.encode(), self.token.encode()):
            return ADMIN
        return await self.then.authenticate(token) if self.then is not None else None

    async def authorize(self, user: User, access: Access) -> bool:
        if user == ADMIN:
            return True
        return await self.then.authorize(user, access) if self.then is not None else False


def load_config(argv: Sequence[str] | None = None) -> NodeAgentConfig:
    parser = argparse.ArgumentParser(prog="python -m kubesandbox_node")
    parser.add_argument("--config", type=Path, help="YAML file with NodeAgentConfig keys")
    for name, info in NodeAgentConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if info.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif name in ("allowed_host_paths", "plain_http_registries", "egress_upstream_cas"):
            parser.add_argument(flag, action="append", default=None)
        elif name == "registry_mirrors":
            parser.add_argument(flag, action="append", default=None, metavar="REGISTRY=MIRROR")
        else:
            parser.add_argument(flag, default=None)
    args = vars(parser.parse_args(argv))
    data: dict[str, Any] = {}
    config_file = args.pop("config")
    if config_file is not None:
        data = yaml.safe_load(config_file.read_text()) or {}
    for name, value in args.items():
        if value is None:
            continue
        if name == "registry_mirrors":
            value = dict(item.split("=", 1) for item in value)
        data[NodeAgentConfig.model_fields[name].alias or to_camel(name)] = value
    return NodeAgentConfig.model_validate(data)


def guest_agent_binary(config: NodeAgentConfig) -> Path:
    if config.guest_agent is not None:
        return config.guest_agent
    configured = os.environ.get("KUBESANDBOX_GUEST_AGENT")
    if configured:
        return Path(configured)
    result = subprocess.run(
        ["bash", str(REPO / "guest-agent" / "build.sh")],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        check=True,
    )
    return Path(result.stdout.decode().strip().splitlines()[-1])


def boot_image(config: NodeAgentConfig) -> BootImage:
    if config.boot_standin is not None:
        init, extra = standin.entries(config.boot_standin)
        return initramfs.build(init, extra=extra)
    return initramfs.build(guest_agent_binary(config))


def serving_identity(config: NodeAgentConfig) -> tls.ServingIdentity | tls.Renewal | None:
    """The certificate to serve and announce: configured files, a made one kept renewed
    (``tls: auto``), or ``None`` for plain HTTP (``tls: off``)."""
    if config.tls_cert is not None and config.tls_key is not None:
        return tls.configured(config.tls_cert, config.tls_key)
    if config.tls_mode == "off":
        return None
    host = config.listen.rpartition(":")[0].strip("[]")
    addresses = [a for a in (config.host_ip, host) if a and not _unspecified(a)]
    return tls.Renewal.start(config.state_dir / "tls", config.node_name, addresses)


def tls_context(config: NodeAgentConfig) -> ssl.SSLContext | None:
    identity = serving_identity(config)
    if isinstance(identity, tls.Renewal):
        return identity.context
    return None if identity is None else identity.server_context()


def advertised_endpoint(config: NodeAgentConfig, secure: bool) -> str:
    """What the Lease announces (see ``NodeAgentConfig.endpoint``)."""
    if config.endpoint:
        return config.endpoint.rstrip("/")
    scheme = "https" if secure else "http"
    host, _, port = config.listen.rpartition(":")
    if config.host_ip:
        host = config.host_ip
    host = host.strip("[]")
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def _unspecified(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_unspecified
    except ValueError:
        return False


def network_provider(config: NodeAgentConfig, state_dir: Path) -> NetworkProvider:
    if config.network == "none":
        return NoNetwork()
    return NetnsNetwork(
        state_dir / "network",
        dns=[str(a) for a in config.dns] or None,
        upstream_cas=[str(path) for path in config.egress_upstream_cas],
    )


async def serve(config: NodeAgentConfig) -> None:
    for folder in (config.state_dir, config.cache_dir):
        folder.mkdir(parents=True, exist_ok=True)
    image = await asyncio.to_thread(boot_image, config)
    accel: Literal["kvm", "tcg"] = "kvm"
    if not await kvm_usable(image.kernel, config.cache_dir):
        if not config.allow_emulation:
            raise SystemExit("KVM cannot run guests here and emulation is not allowed")
        accel = "tcg"
    network = network_provider(config, config.state_dir)
    registry = RegistryClient(RegistryConfig(plain_http=frozenset(config.plain_http_registries)))
    policy = HostPathPolicy.of(config.allowed_host_paths)
    preparer = SandboxPreparer(
        images=ImageService(config.cache_dir / "images", registry),
        rootfs=SandboxRootfs(config.state_dir / "rootfs", policy),
        named=NamedVolumes(config.state_dir / "volumes"),
        policy=policy,
        boot_image=image,
        accel=accel,
        tsc_khz=tsc_khz(),
        mirrors=config.registry_mirrors,
        network=network,
    )
    vmm = QemuVMM(
        accel=accel,
        cgroups=(
            CgroupManager(parent=config.cgroup_parent, root=config.cgroup_root)
            if config.cgroups
            else None
        ),
        wrap=network.wrap_argv,
        run_as=config.vmm_user or None,
    )
    runtime = Runtime(
        config.state_dir,
        vmm=vmm,
        preparer=preparer,
        emulation=accel == "tcg",
        timing=Timing(ready_timeout=config.ready_timeout),
    )
    async with contextlib.AsyncExitStack() as stack:
        kube: KubeClient | None = None
        if config.kubeconfig is not None or in_cluster():
            kube = await stack.enter_async_context(KubeClient.connect(config.kubeconfig))
        try:
            await _serve_with(config, runtime, image, accel, kube, network)
        finally:
            await registry.close()


async def _serve_with(
    config: NodeAgentConfig,
    runtime: Runtime,
    image: BootImage,
    accel: Literal["kvm", "tcg"],
    kube: KubeClient | None,
    network: NetworkProvider,
) -> None:
    authenticator: Authenticator | None = KubeAuthenticator(kube) if kube is not None else None
    if config.static_token_file is not None:
        static = config.static_token_file.read_text().strip()
        authenticator = StaticTokenAuthenticator(static, then=authenticator)
    if authenticator is None:
        raise SystemExit("no kubeconfig, not in a cluster and no static token: refusing to serve")
    identity = serving_identity(config)
    renewal = identity if isinstance(identity, tls.Renewal) else None
    server_tls, certificate = None, None
    if isinstance(identity, tls.Renewal):
        server_tls, certificate = identity.context, identity.identity.pem
    elif identity is not None:
        server_tls, certificate = identity.server_context(), identity.pem
    host, _, port = config.listen.rpartition(":")
    endpoint = advertised_endpoint(config, secure=server_tls is not None)
    capabilities = ["oci", "disk", "network-none", "pause"]
    if not VIRTIOFS_MODULES & set(image.missing_modules) and os.access(VIRTIOFSD, os.X_OK):
        capabilities.insert(2, "bind")
    if config.network == "netns":
        capabilities[-1:-1] = ["network-public-only", "network-all"]
    services = Services(
        runtime,
        authenticator,
        status=StatusWriter(kube) if kube is not None else None,
        lease=(
            LeaseRenewer(
                kube,
                node=config.node_name,
                namespace=config.namespace,
                endpoint=endpoint,
                emulation=accel == "tcg",
                capabilities=tuple(capabilities),
                instance=uuid.uuid4().hex[:8],
                certificate=certificate,
                interval=config.lease_interval,
                renewal=renewal,
            )
            if kube is not None
            else None
        ),
        events=EventRecorder(kube, config.node_name) if kube is not None else None,
        sample_interval=config.sample_interval,
    )
    if isinstance(network, NetnsNetwork):
        network.on_violation = services.secret_violation
    app = make_app(services)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host.strip("[]") or None, int(port), ssl_context=server_tls)
    await site.start()
    log.info("node_agent.serving", endpoint=endpoint, node=config.node_name, accel=accel)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("node_agent.stopping")
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    config = load_config(argv)
    logs.configure(config.log_level, node=config.node_name)
    try:
        asyncio.run(serve(config))
    except tls.TlsError as error:
        raise SystemExit(f"kubesandbox-node-agent: {error}") from error
    return 0
