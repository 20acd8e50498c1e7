import gzip
import lzma
import struct

import pytest

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
