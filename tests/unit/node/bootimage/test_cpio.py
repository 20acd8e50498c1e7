import shutil
import subprocess

import pytest

from kubesandbox_node.bootimage import cpio, modules
from kubesandbox_node.bootimage.initramfs import sandbox_archive
from kubesandbox_node.vm.bootconfig import BootConfig, DiskRoot


@pytest.mark.skipif(shutil.which("cpio") is None, reason="needs the cpio tool as the oracle")
def test_archive_lists_with_gnu_cpio_including_device_nodes() -> None:
    data = cpio.archive(
        cpio.with_parents(
            [
                cpio.file("a/b/c", b"hello", 0o600),
                cpio.symlink("a/l", "b/c"),
                cpio.char_device("dev/console", 5, 1),
            ]
        )
    )
    listing = subprocess.run(
        ["cpio", "-t", "-v"], input=data, capture_output=True, check=True
    ).stdout.decode()
    assert "a/b/c" in listing
    assert "a/l -> b/c" in listing
    assert "5,   1" in listing or "5, 1" in listing


def test_archives_are_reproducible_and_aligned() -> None:
    entries = [cpio.file("x", b"abc")]
    assert cpio.archive(entries) == cpio.archive(entries)
    assert len(cpio.archive(entries)) % 4 == 0


@pytest.mark.skipif(shutil.which("cpio") is None, reason="needs the cpio tool as the oracle")
def test_sandbox_archive_holds_boot_json() -> None:
    config = BootConfig(root=DiskRoot(device="root"))
    listing = subprocess.run(
        ["cpio", "-t"], input=sandbox_archive(config), capture_output=True, check=True
    ).stdout.decode()
    assert listing.split() == [".kubesandbox", ".kubesandbox/boot.json"]


def test_module_depends_read_from_modinfo() -> None:
    blob = b"\x7fELF...\0license=GPL\0depends=virtio,virtio_ring\0intree=Y\0"
    assert modules.depends_of(blob) == ("virtio", "virtio_ring")
    assert modules.depends_of(b"\0depends=\0") == ()
