from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from kubesandbox_api.spec import PullPolicy
from kubesandbox_devenv.registry import (
    BuiltImage,
    build_image,
    digest,
    directory,
    file,
    layer_tar,
    symlink,
    whiteout,
)
from kubesandbox_node.images.auth import Keychain
from kubesandbox_node.images.errors import (
    AuthError,
    DigestMismatchError,
    ImageError,
    ImageNotFoundError,
    LayerError,
    NotCachedError,
)
from kubesandbox_node.images.registry import RegistryClient, RegistryConfig
from kubesandbox_node.images.service import ImageService, ReadyImage
from tests.unit.node.storage.fakeregistry import FakeRegistry, serve

BASE = layer_tar([directory("etc"), file("etc/os-release", "ID=test\n"), file("etc/motd", "m")])
TOP_V1 = layer_tar([file("app/version", "1"), whiteout("etc/motd")])
TOP_V2 = layer_tar([file("app/version", "2"), symlink("app/latest", "version")])


@pytest.fixture
async def registry() -> AsyncIterator[FakeRegistry]:
    async with serve(FakeRegistry()) as running:
        yield running


@pytest.fixture
async def service(tmp_path: Path, registry: FakeRegistry) -> AsyncIterator[ImageService]:
    config = RegistryConfig(plain_http=frozenset({registry.host}))
    async with RegistryClient(config) as client:
        yield ImageService(tmp_path / "images", client)


def ref(registry: FakeRegistry, tag: str = "v") -> str:
    return f"{registry.host}/team/app:{tag}"


async def test_pull_builds_one_erofs_per_layer_and_pins(
    service: ImageService, registry: FakeRegistry
) -> None:
    image = build_image([BASE, TOP_V1])
    registry.add("team/app", "v", image)
    progress: list[tuple[int, int]] = []
    ready = await service.ensure(
        "uid-1", ref(registry), progress=lambda d, t: progress.append((d, t))
    )
    assert [layer.diff_id for layer in ready.layers] == image.diff_ids
    assert all(layer.image.read_bytes()[1024:1028] == b"\xe2\xe1\xf5\xe0" for layer in ready.layers)
    assert ready.record.manifest_digest == image.digest
    assert progress[-1] == (sum(map(len, image.layers)), sum(map(len, image.layers)))
    assert service.pins.pinned("uid-1") == ready.record
    assert list((service.root / "blobs" / "sha256").iterdir()) == []


async def test_moved_tag_does_not_change_a_pinned_sandbox(
    service: ImageService, registry: FakeRegistry
) -> None:
    v1, v2 = build_image([BASE, TOP_V1]), build_image([BASE, TOP_V2])
    registry.add("team/app", "v", v1)
    await service.ensure("uid-1", ref(registry))
    registry.add("team/app", "v", v2)
    again = await service.ensure("uid-1", ref(registry), pull_policy=PullPolicy.ALWAYS)
    assert again.record.manifest_digest == v1.digest
    fresh = await service.ensure("uid-2", ref(registry), pull_policy=PullPolicy.ALWAYS)
    assert fresh.record.manifest_digest == v2.digest


async def test_pinned_digest_from_status_is_used_on_another_node(
    service: ImageService, registry: FakeRegistry
) -> None:
    v1, v2 = build_image([BASE, TOP_V1]), build_image([BASE, TOP_V2])
    registry.add("team/app", "v", v1)
    registry.manifests[v2.digest] = ("application/vnd.oci.image.manifest.v1+json", v2.manifest)
    registry.blobs.update(v2.blobs())
    ready = await service.ensure("uid-9", ref(registry), pinned_digest=v2.digest)
    assert ready.record.manifest_digest == v2.digest


async def test_if_missing_uses_the_cache_without_asking_the_registry(
    service: ImageService, registry: FakeRegistry
) -> None:
    registry.add("team/app", "v", build_image([BASE]))
    await service.ensure("uid-1", ref(registry))
    before = sum(registry.requests.values())
    second = await service.ensure("uid-2", ref(registry))
    assert sum(registry.requests.values()) == before
    assert not second.pulled


