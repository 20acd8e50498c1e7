"""A loopback registry serving ``library/busybox:1.36`` (so ``busybox:1.36`` resolves through
the ``docker.io`` mirror), the real guest agent, and a real ``SandboxPreparer`` around them."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubesandbox_devenv.registry import Layout, Registry, build_image, busybox_entries, layer_tar
from kubesandbox_node.bootimage import initramfs
from kubesandbox_node.bootimage.initramfs import BootImage
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


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A state directory short enough for unix socket paths (108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix=f"ksb-{os.getpid() % 10000}-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
