"""The image service: a reference and a pull policy in, pinned EROFS layers out.

``ImageService.ensure(sandbox_uid, reference, ...)`` is the one call the node agent makes
before it builds a sandbox's rootfs:

1. A sandbox that was resolved before (a pin on this node, or ``pinned_digest`` from its
   ``status.image.digest``) uses exactly that manifest — a moved tag changes nothing.
2. Otherwise the pull policy decides: ``Always`` asks the registry; ``IfMissing`` uses what
   this node resolved the reference to before, when all of its layers are cached, and asks
   the registry otherwise; ``Never`` uses only what is here and fails clearly when it is not.
3. Missing layers are downloaded (one download per blob however many sandboxes ask: see
   ``blobs``), verified, converted to EROFS (``layers``), and the compressed blob is dropped.
   Progress is reported in bytes done/total over the layers that needed fetching.

``collect(budget)`` garbage-collects unpinned layers, least recently used first, until the
cache fits the budget.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import structlog

from kubesandbox_api.spec import PullPolicy
from kubesandbox_node.images.auth import Credentials, Keychain
from kubesandbox_node.images.blobs import BlobStore
from kubesandbox_node.images.digests import Digest, parse_digest
from kubesandbox_node.images.errors import AuthError, ImageError, NotCachedError
from kubesandbox_node.images.layers import CachedLayer, LayerCache
from kubesandbox_node.images.manifest import (
    INDEX_TYPES,
    ImageConfig,
    Index,
    Manifest,
    parse_json,
    select_platform,
    validate_manifest,
)
from kubesandbox_node.images.pins import ImageRecord, LayerRecord, PinStore, RuntimeDefaults
from kubesandbox_node.images.reference import ImageReference, parse_reference
from kubesandbox_node.images.registry import RegistryClient
from kubesandbox_node.images.unpack import UnpackLimits

log = structlog.get_logger(__name__)

Progress = Callable[[int, int], None]
"""``(bytes_done, bytes_total)`` over the blobs this call downloads."""

MAX_CONFIG_BYTES = 4 * 1024 * 1024
PARALLEL_LAYERS = 3


@dataclass(frozen=True)
class ReadyImage:
    record: ImageRecord
    layers: list[CachedLayer]
    """EROFS images, lowest first (OCI order)."""
    pulled: bool
    """Whether the registry was contacted."""


@dataclass
class FetchStats:
    registry_requests: int = 0
    blob_bytes: int = 0
    layers_built: int = 0


@dataclass
class _Reporter:
    callback: Progress | None
    total: int = 0
    done: int = 0

    def add(self, delta: int) -> None:
        self.done += delta
        if self.callback is not None:
            self.callback(self.done, self.total)


@dataclass
class ImageService:
    root: Path
    registry: RegistryClient
    limits: UnpackLimits = field(default_factory=UnpackLimits)

    def __post_init__(self) -> None:
        self.blobs = BlobStore(self.root / "blobs")
        self.layers = LayerCache(self.root / "layers", limits=self.limits)
        self.pins = PinStore(self.root / "meta")
        self.stats = FetchStats()
        self._layer_tasks: dict[Digest, asyncio.Task[CachedLayer]] = {}
        self._listeners: dict[Digest, list[_Reporter]] = {}
        """Every caller waiting for a layer download hears its progress, not only the first."""
        self._semaphore = asyncio.Semaphore(PARALLEL_LAYERS)

    async def ensure(
        self,
        sandbox_uid: str,
        reference: str,
        *,
        pull_policy: PullPolicy = PullPolicy.IF_MISSING,
        keychain: Keychain | None = None,
        pinned_digest: str | None = None,
        progress: Progress | None = None,
    ) -> ReadyImage:
        keychain = keychain or Keychain()
        ref = parse_reference(reference)
        record = self.pins.pinned(sandbox_uid)
        pulled = new_pin = False
        if record is None:
            if pinned_digest is not None:
                digest = parse_digest(pinned_digest, field="status.image.digest")
                record, pulled = await self._by_digest(
                    ref.with_digest(digest), pull_policy, keychain
                )
            else:
                record, pulled = await self._resolve(ref, pull_policy, keychain)
            # pinned before the layers are fetched, so GC cannot take cached ones meanwhile;
            # a first resolution whose layers fail is forgotten (nothing ran from it)
            self.pins.pin(sandbox_uid, record)
            new_pin = True
        try:
            layers, fetched = await self._ensure_layers(
                ref, record, pull_policy, keychain, progress
            )
        except BaseException:
            if new_pin:
                self.pins.unpin(sandbox_uid)
            raise
        if new_pin:
            log.info(
                "image pinned",
                sandbox=sandbox_uid,
                reference=reference,
                digest=record.manifest_digest,
            )
        return ReadyImage(record=record, layers=layers, pulled=pulled or fetched)

    def share(self, source_uid: str, sandbox_uid: str) -> None:
        """Pins ``source_uid``'s image for ``sandbox_uid`` too (a fork reads its layers)."""
        record = self.pins.pinned(source_uid)
        if record is not None and self.pins.pinned(sandbox_uid) is None:
            self.pins.pin(sandbox_uid, record)

    def release(self, sandbox_uid: str) -> None:
        """The sandbox is gone: its layers may be collected from now on."""
        self.pins.unpin(sandbox_uid)

    async def _resolve(
        self, ref: ImageReference, policy: PullPolicy, keychain: Keychain
    ) -> tuple[ImageRecord, bool]:
        if ref.digest is not None:
            return await self._by_digest(ref, policy, keychain)
        if policy != PullPolicy.ALWAYS:
            known = self.pins.tag(str(ref))
            local = self.pins.image(known) if known else None
            if local is not None and (
                policy == PullPolicy.NEVER or all(self.layers.get(d) for d in local.diff_ids)
            ):
                return local, False
            if policy == PullPolicy.NEVER:
                raise NotCachedError(
                    f"{ref} is not on this node and pullPolicy is Never",
                    field="spec.image.oci",
                )
        record = await self._fetch_record(ref, keychain)
        self.pins.save_tag(str(ref), Digest(record.manifest_digest))
        return record, True

    async def _by_digest(
        self, ref: ImageReference, policy: PullPolicy, keychain: Keychain
    ) -> tuple[ImageRecord, bool]:
        assert ref.digest is not None
        local = self.pins.image(ref.digest)
        if local is not None:
            return local, False
        if policy == PullPolicy.NEVER:
            raise NotCachedError(
                f"{ref} is not on this node and pullPolicy is Never", field="spec.image.oci"
            )
        return await self._fetch_record(ref, keychain), True

    async def _fetch_record(self, ref: ImageReference, keychain: Keychain) -> ImageRecord:
        credentials = keychain.lookup(ref.registry)
        self.stats.registry_requests += 1
        fetched = await self.registry.get_manifest(ref, credentials)
        if fetched.media_type in INDEX_TYPES:
            index = parse_json(fetched.data, Index, what=f"{ref}: index")
            entry = select_platform(index, reference=str(ref))
            self.stats.registry_requests += 1
            fetched = await self.registry.get_manifest(ref, credentials, target=entry.digest)
        manifest = parse_json(fetched.data, Manifest, what=f"{ref}: manifest")
        config_digest = parse_digest(manifest.config.digest, field=f"{ref}: config")
        if manifest.config.size > MAX_CONFIG_BYTES:
            raise ImageError(f"{ref}: config of {manifest.config.size} bytes is too large")
        self.stats.registry_requests += 1
        config_bytes = await self.registry.get_blob_bytes(
            ref, config_digest, credentials, limit=MAX_CONFIG_BYTES
        )
        config = parse_json(config_bytes, ImageConfig, what=f"{ref}: config")
        validate_manifest(manifest, config, reference=str(ref))
        runtime = config.config
        record = ImageRecord(
            reference=str(ref),
            manifest_digest=fetched.digest,
            config_digest=config_digest,
            layers=[
                LayerRecord(
                    digest=layer.digest,
                    size=layer.size,
                    media_type=layer.media_type,
                    diff_id=diff_id,
                )
                for layer, diff_id in zip(manifest.layers, config.rootfs.diff_ids, strict=True)
            ],
            defaults=RuntimeDefaults(
                env=(runtime.env or []) if runtime else [],
                entrypoint=runtime.entrypoint if runtime else None,
                cmd=runtime.cmd if runtime else None,
                working_dir=(runtime.working_dir or None) if runtime else None,
                user=(runtime.user or None) if runtime else None,
            ),
            resolved_at=datetime.now(UTC),
        )
        self.pins.save_image(record)
        return record

    async def _ensure_layers(
        self,
        ref: ImageReference,
        record: ImageRecord,
        policy: PullPolicy,
        keychain: Keychain,
        progress: Progress | None,
    ) -> tuple[list[CachedLayer], bool]:
        missing = [layer for layer in record.layers if not self.layers.get(Digest(layer.diff_id))]
        if missing and policy == PullPolicy.NEVER:
            raise NotCachedError(
                f"{len(missing)} layer(s) of {ref} are not on this node and pullPolicy is Never "
                f"(first: {missing[0].digest})",
                field="spec.image.oci",
            )
        reporter = _Reporter(progress, total=sum(layer.size for layer in missing))
        pinned_ref = ref.with_digest(Digest(record.manifest_digest))
        credentials = keychain.lookup(ref.registry)

        async def one(layer: LayerRecord) -> CachedLayer:
            diff_id = Digest(layer.diff_id)
            cached = self.layers.get(diff_id)
            if cached is not None:
                self.layers.touch(diff_id)
                return cached
            task = self._layer_tasks.get(diff_id)
            started_here = task is None
            if task is None:
                task = asyncio.create_task(self._fetch_layer(pinned_ref, layer, credentials))
                self._layer_tasks[diff_id] = task
                self._listeners[diff_id] = []

                def done(_task: asyncio.Task[CachedLayer]) -> None:
                    self._layer_tasks.pop(diff_id, None)
                    self._listeners.pop(diff_id, None)

                task.add_done_callback(done)
            self._listeners[diff_id].append(reporter)
            try:
                return await asyncio.shield(task)
            except AuthError:
                if started_here:
                    raise
                # that download ran with another sandbox's credentials; ours may do better
                return await self._fetch_layer(pinned_ref, layer, credentials)

        layers = await asyncio.gather(*(one(layer) for layer in record.layers))
        if progress is not None and missing:
            progress(reporter.total, reporter.total)
        return list(layers), bool(missing)

    async def _fetch_layer(
        self,
        ref: ImageReference,
        layer: LayerRecord,
        credentials: Credentials | None,
    ) -> CachedLayer:
        digest = Digest(layer.digest)
        diff_id = Digest(layer.diff_id)

        def progress(delta: int) -> None:
            for listener in self._listeners.get(diff_id, ()):
                listener.add(delta)

        async with self._semaphore:

            async def fetch(temp: Path) -> None:
                await self.registry.fetch_blob(
                    ref, digest, layer.size, credentials, temp, progress=progress
                )
                self.stats.blob_bytes += layer.size

            blob = await self.blobs.ensure(digest, fetch)
            try:
                cached = await self.layers.ensure(Digest(layer.diff_id), blob, compression="auto")
            finally:
                self.blobs.remove(digest)
            self.stats.layers_built += 1
            return cached

    def collect(self, budget_bytes: int) -> list[Digest]:
        """Delete unpinned layers, least recently used first, until the cache fits the budget."""
        pinned = {d for record in self.pins.all_pins().values() for d in record.diff_ids}
        cached = sorted(self.layers.cached(), key=lambda layer: layer.image.stat().st_mtime)
        total = sum(layer.size for layer in cached)
        removed: list[Digest] = []
        for layer in cached:
            if total <= budget_bytes:
                break
            if layer.diff_id in pinned or layer.diff_id in self._layer_tasks:
                continue
            self.layers.remove(layer.diff_id)
            total -= layer.size
            removed.append(layer.diff_id)
        if removed:
            log.info("layers collected", count=len(removed), remaining_bytes=total)
        return removed
