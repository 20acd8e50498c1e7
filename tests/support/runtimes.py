"""A real node runtime for benchmarks: QEMU, the real guest agent and preparer, busybox from a
loopback registry; no network (``bench/suspend.py``, ``bench/fork.py``) or a network namespace
per sandbox (``bench/egress.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from kubesandbox_api.conditions import Phase
from kubesandbox_devenv.registry import Layout, Registry, build_image, busybox_entries, layer_tar
from kubesandbox_node.bootimage import initramfs
from kubesandbox_node.images.registry import RegistryClient, RegistryConfig
from kubesandbox_node.images.service import ImageService
from kubesandbox_node.network.netns import NetnsNetwork
from kubesandbox_node.rootfs.assemble import SandboxRootfs
from kubesandbox_node.rootfs.hostpaths import HostPathPolicy
from kubesandbox_node.runtime.cgroups import CgroupManager
from kubesandbox_node.runtime.manager import Runtime
from kubesandbox_node.runtime.prepare import NoNetwork, SandboxPreparer
from kubesandbox_node.runtime.supervisor import Supervisor, Timing
from kubesandbox_node.runtime.vmm import QemuVMM
from kubesandbox_node.vm.host import tsc_khz
from kubesandbox_node.volumes.prepare import NamedVolumes
from kubesandbox_protocol import AgentClient
from tests.support.vms import guest_agent_binary

CGROUP_PARENT = f"kubesandbox-bench-{os.getpid()}"


async def until(supervisor: Supervisor, phase: Phase) -> None:
    while supervisor.phase != phase:
        if supervisor.phase in (Phase.CRASHED, Phase.FAILED):
            raise RuntimeError(f"sandbox {supervisor.phase}: {supervisor.record.message}")
        await asyncio.sleep(0.005)


async def run(supervisor: Supervisor, script: str) -> str:
    async with await AgentClient.connect(supervisor.relay_socket) as client:
        result = await client.run("sh", ["-c", script])
    if result.code != 0:
        raise RuntimeError(result.stderr.decode(errors="replace"))
    return result.stdout.decode()


@contextlib.asynccontextmanager
async def bench_runtime(prefix: str) -> AsyncIterator[Runtime]:
    """A runtime with real QEMU and the real preparer over busybox from a loopback registry
    (no network), in a temporary directory removed afterwards."""
    async with _bench_runtime(prefix, None) as (runtime, _):
        yield runtime


@contextlib.asynccontextmanager
async def networked_bench_runtime(
    prefix: str, *, dns: Sequence[str] = (), upstream_cas: Sequence[str] = ()
) -> AsyncIterator[tuple[Runtime, str]]:
    """:func:`bench_runtime` with a network namespace per sandbox (``dns``: the node's
    upstream resolvers; ``upstream_cas``: what the egress proxy trusts besides the node's
    store), and the registry's ``host:port`` to push more images to (plain HTTP)."""
    async with _bench_runtime(prefix, (list(dns), list(upstream_cas))) as pair:
        yield pair


@contextlib.asynccontextmanager
async def _bench_runtime(
    prefix: str, network_options: tuple[list[str], list[str]] | None
) -> AsyncIterator[tuple[Runtime, str]]:
    work = Path(tempfile.mkdtemp(prefix=prefix))
    registry = Registry(work / "registry").start()
    client = RegistryClient(RegistryConfig(plain_http=frozenset({registry.host})))
    network: NetnsNetwork | None = None
    if network_options is not None:
        dns, cas = network_options
        network = NetnsNetwork(work / "net", dns=dns, upstream_cas=cas)
    runtime = None
    try:
        layout = Layout(work / "layout")
        layout.add_image("1.36", build_image([layer_tar(busybox_entries())]))
        registry.push(layout, "1.36", "library/busybox")
        policy = HostPathPolicy.of([])
        preparer = SandboxPreparer(
            images=ImageService(work / "images", client),
            rootfs=SandboxRootfs(work / "rootfs", policy),
            named=NamedVolumes(work / "volumes"),
            policy=policy,
            boot_image=initramfs.build(guest_agent_binary()),
            tsc_khz=tsc_khz(),
            mirrors={"docker.io": registry.host},
            network=network if network is not None else NoNetwork(),
        )
        vmm = QemuVMM(
            cgroups=CgroupManager(parent=CGROUP_PARENT),
            run_as="nobody",
            wrap=network.wrap_argv if network is not None else None,
        )
        runtime = Runtime(work / "state", vmm=vmm, preparer=preparer, emulation=True,
                          timing=Timing(ready_timeout=180))  # fmt: skip
        yield runtime, registry.host
    finally:
        if runtime is not None:
            for uid in list(runtime.sandboxes):
                await runtime.remove(uid)
        await client.close()
        registry.stop()
        CgroupManager(parent=CGROUP_PARENT).remove_parents()
        shutil.rmtree(work, ignore_errors=True)
