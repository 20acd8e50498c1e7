"""An image whose layers a third party wrote: umoci's repack (whiteouts, hard links, parents
omitted from later layers), pushed with skopeo, assembled, read as the guest sees it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kubesandbox_api.spec import ImageSource
from kubesandbox_devenv.registry import Layout, Registry
from kubesandbox_node.images.service import ImageService
from kubesandbox_node.rootfs.assemble import OverlayRoot, SandboxRootfs
from tests.integration.node.storage.guestview import guest_view

pytestmark = [pytest.mark.registry, pytest.mark.slow]


def umoci(*argv: str) -> None:
    subprocess.run(["umoci", *argv], check=True, capture_output=True)


def umoci_image(work: Path) -> Layout:
    layout = work / "layout"
    umoci("init", "--layout", str(layout))
    umoci("new", "--image", f"{layout}:t")
    umoci("unpack", "--image", f"{layout}:t", str(work / "b1"))
    root = work / "b1" / "rootfs"
    for folder in ("bin", "etc/conf.d", "tmp", "home/user"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    shutil.copy("/bin/busybox", root / "bin/busybox")
    for applet in ("sh", "ls", "cat", "stat"):
        (root / "bin" / applet).symlink_to("busybox")
    (root / "etc/conf.d/a").write_text("a\n")
    (root / "etc/gone").write_text("gone\n")
    os.chmod(root / "tmp", 0o1777)  # noqa: S103 (a /tmp, as images have)
    os.chown(root / "home/user", 1000, 1000)
    os.chmod(root / "home/user", 0o700)
    umoci("repack", "--image", f"{layout}:t", str(work / "b1"))

    umoci("unpack", "--image", f"{layout}:t", str(work / "b2"))
    root = work / "b2" / "rootfs"
    (root / "etc/gone").unlink()
    shutil.rmtree(root / "etc/conf.d")
    (root / "etc/conf.d").mkdir()
    (root / "etc/conf.d/b").write_text("b\n")
    os.link(root / "bin/busybox", root / "bin/hard")
    (root / "tmp/scratch").write_text("s")
    (root / "home/user/notes").write_text("n")
    umoci("repack", "--image", f"{layout}:t", str(work / "b2"))
    return Layout(layout)


async def test_umoci_built_image_boots_with_exactly_its_files(
    images: ImageService, rootfs: SandboxRootfs, registry: Registry, tmp_path: Path
) -> None:
    layout = umoci_image(tmp_path)
    ref = registry.push(layout, "t", "thirdparty/umoci")
    ready = await images.ensure("uid-1", ref)
    assert len(ready.layers) == 2
    root = await rootfs.prepare(
        "uid-1", ImageSource.model_validate({"oci": ref}), layers=ready.layers
    )
    assert isinstance(root, OverlayRoot)
    view = guest_view(root.layers, root.upper, commands=["ls /etc/conf.d", "cat /etc/conf.d/b"])
    files = view.files
    assert "/etc/gone" not in files
    assert sorted(p for p in files if p.startswith("/etc/conf.d/")) == ["/etc/conf.d/b"]
    assert files["/bin/hard"].ino == files["/bin/busybox"].ino
    assert files["/bin/sh"].target == "busybox"
    assert files["/tmp"].mode == 0o1777
    assert (files["/home/user"].mode, files["/home/user"].uid) == (0o700, 1000)
    assert view.text("/home/user/notes") == "n"
    assert view.outputs == ["b\n", "b\n"]
