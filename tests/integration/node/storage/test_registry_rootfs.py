from __future__ import annotations

import os
from pathlib import Path

import pytest

from kubesandbox_api.spec import ImageSource, Patch, PullPolicy
from kubesandbox_devenv.registry import (
    Layout,
    Registry,
    TarEntry,
    build_image,
    busybox_entries,
    chardev,
    directory,
    file,
    hardlink,
    layer_tar,
    opaque,
    symlink,
    whiteout,
)
from kubesandbox_node.images.auth import Keychain
from kubesandbox_node.images.errors import AuthError, ImageError, LayerError
from kubesandbox_node.images.service import ImageService
from kubesandbox_node.rootfs.assemble import OverlayRoot, SandboxRootfs
from tests.integration.node.storage.guestview import guest_view

pytestmark = [pytest.mark.registry, pytest.mark.slow]

OCI = ImageSource.model_validate({"oci": "placeholder"})


def app_layers() -> list[bytes]:
    base = layer_tar(
        [
            *busybox_entries(),
            directory("etc/app"),
            file("etc/app/old.conf", "old"),
            file("etc/motd", "welcome\n"),
            directory("var"),
            directory("var/lib"),
            directory("var/lib/stale"),
            file("var/lib/stale/a", "a"),
            file("etc/doomed", "bye"),
            directory("opt"),
            directory("opt/vendor"),
            file("opt/vendor/a", "a"),
            file("opt/vendor/b", "b"),
        ]
    )
    middle = layer_tar(
        [
            directory("usr"),
            directory("usr/bin"),
            file("usr/bin/suid", "#!/bin/sh\n", 0o4755),
            file("usr/bin/sgid-odd", "x", 0o2711, uid=1000, gid=1000),
            file("usr/bin/noperm", "secret", 0o000),
            hardlink("usr/bin/suid-again", "usr/bin/suid"),
            symlink("usr/bin/rel", "../../etc/motd"),
            symlink("usr/bin/abs", "/etc/motd"),
            directory("home", 0o755),
            directory("home/user", 0o700, uid=1000, gid=1000),
            file("home/user/.profile", "export A=1\n", 0o600, uid=1000, gid=1000),
            whiteout("etc/doomed"),
        ]
    )
    top = layer_tar(
        [
            directory("var/lib/stale"),
            opaque("var/lib/stale"),
            file("var/lib/stale/fresh", "fresh"),
            directory("etc/app"),
            opaque("etc/app"),
            file("etc/app/new.conf", "new"),
        ]
    )
    return [base, middle, top]


def push(
    registry: Registry,
    tmp_path: Path,
    repository: str,
    tag: str,
    layers: list[bytes],
    **options: str,
) -> str:
    layout = Layout(tmp_path / f"layout-{repository.replace('/', '-')}-{tag}")
    layout.add_image(tag, build_image(layers, **options))  # type: ignore[arg-type]
    return registry.push(layout, tag, repository)


async def prepare(
    images: ImageService,
    rootfs: SandboxRootfs,
    uid: str,
    ref: str,
    patches: list[dict[str, object]] | None = None,
    scripts: dict[str, str] | None = None,
    **ensure: object,
) -> OverlayRoot:
    ready = await images.ensure(uid, ref, **ensure)  # type: ignore[arg-type]
    root = await rootfs.prepare(
        uid,
        OCI,
        layers=ready.layers,
        patches=[Patch.model_validate(p) for p in patches or []],
        scripts=scripts,
    )
    assert isinstance(root, OverlayRoot)
    return root


async def test_multi_layer_image_assembles_as_the_guest_sees_it(
    images: ImageService, rootfs: SandboxRootfs, registry: Registry, tmp_path: Path
) -> None:
    ref = push(registry, tmp_path, "team/app", "v1", app_layers())
    root = await prepare(
        images,
        rootfs,
        "uid-1",
        ref,
        patches=[
            {"text": {"path": "/etc/greeting.txt", "content": "Hello\n"}},
            {"text": {"path": "/etc/motd", "content": "Custom\n", "replace": True}},
            {"mkdir": {"path": "/app", "mode": 0o755}},
            {"text": {"path": "/app/config.json", "content": '{"debug": true}', "mode": 0o644}},
            {"append": {"path": "/etc/hosts", "content": "127.0.0.1 myapp.local\n"}},
            {"remove": {"path": "/etc/passwd"}},
            {"symlink": {"path": "/app/link", "target": "/etc/greeting.txt"}},
            {"remove": {"path": "/opt/vendor"}},
            {"text": {"path": "/opt/vendor/only", "content": "only"}},
            {"text": {"path": "/bin/tool", "content": "#!/bin/sh\necho tool\n", "mode": 0o755}},
        ],
        scripts={"setup": "#!/bin/sh\necho set up\n"},
    )
    view = guest_view(
        root.layers,
        root.upper,
        commands=[
            "cat /etc/hosts",
            "PATH=/bin:/.msb/scripts setup",
            "ls /var/lib/stale",
            "cat /app/link",
        ],
    )
    files = view.files
    assert "/etc/doomed" not in files
    assert "/etc/passwd" not in files
    assert sorted(p for p in files if p.startswith("/var/lib/stale/")) == ["/var/lib/stale/fresh"]
    assert sorted(p for p in files if p.startswith("/etc/app/")) == ["/etc/app/new.conf"]
    assert files["/usr/bin/suid"].mode == 0o4755
    assert files["/usr/bin/suid"].mtime == 1_700_000_000
    assert (files["/usr/bin/sgid-odd"].mode, files["/usr/bin/sgid-odd"].uid) == (0o2711, 1000)
    assert files["/usr/bin/noperm"].mode == 0
    assert files["/usr/bin/suid-again"].ino == files["/usr/bin/suid"].ino
    assert files["/usr/bin/rel"].target == "../../etc/motd"
    assert files["/usr/bin/abs"].target == "/etc/motd"
    assert (files["/home/user"].mode, files["/home/user"].uid) == (0o700, 1000)
    assert files["/tmp"].mode == 0o1777
    assert view.text("/etc/motd") == "Custom\n"
    assert view.text("/etc/greeting.txt") == "Hello\n"
    assert view.text("/app/config.json") == '{"debug": true}'
    assert files["/.msb/scripts/setup"].mode == 0o755
    assert view.outputs[0] == "127.0.0.1 localhost\n127.0.0.1 myapp.local\n"
    assert view.outputs[1] == "set up\n"
    assert view.outputs[2] == "fresh\n"
    assert view.outputs[3] == "Hello\n"
    assert sorted(p for p in files if p.startswith("/opt/vendor/")) == ["/opt/vendor/only"]
    assert files["/bin/tool"].mode == 0o755