async def test_never_fails_clearly_when_not_cached(
    service: ImageService, registry: FakeRegistry
) -> None:
    registry.add("team/app", "v", build_image([BASE]))
    with pytest.raises(NotCachedError, match=r"spec\.image\.oci: .*pullPolicy is Never"):
        await service.ensure("uid-1", ref(registry), pull_policy=PullPolicy.NEVER)
    await service.ensure("uid-1", ref(registry))
    ready = await service.ensure("uid-2", ref(registry), pull_policy=PullPolicy.NEVER)
    assert len(ready.layers) == 1


async def test_concurrent_sandboxes_fetch_each_layer_once(
    service: ImageService, registry: FakeRegistry
) -> None:
    image = build_image([BASE, TOP_V1])
    registry.add("team/app", "v", image)
    seen: dict[int, list[tuple[int, int]]] = {i: [] for i in range(8)}

    def progress(i: int) -> Callable[[int, int], None]:
        return lambda done, total: seen[i].append((done, total))

    results = await asyncio.gather(
        *(
            service.ensure(
                f"uid-{i}", ref(registry), pull_policy=PullPolicy.ALWAYS, progress=progress(i)
            )
            for i in range(8)
        )
    )
    total = sum(map(len, image.layers))
    assert all(reports[-1] == (total, total) for reports in seen.values())
    assert all(max(done for done, _ in reports) <= total for reports in seen.values())
    assert {r.record.manifest_digest for r in results} == {image.digest}
    for layer in image.layers:
        assert registry.requests[f"blob {digest(layer)}"] == 1
    assert service.layers.builds == 2


async def test_multi_arch_index_resolves_linux_amd64(
    service: ImageService, registry: FakeRegistry
) -> None:
    amd64, arm64 = build_image([BASE]), build_image([TOP_V1], architecture="arm64")
    for image in (amd64, arm64):
        registry.manifests[image.digest] = (
            "application/vnd.oci.image.manifest.v1+json",
            image.manifest,
        )
        registry.blobs.update(image.blobs())
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": arm64.digest,
                    "size": len(arm64.manifest),
                    "platform": {"os": "linux", "architecture": "arm64"},
                },
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": amd64.digest,
                    "size": len(amd64.manifest),
                    "platform": {"os": "linux", "architecture": "amd64"},
                },
            ],
        }
    ).encode()
    registry.add_index("team/app", "multi", index)
    ready = await service.ensure("uid-1", ref(registry, "multi"))
    assert ready.record.manifest_digest == amd64.digest


async def test_index_without_amd64_names_what_it_has(
    service: ImageService, registry: FakeRegistry
) -> None:
    arm64 = build_image([BASE], architecture="arm64")
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "digest": arm64.digest,
                    "size": 1,
                    "platform": {"os": "linux", "architecture": "arm64"},
                }
            ],
        }
    ).encode()
    registry.add_index("team/app", "arm", index)
    with pytest.raises(ImageError, match=r"no linux/amd64 .*linux/arm64"):
        await service.ensure("uid-1", ref(registry, "arm"))


async def test_corrupt_blob_is_refused_and_not_cached(
    service: ImageService, registry: FakeRegistry
) -> None:
    image = build_image([BASE])
    registry.add("team/app", "v", image)
    registry.corrupt.add(digest(image.layers[0]))
    with pytest.raises(DigestMismatchError):
        await service.ensure("uid-1", ref(registry))
    assert list(service.layers.cached()) == []
    assert list((service.root / "blobs" / "tmp").iterdir()) == []


async def test_wrong_diff_id_is_refused(service: ImageService, registry: FakeRegistry) -> None:
    image = build_image([BASE])
    lying = build_image([TOP_V1])
    config = json.loads(image.config)
    config["rootfs"]["diff_ids"] = lying.diff_ids
    image = _rebuild_with_config(image, json.dumps(config).encode())
    registry.add("team/app", "v", image)
    with pytest.raises(LayerError, match="the config says"):
        await service.ensure("uid-1", ref(registry))


