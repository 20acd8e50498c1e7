"""List, then watch: what a consumer learns of one resource type, delivered to a sink.

A :class:`ListWatch` lists a resource type once (in pages, so a large list never sits in
memory whole), then watches from the list's ``resourceVersion`` with bookmarks. When the
apiserver ends a watch (its ``timeoutSeconds``, 5 to 10 minutes here, randomised so that
several watches do not reconnect together) it resumes where it left off; when the apiserver
says the version is too old (410 Gone) it lists again. The list is the truth: after it the
sink is told every key that exists and forgets the others, so an event missed while the
connection was down is healed by that re-list, never by polling.

It keeps no objects: its :class:`Sink` decides what to keep of each one and whom to tell (the
operator keeps ten fields per sandbox Pod and wakes the Sandbox it belongs to, and keeps only
the Secrets some Sandbox names; see ``kubesandbox_operator.clients.cache``). That is the
difference from :mod:`.informer`, a store of whole (trimmed) objects for readers that look
things up. An idle ListWatch costs one watch request per 5 to 10 minutes and no CPU.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from typing import Any, Protocol

import structlog

from kubesandbox_kube.client import KubeClient
from kubesandbox_kube.errors import KubeError
from kubesandbox_kube.paths import ResourcePath

log = structlog.get_logger(__name__)
JsonDict = dict[str, Any]
Key = tuple[str, str]
"""``(namespace, name)``; the namespace is ``""`` for cluster-scoped objects."""

GONE = 410
MIN_WATCH_SECONDS = 300
MAX_BACKOFF_SECONDS = 30.0


class Sink(Protocol):
    """Where a :class:`ListWatch` delivers what it learns, in order, from one task."""

    def upsert(self, body: JsonDict) -> None:
        """An object exists in this version (added, changed, or seen in a list)."""

    def remove(self, body: JsonDict) -> None:
        """The object is gone (its last known state)."""

    def retain(self, keys: set[Key]) -> None:
        """A complete list ended: exactly ``keys`` exist; forget every other object."""


def key_of(body: JsonDict) -> Key:
    metadata = body.get("metadata") or {}
    return str(metadata.get("namespace") or ""), str(metadata.get("name") or "")


class ListWatch:
    def __init__(
        self,
        kube: KubeClient,
        path: ResourcePath,
        sink: Sink,
        *,
        label_selector: str | None = None,
        page_size: int = 500,
        min_watch_seconds: int = MIN_WATCH_SECONDS,
    ) -> None:
        self.kube = kube
        self.path = path
        self.sink = sink
        self.label_selector = label_selector
        self.page_size = page_size
        self.min_watch_seconds = min_watch_seconds
        self.synced = asyncio.Event()
        """Set once the first list was delivered to the sink."""
        self.lists = 0
        self.watches = 0

    @property
    def name(self) -> str:
        return self.path.url

    async def run(self) -> None:
        """Lists, then watches, forever; apiserver failures are retried with a backoff."""
        version: str | None = None
        failures = 0
        while True:
            try:
                if version is None:
                    version = await self._list()
                    self.synced.set()
                version, delivered = await self._watch(version)
                failures = 0 if delivered else failures
            except KubeError as error:
                if error.status == GONE:  # too old to resume from: the list is the truth
                    log.info("watch.relist", resource=self.name)
                    version = None
                    continue
                failures += 1
                delay = min(MAX_BACKOFF_SECONDS, 0.5 * 2**failures)
                log.warning("watch.failed", resource=self.name, error=str(error), retry=delay)
                await asyncio.sleep(delay)

    async def _list(self) -> str:
        keys: set[Key] = set()
        params = self._params({"limit": str(self.page_size)})
        self.lists += 1
        while True:
            try:
                page = await self.kube.request("GET", self.path, params=params)
            except KubeError as error:
                if error.status == GONE and "continue" in params:
                    # The snapshot of a paginated list expired between pages: start over.
                    return await self._list()
                raise
            for item in page.get("items") or []:
                keys.add(key_of(item))
                self.sink.upsert(item)
            metadata = page.get("metadata") or {}
            token = metadata.get("continue")
            if not token:
                self.sink.retain(keys)
                return str(metadata.get("resourceVersion") or "")
            params = {**params, "continue": str(token)}

    async def _watch(self, version: str) -> tuple[str, bool]:
        """Watches from ``version``; returns where to resume and whether anything came."""
        seconds = random.randint(self.min_watch_seconds, 2 * self.min_watch_seconds)  # noqa: S311
        params = self._params(
            {
                "watch": "1",
                "resourceVersion": version,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": str(seconds),
            }
        )
        self.watches += 1
        delivered = False
        async for event in self._events(params, read_timeout=seconds + 30):
            kind = event.get("type")
            body = event.get("object") or {}
            if kind == "ERROR":
                code = int(body.get("code") or 0)
                raise KubeError(code, str(body.get("reason") or "Error"), str(body.get("message")))
            version = str((body.get("metadata") or {}).get("resourceVersion") or version)
            if kind == "DELETED":
                self.sink.remove(body)
            elif kind in ("ADDED", "MODIFIED"):
                self.sink.upsert(body)
            delivered = True
        return version, delivered

    async def _events(self, params: dict[str, str], read_timeout: float) -> AsyncIterator[JsonDict]:
        async with self.kube.stream(self.path, params=params, read_timeout=read_timeout) as lines:
            async for line in lines:
                try:
                    event = json.loads(line)
                except ValueError as error:
                    raise KubeError(0, "BadWatchEvent", f"{self.name}: {error}") from error
                if isinstance(event, dict):
                    yield event

    def _params(self, extra: dict[str, str]) -> dict[str, str]:
        params = dict(extra)
        if self.label_selector:
            params["labelSelector"] = self.label_selector
        return params


async def run_all(watches: list[ListWatch]) -> None:
    """Runs them together until cancelled (each retries its own failures)."""
    async with asyncio.TaskGroup() as group:
        for watch in watches:
            group.create_task(watch.run(), name=f"list-watch {watch.name}")
