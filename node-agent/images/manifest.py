"""Manifests, indexes and image configs (OCI and Docker schema 2), and platform selection.

Only what the node needs is modelled: layer descriptors in order, the config's ``diff_ids``
(uncompressed digests, our layer cache's key) and the runtime defaults. Unknown fields are
ignored, as the OCI spec asks. Indexes resolve to ``linux/amd64`` (variant ignored), the
platform our VMs run.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kubesandbox_node.images.digests import parse_digest
from kubesandbox_node.images.errors import ImageError

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])

LAYER_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_LAYERS = 256
PLATFORM = ("linux", "amd64")


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class Descriptor(_Lenient):
    media_type: str = Field(alias="mediaType", default="")
    digest: str
    size: int = Field(ge=0)


class Platform(_Lenient):
    os: str = ""
    architecture: str = ""
    variant: str | None = None


class IndexEntry(Descriptor):
    platform: Platform | None = None


class Index(_Lenient):
    media_type: str | None = Field(alias="mediaType", default=None)
    manifests: list[IndexEntry]


class Manifest(_Lenient):
    media_type: str | None = Field(alias="mediaType", default=None)
    config: Descriptor
    layers: list[Descriptor]


class RootFS(_Lenient):
    type: str = "layers"
    diff_ids: list[str]


class RuntimeConfig(_Lenient):
    env: list[str] | None = Field(alias="Env", default=None)
    entrypoint: list[str] | None = Field(alias="Entrypoint", default=None)
    cmd: list[str] | None = Field(alias="Cmd", default=None)
    working_dir: str | None = Field(alias="WorkingDir", default=None)
    user: str | None = Field(alias="User", default=None)


class ImageConfig(_Lenient):
    architecture: str = ""
    os: str = ""
    config: RuntimeConfig | None = None
    rootfs: RootFS


_M = TypeVar("_M", bound=_Lenient)


def parse_json(data: bytes, model: type[_M], *, what: str) -> _M:
    if len(data) > MAX_MANIFEST_BYTES:
        raise ImageError(f"{what} is {len(data)} bytes; the limit is {MAX_MANIFEST_BYTES}")
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()[:3]
        )
        raise ImageError(f"malformed {what}: {problems}") from None


def detect_media_type(header: str | None, data: bytes) -> str:
    """The Content-Type, or the document's own ``mediaType``/shape when the server is vague."""
    if header:
        media = header.split(";", 1)[0].strip()
        if media in INDEX_TYPES or media in MANIFEST_TYPES:
            return media
    try:
        document: Any = json.loads(data)
    except ValueError:
        raise ImageError("manifest is not JSON") from None
    if isinstance(document, dict):
        declared = document.get("mediaType")
        if isinstance(declared, str) and (declared in INDEX_TYPES or declared in MANIFEST_TYPES):
            return declared
        if "manifests" in document:
            return OCI_INDEX
        if "layers" in document:
            return OCI_MANIFEST
    raise ImageError(f"unsupported manifest type {header!r}")


def select_platform(index: Index, *, reference: str) -> Descriptor:
    for entry in index.manifests:
        platform = entry.platform
        if platform and (platform.os, platform.architecture) == PLATFORM:
            parse_digest(entry.digest, field=f"{reference}: index entry")
            return entry
    offered = sorted(
        {f"{e.platform.os}/{e.platform.architecture}" for e in index.manifests if e.platform}
    )
    raise ImageError(f"{reference}: no linux/amd64 image in the index (has: {', '.join(offered)})")


def validate_manifest(manifest: Manifest, config: ImageConfig, *, reference: str) -> None:
    if len(manifest.layers) > MAX_LAYERS:
        raise ImageError(f"{reference}: {len(manifest.layers)} layers; the limit is {MAX_LAYERS}")
    if len(config.rootfs.diff_ids) != len(manifest.layers):
        raise ImageError(
            f"{reference}: config lists {len(config.rootfs.diff_ids)} diff_ids for "
            f"{len(manifest.layers)} layers"
        )
    if (config.os or "linux", config.architecture or "amd64") != PLATFORM:
        raise ImageError(
            f"{reference}: image is {config.os}/{config.architecture}, not linux/amd64"
        )
    for position, layer in enumerate(manifest.layers):
        parse_digest(layer.digest, field=f"{reference}: layers[{position}]")
        if layer.media_type and layer.media_type not in LAYER_TYPES:
            raise ImageError(
                f"{reference}: layers[{position}] has unsupported media type {layer.media_type!r}"
            )
    for position, diff_id in enumerate(config.rootfs.diff_ids):
        parse_digest(diff_id, field=f"{reference}: config.rootfs.diff_ids[{position}]")
