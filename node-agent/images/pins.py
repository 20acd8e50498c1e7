"""What references resolved to, and which sandbox is pinned to what (JSON files, atomic).

Three small stores under the image root, all rewritten by temp file + ``rename``:

- ``images/<manifest hex>.json``: an ``ImageRecord`` — manifest and config digests, the layers
  (blob digest, size, media type, diff_id) lowest first, the runtime defaults of the config.
  Content-addressed, so never stale.
- ``tags/<sha256 of the reference>.json``: the manifest digest a tag last resolved to on this
  node (``IfMissing`` and ``Never`` use it; ``Always`` refreshes it).
- ``pins/<sandbox uid>.json``: the ``ImageRecord`` a sandbox was first started with. Every later
  start of that sandbox uses exactly it, and garbage collection keeps its layers.
"""

from __future__ import annotations

import hashlib
import os
import re
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from kubesandbox_node.images.digests import Digest, digest_hex
from kubesandbox_node.images.errors import ImageError

SANDBOX_UID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


_R = TypeVar("_R", bound=_Record)


class LayerRecord(_Record):
    digest: str
    """Blob digest as stored in the registry (compressed)."""
    size: int
    media_type: str
    diff_id: str
    """Digest of the uncompressed tar: the layer cache's key."""


class RuntimeDefaults(_Record):
    env: list[str] = []
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    working_dir: str | None = None
    user: str | None = None


class ImageRecord(_Record):
    reference: str
    """The reference as it was written when this was resolved."""
    manifest_digest: str
    config_digest: str
    layers: list[LayerRecord]
    defaults: RuntimeDefaults = RuntimeDefaults()
    resolved_at: datetime

    @property
    def diff_ids(self) -> list[Digest]:
        return [Digest(layer.diff_id) for layer in self.layers]


class _TagRecord(_Record):
    reference: str
    manifest_digest: str


def _write_atomic(path: Path, data: str) -> None:
    temp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with temp.open("w") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


class PinStore:
    def __init__(self, root: Path):
        self._images = root / "images"
        self._tags = root / "tags"
        self._pins = root / "pins"
        for folder in (self._images, self._tags, self._pins):
            folder.mkdir(parents=True, exist_ok=True)

    # images, by manifest digest

    def save_image(self, record: ImageRecord) -> None:
        path = self._images / f"{digest_hex(Digest(record.manifest_digest))}.json"
        _write_atomic(path, record.model_dump_json())

    def image(self, manifest_digest: Digest) -> ImageRecord | None:
        return _load(self._images / f"{digest_hex(manifest_digest)}.json", ImageRecord)

    # tags

    def _tag_path(self, reference: str) -> Path:
        return self._tags / f"{hashlib.sha256(reference.encode()).hexdigest()}.json"

    def save_tag(self, reference: str, manifest_digest: Digest) -> None:
        record = _TagRecord(reference=reference, manifest_digest=manifest_digest)
        _write_atomic(self._tag_path(reference), record.model_dump_json())

    def tag(self, reference: str) -> Digest | None:
        record = _load(self._tag_path(reference), _TagRecord)
        return Digest(record.manifest_digest) if record else None

    # pins, by sandbox uid

    def _pin_path(self, sandbox_uid: str) -> Path:
        if not SANDBOX_UID.match(sandbox_uid):
            raise ImageError(f"not a sandbox uid: {sandbox_uid!r}", field="metadata.uid")
        return self._pins / f"{sandbox_uid}.json"

    def pin(self, sandbox_uid: str, record: ImageRecord) -> None:
        _write_atomic(self._pin_path(sandbox_uid), record.model_dump_json())

    def pinned(self, sandbox_uid: str) -> ImageRecord | None:
        return _load(self._pin_path(sandbox_uid), ImageRecord)

    def unpin(self, sandbox_uid: str) -> None:
        self._pin_path(sandbox_uid).unlink(missing_ok=True)

    def all_pins(self) -> dict[str, ImageRecord]:
        result = {}
        for path in self._pins.glob("*.json"):
            record = _load(path, ImageRecord)
            if record is not None:
                result[path.stem] = record
        return result


def _load(path: Path, model: type[_R]) -> _R | None:
    try:
        return model.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValidationError as exc:
        raise ImageError(f"corrupt record {path}: {exc.errors()[0]['msg']}") from None
