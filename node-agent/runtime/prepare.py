"""From a ``DesiredSandbox`` to a bootable ``VMSpec``: the real ``Preparer``.

1. ``image``: OCI references go through the image service (pinned digest first, then the
   pull policy), with registry mirrors applied (``docker.io`` → a loopback registry in the
   embedded environment) and the pull credentials the operator resolved. The pin becomes
   ``status.image``.
2. ``build``: the rootfs (``rootfs.assemble``: EROFS layers + a writable ext4 layer with the
   patches and scripts, or a qcow2 overlay over a disk image, or a host directory), the
   volumes, the network (``network``), the boot configuration, and the per-sandbox initrd
   (``bootimage.initramfs.write_initrd``) → ``VMSpec`` with devices named by serial.
3. ``remove``: the rootfs folder, the network, the layer pin. Named volumes stay.

Storage errors become ``PrepareError`` with the reason the status shows.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kubesandbox_api.conditions import Reason
from kubesandbox_api.spec import ContentSource, DirectorySource, LogLevel, NetworkPolicy
from kubesandbox_api.status import ImageStatus, LayerPin
from kubesandbox_node.bootimage.initramfs import BootImage, write_initrd
from kubesandbox_node.images.auth import Credentials, Keychain
from kubesandbox_node.images.errors import (
    AuthError,
    ImageError,
    NotCachedError,
    StorageError,
)
from kubesandbox_node.images.reference import parse_reference
from kubesandbox_node.images.service import ImageService, ReadyImage
from kubesandbox_node.rootfs.assemble import UPPER_IMAGE, HostDirRoot, OverlayRoot, SandboxRootfs
from kubesandbox_node.rootfs.disk import DiskRoot
from kubesandbox_node.rootfs.errors import PatchError, RootfsError
from kubesandbox_node.rootfs.hostpaths import HostPathPolicy
from kubesandbox_node.runtime.claim import hostname_of
from kubesandbox_node.runtime.fork import ForkError, copy_file
from kubesandbox_node.runtime.model import DesiredSandbox
from kubesandbox_node.runtime.snapshots import SnapshotRefused, SnapshotStore
from kubesandbox_node.runtime.supervisor import PrepareError
from kubesandbox_node.vm import bootconfig as bc
from kubesandbox_node.vm.spec import Accel, Drive, Share, VMSpec
from kubesandbox_node.volumes.prepare import NamedVolumes, prepare_volumes
from kubesandbox_protocol.client import AgentClient, AgentError

_PATCH_INDEX = re.compile(r"patches\[(\d+)\]")
VIRTIOFS_MODULES = frozenset({"fuse", "virtiofs"})
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class NetworkProvider(Protocol):
    """Per-sandbox networking (``kubesandbox_node.network``)."""

    async def attach(self, desired: DesiredSandbox) -> tuple[bc.Network | None, list[str]]:
        """The guest's network configuration and extra QEMU arguments (the NIC)."""
        ...

    def wrap_argv(self, uid: str, argv: list[str]) -> list[str]: ...

    async def detach(self, uid: str) -> None: ...

    def update_secrets(self, desired: DesiredSandbox) -> None:
        """New secret values for the sandbox's egress proxy."""
        ...

    def ca_certificate(self, uid: str) -> bytes | None:
        """The PEM certificate of the sandbox's egress CA, when it has an egress proxy."""
        ...

    def drop_egress(self, uid: str) -> None:
        """Closes the sandbox's egress proxy and forgets its CA (the next ``attach`` with
        secrets makes a new one)."""
        ...


class NoNetwork:
    async def attach(self, desired: DesiredSandbox) -> tuple[bc.Network | None, list[str]]:
        return None, []

    def wrap_argv(self, uid: str, argv: list[str]) -> list[str]:
        return argv

    async def detach(self, uid: str) -> None:
        return None

    def update_secrets(self, desired: DesiredSandbox) -> None:
        return None

    def ca_certificate(self, uid: str) -> bytes | None:
        return None

    def drop_egress(self, uid: str) -> None:
        return None


@dataclass
class ResolvedSources:
    """Copy sources the operator resolved, by patch index (docs/node-agent-api.md)."""

    files: Mapping[str, str]
    dirs: Mapping[str, Mapping[str, str]]

    def _index(self, where: str) -> str:
        found = _PATCH_INDEX.search(where)
        if found is None:
            raise PatchError("copy source without a patch index", field=where)
        return found.group(1)

    def file(self, source: ContentSource, *, field: str) -> bytes:
        key = self._index(field)
        if key not in self.files:
            raise PatchError("the operator sent no content for this copy source", field=field)
        return base64.b64decode(self.files[key])

    def directory(self, source: DirectorySource, *, field: str) -> Mapping[str, bytes]:
        key = self._index(field)
        if key not in self.dirs:
            raise PatchError("the operator sent no content for this copy source", field=field)
        return {name: base64.b64decode(data) for name, data in self.dirs[key].items()}


