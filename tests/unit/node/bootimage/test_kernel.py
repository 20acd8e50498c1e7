import gzip
import lzma
import struct
from pathlib import Path

import pytest

from kubesandbox_node.bootimage import kernel
from kubesandbox_node.bootimage.kernel import KernelFetchError, decompress_payload

ELF = b"\x7fELF" + bytes(range(256)) * 40


def _bzimage(payload: bytes, setup_sects: int = 1) -> bytes:
    image = bytearray(0x400 + 0x40)
    image[0x1F1] = setup_sects
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, 0x20F)
    struct.pack_into("<II", image, 0x248, 0x40, len(payload))
    return bytes(image) + payload


def test_gzip_payload_is_unpacked() -> None:
    assert decompress_payload(_bzimage(gzip.compress(ELF))) == ELF


def test_xz_payload_with_appended_size_is_unpacked_and_checked() -> None:
    packed = lzma.compress(ELF, format=lzma.FORMAT_XZ)
    assert decompress_payload(_bzimage(packed + struct.pack("<I", len(ELF)))) == ELF
    with pytest.raises(KernelFetchError, match="not the expected ELF"):
        decompress_payload(_bzimage(packed + struct.pack("<I", len(ELF) + 1)))


def test_not_a_bzimage_is_refused() -> None:
    with pytest.raises(KernelFetchError, match="bzImage"):
        decompress_payload(b"\0" * 4096)


def _unpacked_kernel(root: Path, release: str) -> None:
    (root / "boot").mkdir(parents=True)
    (root / "boot" / f"vmlinuz-{release}").write_bytes(b"bzImage")
    (root / "lib" / "modules" / release).mkdir(parents=True)


def test_a_baked_kernel_dir_is_used_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = kernel.release_of(kernel.KERNEL_PACKAGE)
    _unpacked_kernel(tmp_path / "baked", release)
    monkeypatch.setenv(kernel.KERNEL_DIR_ENV, str(tmp_path / "baked"))
    found = kernel.fetch(cache=tmp_path / "cache")
    assert found.root == tmp_path / "baked"
    assert found.boot_image == tmp_path / "baked" / "boot" / f"vmlinuz-{release}"
    assert not (tmp_path / "cache").exists(), "a baked kernel must never be downloaded"


def test_a_baked_kernel_dir_without_the_pinned_release_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _unpacked_kernel(tmp_path / "baked", "5.10.0-1-cloud-amd64")
    monkeypatch.setenv(kernel.KERNEL_DIR_ENV, str(tmp_path / "baked"))
    with pytest.raises(KernelFetchError, match=f"{kernel.KERNEL_DIR_ENV}=.*baked"):
        kernel.fetch(cache=tmp_path / "cache")
