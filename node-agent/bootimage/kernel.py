"""The guest kernel: Debian's cloud kernel, fetched once into the cache, never installed.

``apt-get download`` + ``dpkg-deb -x`` unpack the pinned ``linux-image-<abi>-cloud-amd64``
package into ``$KUBESANDBOX_CACHE/kernel/<version>/`` (written to a temporary directory and
renamed, so a half-finished fetch is never used). The pin is the concrete package behind
``linux-image-cloud-amd64``; ``resolve_current()`` tells what the metapackage points at today,
which is how the pin is bumped (``python -m kubesandbox_node.bootimage --resolve-kernel``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import structlog

from kubesandbox_node.bootimage.paths import cache_root

KERNEL_PACKAGE = os.environ.get("KUBESANDBOX_KERNEL_PACKAGE", "linux-image-6.1.0-56-cloud-amd64")
KERNEL_VERSION = os.environ.get("KUBESANDBOX_KERNEL_VERSION", "6.1.192-2")
METAPACKAGE = "linux-image-cloud-amd64"

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
    def modules_dir(self) -> Path:
        return self.root / "lib" / "modules" / self.release


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
    """The unpacked kernel, downloading it on first use."""
    dest = (cache or cache_root()) / "kernel" / version
    kernel = Kernel(release_of(package), dest)
    if kernel.vmlinuz.is_file() and kernel.modules_dir.is_dir():
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
    return kernel
