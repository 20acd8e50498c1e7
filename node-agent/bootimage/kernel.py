"""The guest kernel: Debian's cloud kernel, fetched once into the cache, never installed.

``apt-get download`` + ``dpkg-deb -x`` unpack the pinned ``linux-image-<abi>-cloud-amd64``
package into ``$KUBESANDBOX_CACHE/kernel/<version>/`` (written to a temporary directory and
renamed, so a half-finished fetch is never used). The pin is the concrete package behind
``linux-image-cloud-amd64``; ``resolve_current()`` tells what the metapackage points at today,
which is how the pin is bumped (``python -m kubesandbox_node.bootimage --resolve-kernel``).

``$KUBESANDBOX_KERNEL_DIR`` names a kernel unpacked ahead of time (the node-agent image bakes
one in at ``/usr/lib/kubesandbox/kernel``, see docs/images.md): ``fetch()`` then uses it as it
is, never downloads, and fails if it does not hold the pinned release.

The bzImage is also unpacked once into ``boot/vmlinux-<release>``, an ELF with a PVH entry note
(the kernel is built with ``CONFIG_PVH=y``): QEMU then jumps straight into the uncompressed
kernel, skipping the in-guest decompression that costs about a second under TCG (see
docs/boot-image.md). ``Kernel.boot_image`` is what to hand QEMU: the vmlinux when it exists.
"""

from __future__ import annotations

import gzip
import lzma
import os
import re
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import structlog

from kubesandbox_node.bootimage.paths import cache_root

KERNEL_PACKAGE = os.environ.get("KUBESANDBOX_KERNEL_PACKAGE", "linux-image-6.1.0-56-cloud-amd64")
KERNEL_VERSION = os.environ.get("KUBESANDBOX_KERNEL_VERSION", "6.1.192-2")
METAPACKAGE = "linux-image-cloud-amd64"
KERNEL_DIR_ENV = "KUBESANDBOX_KERNEL_DIR"

log = structlog.get_logger(__name__)


class KernelFetchError(RuntimeError):
    pass


@dataclass(frozen=True)
class Kernel:
    """An unpacked kernel package: the bzImage and its module tree."""

    release: str  # uname -r, e.g. 6.1.0-56-cloud-amd64
    root: Path

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def vmlinux(self) -> Path:
        return self.root / "boot" / f"vmlinux-{self.release}"

    @property
    def config(self) -> Path:
        return self.root / "boot" / f"config-{self.release}"

    @property
    def modules_dir(self) -> Path:
        return self.root / "lib" / "modules" / self.release

    @property
    def boot_image(self) -> Path:
        return self.vmlinux if self.vmlinux.is_file() else self.vmlinuz


def release_of(package: str) -> str:
    prefix = "linux-image-"
    if not package.startswith(prefix):
        raise KernelFetchError(f"{package} is not a linux-image package")
    return package[len(prefix) :]


def resolve_current() -> tuple[str, str]:
    """(package, version) that ``linux-image-cloud-amd64`` depends on in the apt lists now."""
    deps = subprocess.run(
        ["apt-cache", "depends", METAPACKAGE], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"Depends:\s*(linux-image-[0-9][^\s]*-cloud-amd64)", deps)
    if not match:
        raise KernelFetchError(f"{METAPACKAGE} has no linux-image dependency in the apt lists")
    package = match.group(1)
    policy = subprocess.run(
        ["apt-cache", "policy", package], capture_output=True, text=True, check=True
    ).stdout
    cand = re.search(r"Candidate:\s*(\S+)", policy)
    if not cand or cand.group(1) == "(none)":
        raise KernelFetchError(f"no candidate version of {package}")
    return package, cand.group(1)


