"""A watch-backed, read-only cache of one kind of object (what client-go calls an informer).

Why: the gateway serves every exec by looking up a Sandbox and the Lease of its node agent.
Reading both from the apiserver on each call cost two round trips per exec (docs/gateway-bench.md);
served from memory, an exec costs the apiserver nothing.

How, as Kubernetes clients do it:

1. **List** the collection page by page (``limit``), then keep the list's
   ``metadata.resourceVersion``.
2. **Watch** from that version (``watch=1&allowWatchBookmarks=true&timeoutSeconds=N``):
   ``ADDED``/``MODIFIED`` replace an object, ``DELETED`` drops it, ``BOOKMARK`` only moves the
   version. When the server ends the stream (its timeout), watch again from the last version.
3. **410 Gone** (the version was compacted away, as an ``ERROR`` event or as the status of the
   request) or any other failure: mark the cache not :attr:`ready`, wait (backoff from
   ``retry`` to ``max_retry`` seconds) and list again. A re-list replaces the whole store, so
   deletions missed while disconnected are not kept.

Memory is bounded twice: ``trim`` drops what readers never use (``managedFields`` and the
``last-applied-configuration`` annotation always; callers may drop more), and at most
``max_objects`` objects are kept. Past that the cache stops answering (``ready`` is False,
readers fall back to the apiserver) and logs it, instead of growing without bound; it tries
again at the next re-list.

Readers must treat the cache as a hint that may lag by the watch latency: a miss is not proof
of absence unless :attr:`ready`, and an object just written may not be there yet.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import structlog

from kubesandbox_kube.errors import KubeError
from kubesandbox_kube.paths import ResourcePath

JsonDict = dict[str, Any]
Key = tuple[str, str]
"""(namespace, name); the namespace is ``""`` for cluster-scoped objects."""

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
GONE = 410

log = structlog.get_logger(__name__)


class WatchApi(Protocol):
    """What the cache needs of a client: :class:`~kubesandbox_kube.KubeClient` fits."""

    async def request(
        self,
        method: str,
        path: ResourcePath | str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> JsonDict: ...

    def stream(
        self, path: ResourcePath, *, params: Mapping[str, str], read_timeout: float
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """A watch as its lines (one JSON event each) until the server ends it."""
        ...


class Expired(Exception):
    """The resourceVersion we watch from is too old (410 Gone): list again."""


def trim_common(obj: JsonDict) -> JsonDict:
    """The object without ``managedFields`` and kubectl's last-applied copy of itself."""
    metadata = dict(obj.get("metadata") or {})
    metadata.pop("managedFields", None)
    annotations = metadata.get("annotations")
    if isinstance(annotations, dict) and LAST_APPLIED in annotations:
        metadata["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    return {**obj, "metadata": metadata}


def key_of(obj: Mapping[str, Any]) -> Key:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("namespace") or ""), str(metadata.get("name") or "")