def _rebuild_with_config(image: BuiltImage, config: bytes) -> BuiltImage:
    manifest = json.loads(image.manifest)
    manifest["config"]["digest"], manifest["config"]["size"] = digest(config), len(config)
    return BuiltImage(json.dumps(manifest).encode(), config, image.layers, image.diff_ids)


async def test_not_found_names_the_reference(service: ImageService, registry: FakeRegistry) -> None:
    with pytest.raises(ImageNotFoundError, match="team/app:nope: not found"):
        await service.ensure("uid-1", ref(registry, "nope"))


async def test_gc_keeps_pinned_layers_and_collects_within_budget(
    service: ImageService, registry: FakeRegistry
) -> None:
    registry.add("team/app", "a", build_image([BASE]))
    registry.add("team/app", "b", build_image([TOP_V2]))
    kept = await service.ensure("uid-a", ref(registry, "a"))
    await service.ensure("uid-b", ref(registry, "b"))
    assert service.collect(0) == []
    service.release("uid-b")
    removed = service.collect(0)
    assert removed == [digest(TOP_V2)]
    assert [layer.diff_id for layer in service.layers.cached()] == [kept.layers[0].diff_id]
    service.release("uid-a")
    assert service.collect(10**9) == []


async def test_plain_http_only_for_configured_registries(
    tmp_path: Path, registry: FakeRegistry
) -> None:
    registry.add("team/app", "v", build_image([BASE]))
    async with RegistryClient(RegistryConfig()) as client:
        service = ImageService(tmp_path / "images", client)
        with pytest.raises(ImageError, match=registry.host):
            await service.ensure("uid-1", ref(registry))
    assert sum(registry.requests.values()) == 0


async def test_token_flow_with_dockerconfigjson(tmp_path: Path) -> None:
    async with serve(FakeRegistry(users={"deploy": "s3cret"})) as registry:
        registry.add("team/app", "v", build_image([BASE]))
        config = RegistryConfig(plain_http=frozenset({registry.host}))
        async with RegistryClient(config) as client:
            service = ImageService(tmp_path / "images", client)
            with pytest.raises(AuthError, match="refused"):
                await service.ensure(
                    "uid-0", ref(registry), keychain=_keychain(registry.host, "no")
                )
            keychain = _keychain(registry.host, "s3cret")
            await service.ensure("uid-1", ref(registry), keychain=keychain)
        assert registry.requests["token"] == 2


async def test_basic_auth_without_credentials_says_so(tmp_path: Path) -> None:
    async with serve(FakeRegistry(users={"u": "p"}, basic_only=True)) as registry:
        registry.add("team/app", "v", build_image([BASE]))
        config = RegistryConfig(plain_http=frozenset({registry.host}))
        async with RegistryClient(config) as client:
            service = ImageService(tmp_path / "images", client)
            with pytest.raises(AuthError, match="no pull secret"):
                await service.ensure("uid-1", ref(registry))
            await service.ensure(
                "uid-1", ref(registry), keychain=_keychain(registry.host, "p", "u")
            )


def _keychain(host: str, password: str, user: str = "deploy") -> Keychain:
    secret = json.dumps({"auths": {f"http://{host}": {"username": user, "password": password}}})
    return Keychain.from_dockerconfigjsons([("spec.image.pullSecrets[0]", secret.encode())])


async def test_failed_first_pull_leaves_no_pin(
    service: ImageService, registry: FakeRegistry
) -> None:
    broken, fixed = build_image([BASE]), build_image([TOP_V2])
    registry.add("team/app", "v", broken)
    registry.corrupt.add(digest(broken.layers[0]))
    with pytest.raises(DigestMismatchError):
        await service.ensure("uid-1", ref(registry))
    assert service.pins.pinned("uid-1") is None
    registry.add("team/app", "v", fixed)
    ready = await service.ensure("uid-1", ref(registry), pull_policy=PullPolicy.ALWAYS)
    assert ready.record.manifest_digest == fixed.digest