def fetch(
    package: str = KERNEL_PACKAGE, version: str = KERNEL_VERSION, cache: Path | None = None
) -> Kernel:
    """The unpacked kernel, downloading it on first use (or the baked one, see the module doc)."""
    baked = os.environ.get(KERNEL_DIR_ENV)
    if baked:
        return baked_kernel(Path(baked), package)
    dest = (cache or cache_root()) / "kernel" / version
    kernel = Kernel(release_of(package), dest)
    if kernel.vmlinuz.is_file() and kernel.modules_dir.is_dir():
        ensure_vmlinux(kernel)
        return kernel
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-") as tmp:
        log.info("kernel.download", package=package, version=version)
        result = subprocess.run(
            ["apt-get", "download", "-q", f"{package}={version}"],
            cwd=tmp,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise KernelFetchError(
                f"apt-get download {package}={version} failed: {result.stderr.strip()}; "
                f"if the pin is gone from the archive, bump it (see --resolve-kernel)"
            )
        debs = list(Path(tmp).glob("*.deb"))
        if len(debs) != 1:
            raise KernelFetchError(f"expected one .deb from apt-get download, got {debs}")
        unpacked = Path(tmp) / "root"
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], check=True)
        if not Kernel(kernel.release, unpacked).vmlinuz.is_file():
            raise KernelFetchError(f"{debs[0].name} holds no boot/vmlinuz-{kernel.release}")
        if dest.exists():  # a concurrent fetch won
            shutil.rmtree(unpacked)
        else:
            unpacked.rename(dest)
    ensure_vmlinux(kernel)
    return kernel


def baked_kernel(root: Path, package: str = KERNEL_PACKAGE) -> Kernel:
    """A kernel package unpacked ahead of time at ``root``; read only, never downloaded."""
    kernel = Kernel(release_of(package), root)
    if not (kernel.vmlinuz.is_file() and kernel.modules_dir.is_dir()):
        raise KernelFetchError(
            f"{KERNEL_DIR_ENV}={root} holds no boot/vmlinuz-{kernel.release} "
            f"and lib/modules/{kernel.release} (an unpacked {package})"
        )
    return kernel


def ensure_vmlinux(kernel: Kernel) -> Path | None:
    """Unpacks the bzImage's payload to ``vmlinux-<release>`` when it can boot via PVH."""
    if kernel.vmlinux.is_file():
        return kernel.vmlinux
    try:
        config = kernel.config.read_text()
    except OSError:
        return None
    if "\nCONFIG_PVH=y\n" not in config:
        return None
    try:
        elf = decompress_payload(kernel.vmlinuz.read_bytes())
    except (KernelFetchError, OSError, ValueError, lzma.LZMAError) as exc:
        log.warning("kernel.vmlinux_unavailable", error=str(exc))
        return None
    fd, tmp = tempfile.mkstemp(dir=kernel.vmlinux.parent, prefix=".vmlinux-")
    with os.fdopen(fd, "wb") as out:
        out.write(elf)
    os.chmod(tmp, 0o644)
    os.replace(tmp, kernel.vmlinux)
    return kernel.vmlinux


def decompress_payload(bzimage: bytes) -> bytes:
    """The uncompressed kernel ELF inside a bzImage (x86 boot protocol 2.08+)."""
    if bzimage[0x202:0x206] != b"HdrS" or struct.unpack_from("<H", bzimage, 0x206)[0] < 0x208:
        raise KernelFetchError("not a bzImage with boot protocol 2.08 or later")
    protected_mode = ((bzimage[0x1F1] or 4) + 1) * 512
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    payload = bzimage[protected_mode + offset : protected_mode + offset + length]
    # kbuild appends the uncompressed size (u32 LE) to every format but gzip
    body, (size,) = payload[:-4], struct.unpack("<I", payload[-4:])
    if payload.startswith(b"\x1f\x8b"):
        elf, size = gzip.decompress(payload), None
    elif payload.startswith(b"\xfd7zXZ\x00"):
        elf = lzma.decompress(body)
    elif payload.startswith(b"\x02\x21\x4c\x18"):
        elf = _tool(["lz4", "-dc"], body)
    elif payload.startswith(b"\x28\xb5\x2f\xfd"):
        elf = _tool(["zstd", "-dcq"], body)
    else:
        raise KernelFetchError(f"unknown bzImage payload compression {payload[:4].hex()}")
    if not elf.startswith(b"\x7fELF") or (size is not None and len(elf) != size):
        raise KernelFetchError("decompressed bzImage payload is not the expected ELF")
    return elf


def _tool(argv: list[str], data: bytes) -> bytes:
    if shutil.which(argv[0]) is None:
        raise KernelFetchError(
            f"{argv[0]} is needed to unpack this kernel (Debian package {argv[0]})"
        )
    result = subprocess.run(argv, input=data, capture_output=True)
    if result.returncode != 0:
        raise KernelFetchError(f"{argv[0]} failed: {result.stderr.decode(errors='replace')[:200]}")
    return result.stdout