def mirrored(reference: str, mirrors: Mapping[str, str]) -> str:
    ref = parse_reference(reference)
    mirror = mirrors.get(ref.registry)
    if mirror is None:
        return reference
    out = f"{mirror}/{ref.repository}"
    if ref.tag:
        out += f":{ref.tag}"
    if ref.digest:
        out += f"@{ref.digest}"
    return out


def _image_reason(exc: StorageError) -> Reason:
    if isinstance(exc, NotCachedError):
        return Reason.IMAGE_NOT_CACHED
    if isinstance(exc, AuthError) or exc.temporary:
        return Reason.IMAGE_PULL_FAILED
    text = str(exc).lower()
    if "not found" in text or "unknown" in text or "404" in text:
        return Reason.IMAGE_NOT_FOUND
    if isinstance(exc, ImageError):
        return Reason.INVALID_IMAGE
    return Reason.IMAGE_PULL_FAILED


@dataclass
class SandboxPreparer:
    images: ImageService
    rootfs: SandboxRootfs
    named: NamedVolumes
    policy: HostPathPolicy
    boot_image: BootImage
    accel: Accel = "tcg"
    tsc_khz: int | None = None
    mirrors: Mapping[str, str] = field(default_factory=dict)
    network: NetworkProvider = field(default_factory=NoNetwork)
    snapshots: SnapshotStore | None = None
    """Where snapshots are kept (``Runtime.snapshots``): a sandbox from one copies its layer."""
    _ready: dict[str, ReadyImage] = field(default_factory=dict)

    async def image(self, desired: DesiredSandbox) -> ImageStatus | None:
        source = desired.spec.image
        reference = source.oci
        if source.snapshot is not None:  # the snapshot's image, pinned by the operator
            snapshot = desired.resolved.snapshot_of
            if desired.pinned_image is None or snapshot is None:
                raise PrepareError(
                    Reason.ROOTFS_FAILED, "spec.image.snapshot: the snapshot is not resolved"
                )
            reference = desired.pinned_image.reference
            self.images.share(snapshot, desired.uid)
        if reference is None:
            return None
        keychain = Keychain()
        for auth in desired.resolved.pull_auths:
            keychain.add(auth.registry, Credentials(auth.username, auth.password))
        pinned = desired.pinned_image.digest if desired.pinned_image else None
        try:
            ready = await self.images.ensure(
                desired.uid,
                mirrored(reference, self.mirrors),
                pull_policy=source.pull_policy,
                keychain=keychain,
                pinned_digest=pinned,
            )
        except StorageError as exc:
            raise PrepareError(_image_reason(exc), str(exc)) from exc
        self._ready[desired.uid] = ready
        record = ready.record
        return ImageStatus(
            reference=reference,
            digest=record.manifest_digest,
            layers=[LayerPin(digest=layer.digest, size=layer.size) for layer in record.layers],
            resolved_at=record.resolved_at,
        )

    async def build(self, desired: DesiredSandbox, vm_dir: Path) -> VMSpec:
        try:
            return await self._build(desired, vm_dir)
        except StorageError as exc:
            raise PrepareError(Reason.ROOTFS_FAILED, str(exc)) from exc

    async def _build(self, desired: DesiredSandbox, vm_dir: Path) -> VMSpec:
        spec = desired.spec
        ready = self._ready.get(desired.uid)
        sources = ResolvedSources(desired.resolved.files, desired.resolved.dirs)
        if desired.resolved.snapshot_of is not None:
            await self._seed_from_snapshot(desired, desired.resolved.snapshot_of)
        prepared = await self.rootfs.prepare(
            desired.uid,
            spec.image,
            layers=ready.layers if ready else (),
            patches=spec.patches,
            scripts=spec.scripts,
            sources=sources,
            size_mib=spec.rootfs_size_mib,
        )
        drives: list[Drive] = []
        shares: list[Share] = []
        root: bc.OverlayRoot | bc.DiskRoot | bc.ShareRoot
        if isinstance(prepared, OverlayRoot):
            serials = [f"layer{i}" for i in range(len(prepared.layers))]
            drives += [Drive(s, p) for s, p in zip(serials, prepared.layers, strict=True)]
            drives.append(Drive("upper", prepared.upper, read_only=False))
            root = bc.OverlayRoot(layers=serials, upper="upper")
        elif isinstance(prepared, DiskRoot):
            drives.append(Drive("root", prepared.overlay, read_only=False, format="qcow2"))
            root = bc.DiskRoot(device="root", fstype=prepared.fstype or "ext4")
        else:
            assert isinstance(prepared, HostDirRoot)
            shares.append(Share("root", prepared.path, read_only=prepared.read_only))
            root = bc.ShareRoot(tag="root", read_only=prepared.read_only)
        volumes: list[bc.TmpfsVolume | bc.ShareVolume | bc.BlockVolume] = []
        for volume in prepare_volumes(
            spec.volumes, namespace=desired.namespace, policy=self.policy, named=self.named
        ):
            if volume.kind == "tmpfs":
                volumes.append(
                    bc.TmpfsVolume(mount_path=volume.mount_path, size_mib=volume.size_mib)
                )
            elif volume.kind == "block":
                assert volume.host_path is not None
                assert volume.tag is not None
                drives.append(Drive(volume.tag, volume.host_path, read_only=volume.read_only))
                volumes.append(
                    bc.BlockVolume(
                        mount_path=volume.mount_path,
                        device=volume.tag,
                        fstype="ext4",
                        read_only=volume.read_only,
                    )
                )
            else:
                assert volume.host_path is not None
                assert volume.tag is not None
                shares.append(Share(volume.tag, volume.host_path, read_only=volume.read_only))
                volumes.append(
                    bc.ShareVolume(
                        mount_path=volume.mount_path, tag=volume.tag, read_only=volume.read_only
                    )
                )
        if shares and VIRTIOFS_MODULES & set(self.boot_image.missing_modules):
            raise PrepareError(
                Reason.ROOTFS_FAILED,
                "host directories (bind roots and bind volumes) are shared over virtio-fs, "
                "and this node's guest kernel has no virtiofs module",
            )
        network, nic_args = await self.network.attach(desired)
        defaults = ready.record.defaults if ready else None
        config = bc.BootConfig(
            hostname=hostname_of(desired),
            root=root,
            volumes=volumes,
            env=self._env(desired, defaults.env if defaults else []),
            workdir=spec.workdir or (defaults.working_dir if defaults else None) or None,
            user=str(spec.user)
            if spec.user is not None
            else (defaults.user if defaults else None) or None,
            shell=spec.shell,
            init=None if spec.init == "none" else spec.init,
            network=network,
            log_level=_log_level(spec.log_level),
        )
        initrd = await asyncio.to_thread(self._initrd, config, vm_dir)
        return VMSpec(
            name=desired.uid,
            kernel=self.boot_image.kernel,
            initrd=initrd,
            state_dir=vm_dir,
            cpus=spec.cpus,
            memory_mib=spec.memory_mib,
            accel=self.accel,
            tsc_khz=self.tsc_khz,
            drives=tuple(drives),
            shares=tuple(shares),
            extra_args=tuple(nic_args),
        )

    async def _seed_from_snapshot(self, desired: DesiredSandbox, snapshot: str) -> None:
        """A sandbox from a snapshot starts with its own copy of the captured writable layer
        (made once: later starts find it, as any sandbox finds its layer)."""
        folder = self.rootfs.sandbox_dir(desired.uid)
        upper = folder / UPPER_IMAGE
        if upper.exists():
            return
        if self.snapshots is None:
            raise PrepareError(Reason.ROOTFS_FAILED, "this node agent keeps no snapshots")
        folder.mkdir(mode=0o700, exist_ok=True)
        partial = folder / f".{UPPER_IMAGE}.partial"
        try:
            await copy_file(self.snapshots.upper(snapshot), partial)
        except (SnapshotRefused, ForkError) as exc:
            raise PrepareError(Reason.ROOTFS_FAILED, f"spec.image.snapshot: {exc}") from exc
        partial.rename(upper)

    def _initrd(self, config: bc.BootConfig, vm_dir: Path) -> Path:
        vm_dir.mkdir(parents=True, exist_ok=True)
        return write_initrd(self.boot_image, config, vm_dir / "initrd.cpio")

    async def claim_env(self, desired: DesiredSandbox) -> list[str]:
        if desired.uid not in self._ready and desired.pinned_image is not None:
            # A VM adopted after a restart: its pinned image is cached on this node, so this
            # only reads the image's configuration back.
            with contextlib.suppress(PrepareError):
                await self.image(desired)
        ready = self._ready.get(desired.uid)
        defaults = ready.record.defaults if ready else None
        return self._env(desired, defaults.env if defaults else [])

    def _env(self, desired: DesiredSandbox, image_env: list[str]) -> list[str]:
        merged: dict[str, str] = {}
        for item in [DEFAULT_PATH, *image_env]:
            name, _, value = item.partition("=")
            merged[name] = value
        for var in desired.spec.env:
            if var.value is not None:
                merged[var.name] = var.value
            elif var.name in desired.resolved.env:
                merged[var.name] = desired.resolved.env[var.name]
        merged.update(egress_env(desired))
        return [f"{k}={v}" for k, v in merged.items()]

    async def egress_trust(self, desired: DesiredSandbox, relay_socket: Path) -> None:
        pem = self.network.ca_certificate(desired.uid)
        if pem is None:
            return
        async with await AgentClient.connect(relay_socket) as client:
            await install_trust(client, pem)

    def rotate_secrets(self, desired: DesiredSandbox) -> None:
        self.network.update_secrets(desired)

    async def claim_network(self, member: DesiredSandbox, claimant: DesiredSandbox) -> None:
        """A claimed VM's egress as if it had booted with the claimant's spec: with secrets, a
        proxy holding the claimant's values behind a CA of its own (a member's proxy, if its
        template had secrets, is dropped with its CA); without, none. Both share the network
        policy, rules and ports (they are boot-time fields)."""
        if not member.spec.secrets and not claimant.spec.secrets:
            return
        self.network.drop_egress(member.uid)
        await self.update_live(member, claimant)

    async def update_live(self, previous: DesiredSandbox, desired: DesiredSandbox) -> None:
        """Network policy, rules and published ports of a running sandbox (also called with
        ``previous == desired`` on re-adoption, to restart the sandbox's resolver); adding or
        removing the NIC itself (policy ``None`` without rules on one side only) waits for the
        next start."""
        if _has_nic(previous) != _has_nic(desired):
            raise PrepareError(
                Reason.POLICY_VIOLATION,
                "network policy None without rules ⇄ a network applies at the next start",
            )
        if _has_nic(desired):
            await self.network.attach(desired)

    async def fork(
        self, desired: DesiredSandbox, source_uid: str
    ) -> tuple[bc.Network | None, list[str]]:
        """A fork's network (its own namespace and tap, a MAC of its own) and a pin on its
        source's image layers, which its machine reads (the source may go first)."""
        self.images.share(source_uid, desired.uid)
        return await self.network.attach(desired)

    def share_image(self, source_uid: str, uid: str) -> None:
        self.images.share(source_uid, uid)

    def release_image(self, uid: str) -> None:
        self.images.release(uid)

    async def remove(self, desired: DesiredSandbox) -> None:
        self._ready.pop(desired.uid, None)
        with contextlib.suppress(RootfsError):
            self.rootfs.delete(desired.uid)
        await self.network.detach(desired.uid)
        self.images.release(desired.uid)


