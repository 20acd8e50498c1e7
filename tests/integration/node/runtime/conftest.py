"""A loopback registry serving ``library/busybox:1.36`` (so ``busybox:1.36`` resolves through
the ``docker.io`` mirror), the real guest agent, and a real ``SandboxPreparer`` around them;
``world``: a runtime with real QEMU on all of that, one per test module."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from kubesandbox_api.conditions import Phase
from kubesandbox_devenv.registry import Layout, Registry, build_image, busybox_entries, layer_tar
from kubesandbox_node.bootimage import initramfs
from kubesandbox_node.bootimage.initramfs import BootImage
from kubesandbox_node.images.registry import RegistryClient, RegistryConfig
from kubesandbox_node.images.service import ImageService
from kubesandbox_node.network.netns import NetnsNetwork
from kubesandbox_node.rootfs.assemble import SandboxRootfs
from kubesandbox_node.rootfs.hostpaths import HostPathPolicy
from kubesandbox_node.runtime.cgroups import CgroupManager
from kubesandbox_node.runtime.manager import Runtime
from kubesandbox_node.runtime.model import DesiredSandbox
from kubesandbox_node.runtime.prepare import SandboxPreparer
from kubesandbox_node.runtime.supervisor import Supervisor, Timing
from kubesandbox_node.runtime.vmm import QemuVMM
from kubesandbox_node.vm.host import tsc_khz
from kubesandbox_node.volumes.prepare import NamedVolumes
from tests.support.egress import guest_image
from tests.support.vms import guest_agent_binary


@dataclass(frozen=True)
class Images:
    registry: Registry
    boot_image: BootImage
    agent: Path

    @property
    def mirrors(self) -> dict[str, str]:
        return {"docker.io": self.registry.host}


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    registry = Registry(tmp_path_factory.mktemp("node-registry")).start()
    try:
        layout = Layout(tmp_path_factory.mktemp("busybox-layout"))
        image = build_image([layer_tar(busybox_entries())], env=("PATH=/bin", "FROM_IMAGE=busybox"))
        layout.add_image("1.36", image)
        registry.push(layout, "1.36", "library/busybox")
        agent = guest_agent_binary()
        yield Images(registry, initramfs.build(agent), agent)
    finally:
        registry.stop()


@pytest.fixture(scope="session")
def egress_guest_image(images: Images) -> str:
    """The Debian guest image with curl and nc (tests/support/egress.py), in the registry."""
    return guest_image(images.registry.host)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A state directory short enough for unix socket paths (108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix=f"ksb-{os.getpid() % 10000}-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class World:
    def __init__(self, images: Images, registry: RegistryClient) -> None:
        self.state = Path(tempfile.mkdtemp(prefix="ksb-agentrt-"))
        self.host = self.state / "host"
        policy = HostPathPolicy.of([str(self.host)])
        preparer = SandboxPreparer(
            images=ImageService(self.state / "images", registry),
            rootfs=SandboxRootfs(self.state / "rootfs", policy),
            named=NamedVolumes(self.state / "volumes"),
            policy=policy,
            boot_image=images.boot_image,
            tsc_khz=tsc_khz(),
            mirrors=images.mirrors,
        )
        self.preparer = preparer
        self.runtime = Runtime(
            self.state,
            vmm=QemuVMM(
                cgroups=CgroupManager(parent=f"kubesandbox-test-{os.getpid()}"), run_as="nobody"
            ),
            preparer=preparer,
            emulation=True,
            timing=Timing(ready_timeout=120, policy_tick=0.25),
        )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(images: Images) -> AsyncIterator[World]:
    registry = RegistryClient(RegistryConfig(plain_http=frozenset({images.registry.host})))
    w = World(images, registry)
    try:
        yield w
    finally:
        for uid in list(w.runtime.sandboxes):
            await w.runtime.remove(uid)
        await registry.close()
        CgroupManager(parent=f"kubesandbox-test-{os.getpid()}").remove_parents()
        shutil.rmtree(w.state, ignore_errors=True)


class Node:
    """A node agent's runtime and network (real QEMU, the real preparer, a network namespace
    per sandbox) over one state directory; ``restart`` lets go of them as a node agent that
    exits does (VMs keep running) and builds new ones. ``upstream_cas``: what the egress
    proxy trusts besides the node's trust store."""

    def __init__(
        self,
        state: Path,
        images: Images,
        registry: RegistryClient,
        *,
        dns: tuple[str, ...] = (),
        upstream_cas: tuple[str, ...] = (),
        timing: Timing | None = None,
    ) -> None:
        self.state, self.images, self.registry = state, images, registry
        self.dns, self.upstream_cas, self.timing = dns, upstream_cas, timing or Timing()
        self.network, self.runtime = self._build()

    def _build(self) -> tuple[NetnsNetwork, Runtime]:
        network = NetnsNetwork(
            self.state / "network", dns=list(self.dns), upstream_cas=list(self.upstream_cas)
        )
        policy = HostPathPolicy.of([])
        preparer = SandboxPreparer(
            images=ImageService(self.state / "images", self.registry),
            rootfs=SandboxRootfs(self.state / "rootfs", policy),
            named=NamedVolumes(self.state / "volumes"),
            policy=policy,
            boot_image=self.images.boot_image,
            tsc_khz=tsc_khz(),
            mirrors=self.images.mirrors,
            network=network,
        )
        vmm = QemuVMM(
            cgroups=CgroupManager(parent=f"kubesandbox-test-{os.getpid()}"),
            wrap=network.wrap_argv,
            run_as="nobody",
        )
        runtime = Runtime(
            self.state, vmm=vmm, preparer=preparer, emulation=True, timing=self.timing
        )
        return network, runtime

    async def restart(self) -> dict[str, bool]:
        await self.runtime.close()
        self.network.close()
        self.network, self.runtime = self._build()
        return await self.runtime.recover()


