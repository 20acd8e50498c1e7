from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kubesandbox_devenv.registry import (
    Layout,
    Pki,
    Registry,
    TokenAuth,
    build_image,
    busybox_entries,
    layer_tar,
)
from kubesandbox_node.images.auth import Keychain
from kubesandbox_node.images.errors import AuthError, ImageError
from kubesandbox_node.images.registry import RegistryClient, RegistryConfig
from kubesandbox_node.images.service import ImageService

pytestmark = [pytest.mark.registry, pytest.mark.slow]


@pytest.fixture(scope="module")
def pushed(secure_registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    layout = Layout(tmp_path_factory.mktemp("layout") / "secure")
    layout.add_image("v1", build_image([layer_tar(busybox_entries())]))
    return secure_registry.push(layout, "v1", "private/secure")


@pytest.fixture
async def service(tmp_path: Path, pki: Pki, token_auth: TokenAuth) -> AsyncIterator[ImageService]:
    token_host = f"127.0.0.1:{token_auth.port}"
    config = RegistryConfig(ca_files=(pki.ca,), plain_http=frozenset({token_host}))
    async with RegistryClient(config) as client:
        yield ImageService(tmp_path / "cache", client)


def keychain(registry: Registry, password: str | None = None) -> Keychain:
    secret = registry.dockerconfigjson(password)
    return Keychain.from_dockerconfigjsons([("spec.image.pullSecrets[0]", secret)])


async def test_https_with_configured_ca_and_token_flow(
    service: ImageService, secure_registry: Registry, token_auth: TokenAuth, pushed: str
) -> None:
    before = token_auth.requests
    ready = await service.ensure("uid-1", pushed, keychain=keychain(secure_registry))
    assert len(ready.layers) == 1
    assert token_auth.requests > before


async def test_wrong_password_is_refused_by_the_token_service(
    service: ImageService, secure_registry: Registry, pushed: str
) -> None:
    with pytest.raises(AuthError, match="token service refused"):
        await service.ensure("uid-1", pushed, keychain=keychain(secure_registry, "wrong"))


async def test_unknown_ca_fails_tls(
    tmp_path: Path, secure_registry: Registry, token_auth: TokenAuth, pushed: str
) -> None:
    async with RegistryClient(RegistryConfig()) as client:
        service = ImageService(tmp_path / "cache", client)
        with pytest.raises(ImageError, match=r"TLS|certificate"):
            await service.ensure("uid-1", pushed, keychain=keychain(secure_registry))
