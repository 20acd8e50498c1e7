"""A read-only, watch-backed copy of one kind of object, for readers that look things up.

Why: the gateway serves every exec by looking up a Sandbox (by uid) and the Lease of its node
agent. Reading both from the apiserver on each call cost two round trips per exec
(docs/gateway-bench.md); served from memory, an exec costs the apiserver nothing.

How: :class:`kubesandbox_kube.watch.ListWatch` does the listing and watching (list in pages,
watch from the list's ``resourceVersion`` with bookmarks, resume after the server's timeout,
list again on 410 Gone, back off on failures); :class:`ObjectStore` is its sink and keeps
whole objects, indexed by ``(namespace, name)`` and by uid. A completed list replaces what it
held, so deletions missed while disconnected are dropped then. :class:`Informer` ties the two
together for readers.

Memory is bounded twice: ``trim`` drops what readers never use (``managedFields`` and the
``last-applied-configuration`` annotation always; callers may drop more, the gateway drops
scripts and patches), and at most ``max_objects`` objects are kept. Past that the store drops
everything and says it is not :attr:`~Informer.ready`, so readers ask the apiserver instead of
the cache growing without bound; the next complete list tries again.

Readers treat the copy as a hint that lags by the watch latency: an object just written may
not be there yet (fall back to a read), and while the apiserver cannot be reached the copy
keeps what it last knew (as would any reader that cannot reach it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from kubesandbox_kube.client import KubeClient
from kubesandbox_kube.paths import ResourcePath
from kubesandbox_kube.watch import MIN_WATCH_SECONDS, Key, ListWatch, key_of

JsonDict = dict[str, Any]
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
MAX_OBJECTS = 50_000

log = structlog.get_logger(__name__)


def trim_common(obj: JsonDict) -> JsonDict:
    """The object without ``managedFields`` and kubectl's last-applied copy of itself."""
    metadata = dict(obj.get("metadata") or {})
    metadata.pop("managedFields", None)
    annotations = metadata.get("annotations")
    if isinstance(annotations, dict) and LAST_APPLIED in annotations:
        metadata["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    return {**obj, "metadata": metadata}


class ObjectStore:
    """A :class:`~kubesandbox_kube.watch.Sink` that keeps (trimmed) objects, by key and uid."""

    def __init__(
        self,
        *,
        trim: Callable[[JsonDict], JsonDict] = trim_common,
        max_objects: int = MAX_OBJECTS,
        resource: str = "",
    ) -> None:
        self.trim = trim
        self.max_objects = max_objects
        self.overflow = False
        """More objects than ``max_objects``: none are kept until a list fits again."""
        self._objects: dict[Key, JsonDict] = {}
        self._uids: dict[str, Key] = {}
        self._log = log.bind(resource=resource)

    def __len__(self) -> int:
        return len(self._objects)

    def get(self, namespace: str, name: str) -> JsonDict | None:
        return self._objects.get((namespace, name))

    def by_uid(self, uid: str) -> JsonDict | None:
        key = self._uids.get(uid)
        return None if key is None else self._objects.get(key)

    # ---- the Sink -------------------------------------------------------------------------

    def upsert(self, body: JsonDict) -> None:
        key = key_of(body)
        self._drop(key)
        if self.overflow:
            return
        obj = self.trim(dict(body))
        self._objects[key] = obj
        uid = (obj.get("metadata") or {}).get("uid")
        if uid:
            self._uids[str(uid)] = key
        if len(self._objects) > self.max_objects:
            self._log.warning(
                "more objects than the cache may hold; readers ask the apiserver",
                max_objects=self.max_objects,
            )
            self.overflow = True
            self._objects.clear()
            self._uids.clear()

    def remove(self, body: JsonDict) -> None:
        self._drop(key_of(body))

    def retain(self, keys: set[Key]) -> None:
        if self.overflow and len(keys) <= self.max_objects:
            self.overflow = False  # this list was too big to keep; the next one is read again
            return
        for key in [k for k in self._objects if k not in keys]:
            self._drop(key)

    def _drop(self, key: Key) -> None:
        old = self._objects.pop(key, None)
        if old is not None:
            self._uids.pop(str((old.get("metadata") or {}).get("uid") or ""), None)


class Informer:
    """An :class:`ObjectStore` kept current by a :class:`ListWatch`; run :meth:`run` as a task."""

    def __init__(
        self,
        kube: KubeClient,
        path: ResourcePath,
        *,
        trim: Callable[[JsonDict], JsonDict] = trim_common,
        max_objects: int = MAX_OBJECTS,
        min_watch_seconds: int = MIN_WATCH_SECONDS,
    ) -> None:
        self.path = path
        self.store = ObjectStore(trim=trim, max_objects=max_objects, resource=path.plural)
        self.watch = ListWatch(kube, path, self.store, min_watch_seconds=min_watch_seconds)

    @property
    def ready(self) -> bool:
        """Listed at least once and within ``max_objects``: a miss means "not seen"."""
        return self.watch.synced.is_set() and not self.store.overflow

    @property
    def lists(self) -> int:
        return self.watch.lists

    def get(self, namespace: str, name: str) -> JsonDict | None:
        return self.store.get(namespace, name)

    def by_uid(self, uid: str) -> JsonDict | None:
        return self.store.by_uid(uid)

    async def wait_synced(self) -> None:
        """Until the first list is in (callers bound it with ``asyncio.timeout``)."""
        await self.watch.synced.wait()

    async def run(self) -> None:
        await self.watch.run()