EGRESS_DIR = "/.msb/egress"
EGRESS_BUNDLE = f"{EGRESS_DIR}/ca-certificates.crt"
"""The image's distribution bundle with the sandbox's egress CA appended."""
EGRESS_CA = f"{EGRESS_DIR}/ca.crt"
"""The egress CA alone (``NODE_EXTRA_CA_CERTS`` adds to Node's own list)."""
DISTRIBUTION_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
TRUST_ENV = {
    "SSL_CERT_FILE": EGRESS_BUNDLE,
    "REQUESTS_CA_BUNDLE": EGRESS_BUNDLE,
    "CURL_CA_BUNDLE": EGRESS_BUNDLE,
    "NODE_EXTRA_CA_CERTS": EGRESS_CA,
}


def egress_env(desired: DesiredSandbox) -> dict[str, str]:
    """What a sandbox with secrets has in its environment: each secret's placeholder (never
    its value) and the trust-store variables pointing at the bundle with the egress CA."""
    secrets = desired.spec.secrets
    if not secrets:
        return {}
    return {**TRUST_ENV, **{s.env: s.effective_placeholder for s in secrets}}


async def install_trust(client: AgentClient, pem: bytes) -> None:
    """Writes the egress CA, and the first distribution bundle found with it appended, under
    ``EGRESS_DIR`` in the guest (again after a node agent restart: the CA is new then)."""
    bundle = b""
    for path in DISTRIBUTION_BUNDLES:
        with contextlib.suppress(AgentError):
            bundle = await client.read_file(path)
            break
    if bundle and not bundle.endswith(b"\n"):
        bundle += b"\n"
    with contextlib.suppress(AgentError):
        await client.mkdir("/.msb", mode=0o755)
    with contextlib.suppress(AgentError):
        await client.mkdir(EGRESS_DIR, mode=0o755)
    await client.write_file(EGRESS_CA, pem, mode=0o644)
    await client.write_file(EGRESS_BUNDLE, bundle + pem, mode=0o644)


def _has_nic(desired: DesiredSandbox) -> bool:
    network = desired.spec.network
    return network.policy != NetworkPolicy.NONE or bool(network.rules)


def _log_level(level: LogLevel | None) -> bc.LogLevel:
    if level is None:
        return "info"
    mapping: dict[LogLevel, bc.LogLevel] = {
        LogLevel.ERROR: "error",
        LogLevel.WARN: "warn",
        LogLevel.INFO: "info",
        LogLevel.DEBUG: "debug",
        LogLevel.TRACE: "trace",
    }
    return mapping[level]
