"""The base initramfs (agent at ``/init`` + modules + order file) and per-sandbox archives.

The base archive depends only on the agent binary, the kernel and the module list, so it is
built once and cached under ``$KUBESANDBOX_CACHE/bootimage/<sha256>/`` (content hash of those
inputs plus a format version). Every boot passes ``base + per-sandbox`` as one initrd: the
kernel unpacks concatenated archives in order, and the small second one carries
``/.kubesandbox/boot.json`` (see docs/boot-config.md).

Uncompressed is the default: under TCG the guest inflates gzip slowly, while QEMU copies the
larger raw image into guest memory in milliseconds (numbers in docs/boot-image.md).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kubesandbox_node.bootimage import cpio, kernel, modules
from kubesandbox_node.bootimage.paths import cache_root
from kubesandbox_node.vm.bootconfig import BootConfig

FORMAT = 1
ORDER_FILE = "lib/modules/kubesandbox.order"
BOOT_JSON = ".kubesandbox/boot.json"


@dataclass(frozen=True)
class BootImage:
    key: str
    kernel: Path
    initramfs: Path
    release: str
    modules: tuple[str, ...]
    missing_modules: tuple[str, ...]


def _skeleton() -> list[cpio.Entry]:
    return [
        cpio.directory("dev"),
        cpio.char_device("dev/console", 5, 1),
        cpio.char_device("dev/null", 1, 3, 0o666),
        cpio.directory("proc"),
        cpio.directory("sys"),
        cpio.directory("run"),
        cpio.directory("mnt"),
        cpio.directory("tmp", 0o1777),
        cpio.directory(".kubesandbox", 0o700),
    ]


def build(
    init: Path | bytes,
    *,
    the_kernel: kernel.Kernel | None = None,
    extra: Sequence[cpio.Entry] = (),
    compress: bool = False,
    cache: Path | None = None,
) -> BootImage:
    """The cached base image for ``init`` (the guest agent, or any static init)."""
    k = the_kernel or kernel.fetch(cache=cache)
    mods, missing = modules.resolve(k.modules_dir)
    init_bytes = init if isinstance(init, bytes) else init.read_bytes()
    digest = hashlib.sha256()
    digest.update(f"kubesandbox-bootimage-{FORMAT}\0{k.release}\0{k.root.name}\0".encode())
    digest.update(hashlib.sha256(init_bytes).digest())
    digest.update(json.dumps([m.relpath for m in mods]).encode())
    for e in extra:
        digest.update(f"{e.path}\0{e.mode}\0{e.rdev}\0".encode())
        digest.update(hashlib.sha256(e.data).digest())
    digest.update(b"gzip" if compress else b"raw")
    key = digest.hexdigest()[:32]
    dest = (cache or cache_root()) / "bootimage" / key
    name = "initramfs.cpio.gz" if compress else "initramfs.cpio"
    image = BootImage(
        key=key,
        kernel=k.boot_image,
        initramfs=dest / name,
        release=k.release,
        modules=tuple(m.name for m in mods),
        missing_modules=tuple(missing),
    )
    if image.initramfs.is_file():
        return image

    guest_dir = f"lib/modules/{k.release}"
    entries = [
        *_skeleton(),
        cpio.file("init", init_bytes, 0o755),
        *(
            cpio.file(f"{guest_dir}/{m.relpath}", modules.read_module(k.modules_dir / m.relpath))
            for m in mods
        ),
        cpio.file(ORDER_FILE, "".join(f"/{guest_dir}/{m.relpath}\n" for m in mods).encode()),
        *extra,
    ]
    data = cpio.archive(cpio.with_parents(entries))
    if compress:
        data = gzip.compress(data, compresslevel=6, mtime=0)
    dest.mkdir(parents=True, exist_ok=True)
    manifest = {
        "kernel": str(image.kernel),
        "release": image.release,
        "modules": list(image.modules),
        "missingModules": list(image.missing_modules),
        "initSha256": hashlib.sha256(init_bytes).hexdigest(),
    }
    _atomic_write(dest / "manifest.json", json.dumps(manifest, indent=2).encode())
    _atomic_write(image.initramfs, data)
    return image


def sandbox_archive(config: BootConfig) -> bytes:
    """The per-sandbox archive: just ``/.kubesandbox/boot.json``."""
    return cpio.archive(
        [cpio.directory(".kubesandbox", 0o700), cpio.file(BOOT_JSON, config.to_json(), 0o600)]
    )


def write_initrd(base: BootImage, config: BootConfig, dest: Path) -> Path:
    """Writes ``base + per-sandbox archive`` to ``dest``, the file QEMU gets as ``-initrd``."""
    with base.initramfs.open("rb") as src:
        data = src.read()
    pad = b"\0" * (-len(data) % 4)
    _atomic_write(dest, data + pad + sandbox_archive(config))
    return dest


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