@contextlib.asynccontextmanager
async def networked_node(
    images: Images,
    *,
    prefix: str,
    dns: tuple[str, ...] = (),
    timing: Timing | None = None,
    upstream_cas: tuple[str, ...] = (),
) -> AsyncIterator[Node]:
    """A :class:`Node` in a state directory of its own, its sandboxes removed afterwards."""
    state = Path(tempfile.mkdtemp(prefix=prefix))
    registry = RegistryClient(RegistryConfig(plain_http=frozenset({images.registry.host})))
    node = Node(state, images, registry, dns=dns, upstream_cas=upstream_cas, timing=timing)
    try:
        yield node
    finally:
        # by the Sandbox each VM serves: a claimed pool VM answers to its claimant's uid only
        for supervisor in list(node.runtime.sandboxes.values()):
            await node.runtime.remove(supervisor.sandbox_uid)
        await registry.close()
        CgroupManager(parent=f"kubesandbox-test-{os.getpid()}").remove_parents()
        shutil.rmtree(state, ignore_errors=True)


@contextlib.asynccontextmanager
async def networked_runtime(
    images: Images, *, prefix: str, dns: tuple[str, ...] = (), timing: Timing | None = None
) -> AsyncIterator[Runtime]:
    """The runtime of a :func:`networked_node`."""
    async with networked_node(images, prefix=prefix, dns=dns, timing=timing) as node:
        yield node.runtime


async def booted(
    runtime: Runtime,
    name: str,
    spec: dict[str, object],
    resolved: dict[str, object] | None = None,
) -> Supervisor:
    """Put ``default/<name>`` (a fresh uid, generation 1, what the operator would have
    ``resolved``) and wait until it runs."""
    desired = DesiredSandbox.model_validate(
        {"namespace": "default", "name": name, "uid": str(uuid.uuid4()), "generation": 1,
         "spec": spec, "resolved": resolved or {}}
    )  # fmt: skip
    supervisor = runtime.put(desired)
    async with asyncio.timeout(240):
        while supervisor.phase not in (Phase.RUNNING, Phase.CRASHED, Phase.FAILED):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert supervisor.status().phase == Phase.RUNNING, supervisor.record.message
    return supervisor
