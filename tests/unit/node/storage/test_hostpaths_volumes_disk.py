from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kubesandbox_api.spec import ImageSource, Patch, Volume
from kubesandbox_node.rootfs.assemble import HostDirRoot, SandboxRootfs
from kubesandbox_node.rootfs.disk import DiskRoot
from kubesandbox_node.rootfs.errors import PatchError, RootfsError
from kubesandbox_node.rootfs.hostpaths import HostPathPolicy
from kubesandbox_node.volumes.prepare import NamedVolumes, prepare_volumes


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    root = tmp_path / "allowed"
    (root / "data").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (root / "sneaky").symlink_to(tmp_path / "secret")
    return root


def test_host_paths_outside_the_prefixes_are_refused(allowed: Path, tmp_path: Path) -> None:
    policy = HostPathPolicy.of([allowed])
    assert policy.check(str(allowed / "data"), field="f", kind="dir") == allowed / "data"
    for bad in (tmp_path / "secret", allowed / "sneaky", allowed / "data/../../secret"):
        with pytest.raises(RootfsError, match=r"^spec\.x: .* not under a host path prefix"):
            policy.check(str(bad), field="spec.x", kind="dir")
    with pytest.raises(RootfsError, match="not a directory"):
        policy.check(str(allowed / "missing"), field="f", kind="dir")


def test_volumes_prepare_bind_named_tmpfs(allowed: Path, tmp_path: Path) -> None:
    named = NamedVolumes(tmp_path / "named", size_mib=16)
    volumes = [
        Volume.model_validate(
            {"mountPath": "/src", "bind": {"path": str(allowed / "data"), "readOnly": True}}
        ),
        Volume.model_validate({"mountPath": "/data", "named": {"name": "my-data"}}),
        Volume.model_validate({"mountPath": "/scratch", "tmpfs": {"sizeMiB": 100}}),
    ]
    prepared = prepare_volumes(
        volumes, namespace="team", policy=HostPathPolicy.of([allowed]), named=named
    )
    assert [(v.mount_path, v.kind, v.read_only, v.tag) for v in prepared] == [
        ("/src", "virtiofs", True, "vol0"),
        ("/data", "block", False, "vol1"),
        ("/scratch", "tmpfs", False, None),
    ]
    image = prepared[1].host_path
    assert image == tmp_path / "named/team/my-data.ext4"
    assert "ext4 filesystem" in _tool("file", "-b", str(image))
    assert image.stat().st_size == 16 * 1024 * 1024
    assert image.stat().st_blocks * 512 < image.stat().st_size  # sparse
    with image.open("r+b") as data:  # what a sandbox wrote stays for the next one
        data.seek(8 * 1024 * 1024)
        data.write(b"kept")
    again = prepare_volumes(
        volumes, namespace="team", policy=HostPathPolicy.of([allowed]), named=named
    )
    assert again[1].host_path == image
    with image.open("rb") as data:
        data.seek(8 * 1024 * 1024)
        assert data.read(4) == b"kept"
    assert named.list("team") == ["my-data"]
    named.delete("team", "my-data")
    assert named.list("team") == []


def test_bind_volume_outside_prefix_names_the_field(allowed: Path, tmp_path: Path) -> None:
    volumes = [
        Volume.model_validate({"mountPath": "/x", "bind": {"path": str(tmp_path / "secret")}})
    ]
    with pytest.raises(RootfsError, match=r"spec\.volumes\[0\]\.bind\.path"):
        prepare_volumes(
            volumes,
            namespace="team",
            policy=HostPathPolicy.of([allowed]),
            named=NamedVolumes(tmp_path / "n"),
        )


def _tool(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, check=True).stdout.decode()


def _make_disk(path: Path, fmt: str) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), "64M"], check=True)


@pytest.mark.parametrize("fmt", ["qcow2", "raw", "vmdk"])
async def test_disk_root_gets_a_qcow2_overlay_and_base_stays_unwritten(
    allowed: Path, tmp_path: Path, fmt: str
) -> None:
    base = allowed / f"base.{fmt}"
    _make_disk(base, fmt)
    before = base.read_bytes()
    rootfs = SandboxRootfs(tmp_path / "sandboxes", HostPathPolicy.of([allowed]))
    source = ImageSource.model_validate({"disk": {"path": str(base), "fstype": "ext4"}})
    one = await rootfs.prepare("uid-1", source)
    two = await rootfs.prepare("uid-2", source)
    assert isinstance(one, DiskRoot)
    assert isinstance(two, DiskRoot)
    assert one.overlay != two.overlay
    assert (one.base_format, one.fstype) == (fmt, "ext4")
    info = _tool("qemu-img", "info", "--output=json", str(one.overlay))
    assert '"format": "qcow2"' in info
    assert str(base) in info
    _tool("qemu-io", "-f", "qcow2", "-c", "write -P 0x55 0 1M", str(one.overlay))
    assert base.read_bytes() == before


async def test_disk_root_refuses_patches_scripts_and_wrong_format(
    allowed: Path, tmp_path: Path
) -> None:
    base = allowed / "base.img"
    _make_disk(base, "raw")
    rootfs = SandboxRootfs(tmp_path / "sandboxes", HostPathPolicy.of([allowed]))
    source = ImageSource.model_validate({"disk": {"path": str(base)}})
    patch = Patch.model_validate({"mkdir": {"path": "/x"}})
    with pytest.raises(PatchError, match=r"^spec\.patches: .*not supported with disk-image roots"):
        await rootfs.prepare("uid-1", source, patches=[patch])
    with pytest.raises(PatchError, match=r"^spec\.scripts: "):
        await rootfs.prepare("uid-1", source, scripts={"a": "b"})
    wrong = ImageSource.model_validate({"disk": {"path": str(base), "format": "qcow2"}})
    with pytest.raises(RootfsError, match=r"spec\.image\.disk\.format"):
        await rootfs.prepare("uid-1", wrong)
    outside = ImageSource.model_validate({"disk": {"path": str(tmp_path / "x.img")}})
    with pytest.raises(RootfsError, match=r"spec\.image\.disk\.path"):
        await rootfs.prepare("uid-1", outside)


async def test_bind_root_is_patched_once_in_place(allowed: Path, tmp_path: Path) -> None:
    rootfs = SandboxRootfs(tmp_path / "sandboxes", HostPathPolicy.of([allowed]))
    source = ImageSource.model_validate({"bind": {"path": str(allowed / "data")}})
    patches = [Patch.model_validate({"append": {"path": "/log", "content": "x"}})]
    root = await rootfs.prepare("uid-1", source, patches=patches, scripts={"hi": "echo hi"})
    await rootfs.prepare("uid-1", source, patches=patches, scripts={"hi": "echo hi"})
    assert isinstance(root, HostDirRoot)
    assert (allowed / "data/log").read_text() == "x"
    assert (allowed / "data/.msb/scripts/hi").stat().st_mode & 0o777 == 0o755
    with pytest.raises(RootfsError, match=r"spec\.image\.bind\.path"):
        await rootfs.prepare(
            "uid-2", ImageSource.model_validate({"bind": {"path": str(tmp_path / "secret")}})
        )