class Informer:
    """Keeps :meth:`get` and :meth:`by_uid` answering from memory; run :meth:`run` as a task."""

    def __init__(
        self,
        api: WatchApi,
        path: ResourcePath,
        *,
        trim: Callable[[JsonDict], JsonDict] = trim_common,
        max_objects: int = 50_000,
        page_size: int = 500,
        watch_seconds: int = 300,
        retry: float = 0.5,
        max_retry: float = 30.0,
    ) -> None:
        self.api = api
        self.path = path
        self.trim = trim
        self.max_objects = max_objects
        self.page_size = page_size
        self.watch_seconds = watch_seconds
        self.retry = retry
        self.max_retry = max_retry
        self.resource_version = ""
        self.lists = 0
        """How many times the collection was listed (1 + re-lists)."""
        self._objects: dict[Key, JsonDict] = {}
        self._uids: dict[str, Key] = {}
        self._ready = False
        self._synced = asyncio.Event()
        self._log = log.bind(resource=path.plural, namespace=path.namespace or "*")

    # ---- reading --------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Listed, watching, and within ``max_objects``: a miss means "not there"."""
        return self._ready

    def __len__(self) -> int:
        return len(self._objects)

    def get(self, namespace: str, name: str) -> JsonDict | None:
        return self._objects.get((namespace, name))

    def by_uid(self, uid: str) -> JsonDict | None:
        key = self._uids.get(uid)
        return None if key is None else self._objects.get(key)

    async def wait_synced(self) -> None:
        """Until the first list is in (callers bound it with ``asyncio.timeout``)."""
        await self._synced.wait()

    # ---- keeping it current ---------------------------------------------------------------

    async def run(self) -> None:
        """List, then watch, forever; every failure leads back to a list after a backoff."""
        delay = self.retry
        while True:
            try:
                await self._list()
                delay = self.retry
                while True:
                    await self._watch_once()
            except asyncio.CancelledError:
                raise
            except Expired:
                self._log.info("watch expired; listing again")
                self._ready = False
            except (KubeError, OSError, ValueError, TimeoutError) as error:
                self._ready = False
                self._log.warning("list/watch failed", error=str(error)[:300], retry=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_retry)

    async def _list(self) -> None:
        objects: dict[Key, JsonDict] = {}
        params = {"limit": str(self.page_size)}
        while True:
            try:
                page = await self.api.request("GET", self.path, params=params)
            except KubeError as error:
                if error.status == GONE and "continue" in params:
                    params = {"limit": str(self.page_size)}  # the continue token expired
                    objects.clear()
                    continue
                raise
            for item in page.get("items") or []:
                objects[key_of(item)] = self.trim(dict(item))
            metadata = page.get("metadata") or {}
            token = metadata.get("continue")
            if not token:
                break
            params = {"limit": str(self.page_size), "continue": str(token)}
        self.lists += 1
        self.resource_version = str(metadata.get("resourceVersion") or "")
        self._objects = objects
        self._uids = {}
        for key, obj in objects.items():
            self._index(key, obj)
        self._ready = self._within_bound()
        self._synced.set()
        self._log.info("listed", objects=len(objects), resource_version=self.resource_version)

    async def _watch_once(self) -> None:
        params = {
            "watch": "1",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self.watch_seconds),
        }
        if self.resource_version:
            params["resourceVersion"] = self.resource_version
        try:
            # The server ends the stream after timeoutSeconds; bookmarks keep it from being
            # silent for long, so a silence of twice that means the connection is dead.
            read_timeout = 2.0 * self.watch_seconds + 30
            async with self.api.stream(
                self.path, params=params, read_timeout=read_timeout
            ) as lines:
                async for line in lines:
                    event = json.loads(line)
                    if not isinstance(event, dict):
                        raise ValueError(f"a watch event that is not an object: {line[:200]!r}")
                    self.apply(event)
        except KubeError as error:
            if error.status == GONE:
                raise Expired() from error
            raise

    def apply(self, event: Mapping[str, Any]) -> None:
        """One watch event (public for tests and for readers that saw a newer object)."""
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == GONE:
                raise Expired()
            raise KubeError(int(obj.get("code") or 0), str(obj.get("reason")), str(obj))
        version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        if version:
            self.resource_version = version
        if kind == "BOOKMARK":
            return
        key = key_of(obj)
        old = self._objects.pop(key, None)
        if old is not None:
            self._uids.pop(str(old["metadata"].get("uid") or ""), None)
        if kind in ("ADDED", "MODIFIED"):
            trimmed = self.trim(dict(obj))
            self._objects[key] = trimmed
            self._index(key, trimmed)
        self._ready = self._within_bound()

    def _index(self, key: Key, obj: JsonDict) -> None:
        uid = (obj.get("metadata") or {}).get("uid")
        if uid:
            self._uids[str(uid)] = key

    def _within_bound(self) -> bool:
        if len(self._objects) <= self.max_objects:
            return True
        if self._ready:
            self._log.warning(
                "more objects than the cache may hold; answering from the apiserver",
                objects=len(self._objects),
                max_objects=self.max_objects,
            )
        self._objects.clear()  # not kept at all: the bound is on memory
        self._uids.clear()
        return False
