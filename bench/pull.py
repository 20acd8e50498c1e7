"""Benchmark: cold pull + EROFS conversion vs a plain ``skopeo copy``; a second sandbox.

Builds a three-layer image from directories of this machine (busybox + zoneinfo, Python's
standard library, Perl's), pushes it to a ``docker-registry`` on loopback, then measures in one
run:

1. cold: ``ImageService.ensure`` into an empty cache — fetch, verify, unpack, ``mkfs.erofs``;
2. the same image copied by ``skopeo copy docker://... oci:DIR`` (fetch and verify only), and
   that plus GNU ``tar -x`` of its layers (the unpack cost any conversion pays);
3. a second sandbox of the same image: bytes fetched from the registry (must be 0) and the
   time until its rootfs (pinned layers + a fresh ext4 writable layer with a patch and a
   script) is ready.

Run: ``.venv/bin/python bench/pull.py`` (root; needs docker-registry, skopeo, erofs-utils).
Prints one JSON object; docs/storage.md records a run.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from kubesandbox_api.spec import ImageSource, Patch
from kubesandbox_devenv.registry import (
    Layout,
    Registry,
    build_image,
    busybox_entries,
    layer_tar,
)
from kubesandbox_node.images.registry import RegistryClient, RegistryConfig
from kubesandbox_node.images.service import ImageService
from kubesandbox_node.rootfs.assemble import SandboxRootfs
from kubesandbox_node.rootfs.hostpaths import HostPathPolicy

SOURCES = [Path("/usr/share/zoneinfo"), Path("/usr/lib/python3.11"), Path("/usr/share/perl")]


def tar_of(directory: Path, prefix: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        archive.add(directory, arcname=prefix, recursive=True)
    return buffer.getvalue()


def build_layers() -> list[bytes]:
    base = layer_tar(busybox_entries())
    zoneinfo = tar_of(SOURCES[0], "usr/share/zoneinfo")
    merged = io.BytesIO()
    with tarfile.open(fileobj=merged, mode="w", format=tarfile.PAX_FORMAT) as out:
        for data in (base, zoneinfo):
            with tarfile.open(fileobj=io.BytesIO(data)) as part:
                for member in part.getmembers():
                    out.addfile(member, part.extractfile(member) if member.isreg() else None)
    return [
        merged.getvalue(),
        tar_of(SOURCES[1], "usr/lib/python3.11"),
        tar_of(SOURCES[2], "usr/share/perl"),
    ]


async def measure(work: Path, registry: Registry, ref: str) -> dict[str, object]:
    config = RegistryConfig(plain_http=frozenset({registry.host}))
    async with RegistryClient(config) as client:
        images = ImageService(work / "cache", client)
        rootfs = SandboxRootfs(work / "sandboxes", HostPathPolicy.of([]), default_size_mib=1024)
        source = ImageSource.model_validate({"oci": ref})
        patches = [Patch.model_validate({"text": {"path": "/etc/bench", "content": "x"}})]

        start = time.perf_counter()
        first = await images.ensure("bench-1", ref)
        cold_pull = time.perf_counter() - start
        await rootfs.prepare("bench-1", source, layers=first.layers, patches=patches)
        cold_ready = time.perf_counter() - start
        cold_bytes = images.stats.blob_bytes

        skopeo_dir = work / "skopeo"
        skopeo_copy = _skopeo_copy(ref, skopeo_dir)
        tar_extract = _tar_extract_layers(skopeo_dir, work / "tar-x")

        start = time.perf_counter()
        second = await images.ensure("bench-2", ref)
        await rootfs.prepare(
            "bench-2", source, layers=second.layers, patches=patches, scripts={"s": "echo"}
        )
        warm_ready = time.perf_counter() - start
        return {
            "layers": len(first.layers),
            "compressed_bytes": cold_bytes,
            "erofs_bytes": sum(layer.size for layer in first.layers),
            "cold_pull_convert_s": round(cold_pull, 3),
            "cold_ready_rootfs_s": round(cold_ready, 3),
            "skopeo_copy_s": round(skopeo_copy, 3),
            "ratio_cold_vs_skopeo": round(cold_pull / skopeo_copy, 2),
            "skopeo_copy_plus_gnu_tar_x_s": round(skopeo_copy + tar_extract, 3),
            "ratio_cold_vs_skopeo_plus_tar_x": round(cold_pull / (skopeo_copy + tar_extract), 2),
            "second_sandbox_bytes_fetched": images.stats.blob_bytes - cold_bytes,
            "second_sandbox_ready_rootfs_s": round(warm_ready, 3),
        }


def _skopeo_copy(ref: str, dest: Path) -> float:
    start = time.perf_counter()
    command = ["skopeo", "copy", "--quiet", "--src-tls-verify=false"]
    subprocess.run([*command, f"docker://{ref}", f"oci:{dest}:bench"], check=True)
    return time.perf_counter() - start


def _tar_extract_layers(layout: Path, dest: Path) -> float:
    """GNU tar -x of every layer skopeo fetched: the unpack cost any converter pays."""
    index = json.loads((layout / "index.json").read_text())
    blobs = layout / "blobs" / "sha256"
    manifest_digest = index["manifests"][0]["digest"].split(":", 1)[1]
    manifest = json.loads((blobs / manifest_digest).read_text())
    start = time.perf_counter()
    for position, layer in enumerate(manifest["layers"]):
        target = dest / str(position)
        target.mkdir(parents=True)
        blob = blobs / layer["digest"].split(":", 1)[1]
        subprocess.run(["tar", "-xzf", str(blob), "-C", str(target)], check=True)
    return time.perf_counter() - start


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="kubesandbox-bench-"))
    registry = Registry(work / "registry").start()
    try:
        layers = build_layers()
        layout = Layout(work / "layout")
        layout.add_image("bench", build_image(layers))
        ref = registry.push(layout, "bench", "bench/image")
        result = asyncio.run(measure(work, registry, ref))
        result["uncompressed_bytes"] = sum(len(layer) for layer in layers)
        print(json.dumps(result, indent=2))
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
