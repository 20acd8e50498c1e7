"""The pod sandbox ("pause") image of the devenv's real node, built here from ``pause.c``.

No container registry is reachable from these machines, so containerd cannot pull upstream's
``registry.k8s.io/pause``. We compile our own ``pause.c`` with ``gcc -static`` and pack it with
``umoci`` (init, new, unpack, copy the binary in, repack, set the entrypoint and user) into an
OCI image layout, archived as a tar that ``ctr images import`` reads. It carries upstream's
name (``PAUSE_IMAGE``) because that is the name containerd's ``sandbox_image`` setting and
anything written for a real cluster expect; our containerd is configured with it explicitly.

The archive is cached by content: ``$KUBESANDBOX_CACHE/pause/<key>/pause.oci.tar``, where the
key hashes the C source, this recipe's version and the tag, so an edit to ``pause.c`` builds a
new image and an unchanged one costs nothing. Entries are written to a temporary directory
and renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from kubesandbox_devenv.binaries import cache_dir

PAUSE_REPOSITORY = "registry.k8s.io/pause"
PAUSE_TAG = "3.10"
PAUSE_IMAGE = f"{PAUSE_REPOSITORY}:{PAUSE_TAG}"
PAUSE_SOURCE = Path(__file__).resolve().with_name("pause.c")
RECIPE = "1"
"""Bump when the way the image is packed changes (the source's own changes are hashed)."""
NOBODY = "65535:65535"
"""Upstream's pause runs as 65535 too: it needs no privilege at all."""


class PauseImageError(RuntimeError):
    """Compiling or packing the pause image failed; the message has the tool's output."""


def cache_key(source: bytes) -> str:
    digest = hashlib.sha256()
    for part in (RECIPE.encode(), PAUSE_IMAGE.encode(), source):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()[:20]


def _run(argv: list[str], cwd: Path | None = None) -> None:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PauseImageError(
            f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
        )


def compile_pause(source: Path, output: Path) -> Path:
    """A static, stripped binary: it runs in an image with nothing else in it."""
    _run(["gcc", "-static", "-Os", "-Wall", "-Werror", "-s", "-o", str(output), str(source)])
    return output


def pack(binary: Path, work: Path) -> Path:
    """An OCI layout with one image (tag ``PAUSE_TAG``) holding ``/pause``; returns its dir."""
    layout = work / "layout"
    image = f"{layout}:{PAUSE_TAG}"
    bundle = work / "bundle"
    _run(["umoci", "init", "--layout", str(layout)])
    _run(["umoci", "new", "--image", image])
    _run(["umoci", "unpack", "--image", image, str(bundle)])
    target = bundle / "rootfs" / "pause"
    shutil.copyfile(binary, target)
    target.chmod(0o755)
    _run(["umoci", "repack", "--no-history", "--image", image, str(bundle)])
    _run(
        [
            "umoci", "config", "--no-history", "--image", image,
            "--os", "linux", "--architecture", "amd64",
            "--config.entrypoint", "/pause", "--config.user", NOBODY,
        ]
    )  # fmt: skip
    _run(["umoci", "gc", "--layout", str(layout)])
    return layout


def archive(layout: Path, output: Path) -> Path:
    """The layout as a tar with ``index.json`` at its root (what ``ctr images import`` reads)."""
    with tarfile.open(output, "w") as tar:
        for path in sorted(layout.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(layout)), recursive=False)
    return output


def pause_image_archive(cache: Path | None = None) -> Path:
    """The cached OCI archive of the pause image, built first when missing (about a second)."""
    source = PAUSE_SOURCE.read_bytes()
    entry = (cache or cache_dir()) / "pause" / cache_key(source)
    result = entry / "pause.oci.tar"
    if result.is_file():
        return result
    entry.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build.", dir=entry.parent) as scratch:
        work = Path(scratch)
        binary = compile_pause(PAUSE_SOURCE, work / "pause")
        layout = pack(binary, work)
        staged = work / "entry"
        staged.mkdir()
        archive(layout, staged / "pause.oci.tar")
        try:
            staged.rename(entry)
        except OSError:
            if not result.is_file():  # not a concurrent builder that won the rename
                raise
    return result