async def test_images_sharing_a_base_fetch_it_once(
    service: ImageService, registry: FakeRegistry
) -> None:
    registry.add("team/app", "one", build_image([BASE, TOP_V1]))
    registry.add("team/app", "two", build_image([BASE, TOP_V2]))
    await asyncio.gather(
        service.ensure("uid-1", ref(registry, "one")), service.ensure("uid-2", ref(registry, "two"))
    )
    assert registry.requests[f"blob {digest(build_image([BASE]).layers[0])}"] == 1
    assert service.layers.builds == 3


async def test_expired_token_is_renewed_and_tokens_are_reused(tmp_path: Path) -> None:
    async with serve(FakeRegistry(users={"deploy": "s3cret"})) as registry:
        registry.add("team/app", "a", build_image([BASE, TOP_V1]))
        registry.add("team/app", "b", build_image([TOP_V2]))
        config = RegistryConfig(plain_http=frozenset({registry.host}))
        async with RegistryClient(config) as client:
            service = ImageService(tmp_path / "images", client)
            keychain = _keychain(registry.host, "s3cret")
            await service.ensure("uid-1", ref(registry, "a"), keychain=keychain)
            assert registry.requests["token"] == 1
            registry.expire_tokens()
            await service.ensure("uid-2", ref(registry, "b"), keychain=keychain)
            assert registry.requests["token"] == 2


async def test_shared_download_that_failed_auth_is_retried_with_own_credentials(
    tmp_path: Path,
) -> None:
    fake = FakeRegistry(users={"u": "p"}, basic_only=True, public_manifests=True)
    async with serve(fake) as registry:
        registry.add("team/app", "v", build_image([BASE]))
        config = RegistryConfig(plain_http=frozenset({registry.host}))
        async with RegistryClient(config) as client:
            service = ImageService(tmp_path / "images", client)
            anonymous, authorized = await asyncio.gather(
                service.ensure("uid-1", ref(registry)),
                service.ensure("uid-2", ref(registry), keychain=_keychain(registry.host, "p", "u")),
                return_exceptions=True,
            )
    # whichever started the shared download, the sandbox with credentials gets its image
    assert not isinstance(authorized, BaseException)
    assert len(authorized.layers) == 1
    assert isinstance(anonymous, AuthError | ReadyImage)


async def test_docker_schema2_list_and_manifest(
    service: ImageService, registry: FakeRegistry
) -> None:
    image = build_image([BASE])
    manifest = json.loads(image.manifest)
    manifest["mediaType"] = "application/vnd.docker.distribution.manifest.v2+json"
    manifest["layers"][0]["mediaType"] = "application/vnd.docker.image.rootfs.diff.tar.gzip"
    body = json.dumps(manifest).encode()
    registry.manifests[digest(body)] = (manifest["mediaType"], body)
    registry.blobs.update(image.blobs())
    listing = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
            "manifests": [
                {
                    "mediaType": manifest["mediaType"],
                    "digest": digest(body),
                    "size": len(body),
                    "platform": {"os": "linux", "architecture": "amd64"},
                }
            ],
        }
    ).encode()
    registry.manifests[digest(listing)] = (
        "application/vnd.docker.distribution.manifest.list.v2+json",
        listing,
    )
    registry.tags["team/app:docker"] = digest(listing)
    ready = await service.ensure("uid-1", ref(registry, "docker"))
    assert ready.record.manifest_digest == digest(body)
    assert ready.record.layers[0].media_type.startswith("application/vnd.docker")


async def test_schema1_manifests_are_refused_clearly(
    service: ImageService, registry: FakeRegistry
) -> None:
    body = json.dumps({"schemaVersion": 1, "fsLayers": []}).encode()
    registry.manifests[digest(body)] = (
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        body,
    )
    registry.tags["team/app:old"] = digest(body)
    with pytest.raises(ImageError, match="unsupported manifest type"):
        await service.ensure("uid-1", ref(registry, "old"))