async def test_pinned_sandbox_ignores_a_moved_tag(
    images: ImageService, rootfs: SandboxRootfs, registry: Registry, tmp_path: Path
) -> None:
    base = layer_tar(busybox_entries())
    ref = push(registry, tmp_path, "team/moving", "latest", [base, layer_tar([file("v", "1")])])
    first = await prepare(images, rootfs, "uid-a", ref)
    push(registry, tmp_path / "v2", "team/moving", "latest", [base, layer_tar([file("v", "2")])])
    again = await images.ensure("uid-a", ref, pull_policy=PullPolicy.ALWAYS)
    assert [layer.image for layer in again.layers] == first.layers
    assert guest_view(first.layers, first.upper).text("/v") == "1"
    other = await prepare(images, rootfs, "uid-b", ref, pull_policy=PullPolicy.ALWAYS)
    assert guest_view(other.layers, other.upper).text("/v") == "2"


async def test_second_sandbox_from_cache_fetches_nothing(
    images: ImageService, rootfs: SandboxRootfs, registry: Registry, tmp_path: Path
) -> None:
    ref = push(registry, tmp_path, "team/cached", "v1", [layer_tar(busybox_entries())])
    await prepare(images, rootfs, "uid-1", ref)
    fetched = images.stats.blob_bytes
    requests = images.stats.registry_requests
    second = await prepare(images, rootfs, "uid-2", ref)
    assert images.stats.blob_bytes == fetched
    assert images.stats.registry_requests == requests
    assert second.upper != (await rootfs.prepare("uid-1", OCI)).upper  # type: ignore[union-attr]


async def test_multi_arch_index_pulls_linux_amd64(
    images: ImageService, registry: Registry, tmp_path: Path
) -> None:
    layout = Layout(tmp_path / "multi")
    amd64 = build_image([layer_tar([file("arch", "amd64")])])
    arm64 = build_image([layer_tar([file("arch", "arm64")])], architecture="arm64")
    layout.add_index("multi", [("linux", "arm64", arm64), ("linux", "amd64", amd64)])
    ref = registry.push(layout, "multi", "team/multi")
    ready = await images.ensure("uid-1", ref)
    assert ready.record.manifest_digest == amd64.digest


async def test_htpasswd_registry_needs_the_pull_secret(
    images: ImageService, auth_registry: Registry, tmp_path: Path
) -> None:
    ref = push(auth_registry, tmp_path, "private/app", "v1", [layer_tar(busybox_entries())])
    with pytest.raises(AuthError, match=auth_registry.host):
        await images.ensure("uid-1", ref)
    keychain = Keychain.from_dockerconfigjsons(
        [("spec.image.pullSecrets[0]", auth_registry.dockerconfigjson())]
    )
    ready = await images.ensure("uid-1", ref, keychain=keychain)
    assert len(ready.layers) == 1


HOSTILE: dict[str, list[TarEntry]] = {
    "absolute": [file("/tmp/pwned-absolute", "x")],
    "dotdot": [file("../../../../tmp/pwned-dotdot", "x")],
    "symlink-dir": [symlink("escape", "/tmp"), file("escape/pwned-symlink", "x")],
    "hardlink-out": [hardlink("link", "../../../../etc/passwd")],
    "device": [chardev("dev/kmem", 1, 2)],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_malicious_layers_are_refused_and_write_nothing_outside(
    images: ImageService, registry: Registry, tmp_path: Path, case: str
) -> None:
    ref = push(registry, tmp_path, f"evil/{case}", "v1", [layer_tar(HOSTILE[case])])
    cache = images.root.resolve()
    before = _tree_outside(tmp_path, cache)
    with pytest.raises(LayerError):
        await images.ensure("uid-1", ref)
    assert _tree_outside(tmp_path, cache) == before
    assert not _pwned_in_tmp()
    assert list(images.layers.cached()) == []
    assert list((cache / "layers" / "scratch").iterdir()) == []


def _pwned_in_tmp() -> list[str]:
    return [name for name in os.listdir("/tmp") if name.startswith("pwned-")]


def _tree_outside(root: Path, cache: Path) -> set[str]:
    found: set[str] = set()
    for directory_name, dirnames, filenames in os.walk(root):
        here = Path(directory_name)
        if here == cache or cache in here.parents:
            continue
        found.update(str(here / name) for name in dirnames + filenames)
    return found


async def test_unknown_image_is_a_clear_error(images: ImageService, registry: Registry) -> None:
    with pytest.raises(ImageError, match="not found"):
        await images.ensure("uid-1", f"{registry.host}/nobody/here:v1")
