"""Real registries on loopback (Debian's docker-registry), one open and one with htpasswd."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kubesandbox_devenv.registry import Pki, Registry, TokenAuth, require_tools
from kubesandbox_node.images.registry import RegistryClient, RegistryConfig
from kubesandbox_node.images.service import ImageService
from kubesandbox_node.rootfs.assemble import SandboxRootfs
from kubesandbox_node.rootfs.hostpaths import HostPathPolicy

TOOLS = ("docker-registry", "skopeo", "mkfs.erofs", "mkfs.ext4", "htpasswd", "unshare")
CREDENTIALS = ("deploy", "pull-s3cret")


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    missing = require_tools(*TOOLS)
    assert not missing, f"missing tools (make deps installs them): {missing}"
    running = Registry(tmp_path_factory.mktemp("registry")).start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    running = Registry(tmp_path_factory.mktemp("auth-registry"), auth=CREDENTIALS).start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def token_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenAuth]:
    service = TokenAuth(tmp_path_factory.mktemp("token"), CREDENTIALS).start()
    yield service
    service.stop()


@pytest.fixture(scope="session")
def secure_registry(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, token_auth: TokenAuth
) -> Iterator[Registry]:
    """HTTPS with a certificate from the test CA, and the registry v2 token flow."""
    running = Registry(
        tmp_path_factory.mktemp("secure-registry"), tls=(pki.cert, pki.key), token=token_auth
    ).start()
    yield running
    running.stop()


@pytest.fixture
async def images(
    tmp_path: Path, registry: Registry, auth_registry: Registry
) -> AsyncIterator[ImageService]:
    config = RegistryConfig(plain_http=frozenset({registry.host, auth_registry.host}))
    async with RegistryClient(config) as client:
        yield ImageService(tmp_path / "cache", client)


@pytest.fixture
def rootfs(tmp_path: Path) -> SandboxRootfs:
    return SandboxRootfs(
        tmp_path / "sandboxes", HostPathPolicy.of([tmp_path / "allowed"]), default_size_mib=128
    )
