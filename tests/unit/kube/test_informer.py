"""kube/informer.py: the store a ListWatch fills (whole trimmed objects, by key and uid,
bounded), and the Informer's readiness over a fake apiserver."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, cast

from kubesandbox_kube.client import KubeClient
from kubesandbox_kube.informer import Informer, ObjectStore
from kubesandbox_kube.paths import SANDBOXES, ResourcePath

JsonDict = dict[str, Any]


def obj(name: str, rv: int = 1, **extra: Any) -> JsonDict:
    metadata = {"name": name, "namespace": "ns", "uid": f"uid-{name}", "resourceVersion": str(rv)}
    return {"metadata": {**metadata, **extra}, "spec": {"x": name}}


def overflowing(store: ObjectStore) -> bool:
    return store.overflow


def ready(informer: Informer) -> bool:
    return informer.ready


def test_upsert_remove_and_retain_keep_the_uid_index_right() -> None:
    store = ObjectStore()
    store.upsert(obj("a", managedFields=[{}]))
    store.upsert(obj("b"))
    store.upsert({**obj("a", 2), "spec": {"x": "changed"}})
    a = store.get("ns", "a")
    assert a is not None
    assert a["spec"] == {"x": "changed"}
    assert "managedFields" not in a["metadata"]
    assert store.by_uid("uid-a") is a
    store.remove(obj("b"))
    assert store.get("ns", "b") is None
    assert store.by_uid("uid-b") is None
    store.upsert(obj("c"))
    store.retain({("ns", "c")})  # a list said only c exists
    assert store.get("ns", "a") is None
    assert store.by_uid("uid-a") is None
    assert len(store) == 1


def test_a_name_reused_by_a_new_object_drops_the_old_uid() -> None:
    store = ObjectStore()
    store.upsert(obj("a"))
    store.upsert({"metadata": {"name": "a", "namespace": "ns", "uid": "new"}})
    assert store.by_uid("uid-a") is None
    assert store.by_uid("new") is not None


def test_past_the_bound_nothing_is_kept_until_a_list_fits() -> None:
    store = ObjectStore(max_objects=2)
    for name in ("a", "b", "c"):
        store.upsert(obj(name))
    assert overflowing(store)
    assert len(store) == 0
    store.retain({("ns", "a"), ("ns", "b"), ("ns", "c")})  # the list that overflowed
    assert overflowing(store)
    store.retain({("ns", "a")})  # a later list that fits: read again from now on
    assert not overflowing(store)
    store.upsert(obj("a"))
    assert store.get("ns", "a") is not None


class FakeApiserver:
    """Lists ``pages``; each watch plays the next script of events, then hangs."""

    def __init__(self) -> None:
        self.pages: list[JsonDict] = []
        self.scripts: list[list[JsonDict]] = []
        self.idle = asyncio.Event()

    async def request(
        self, method: str, path: ResourcePath | str, *, params: Mapping[str, str] | None = None
    ) -> JsonDict:
        return self.pages.pop(0)

    @asynccontextmanager
    async def stream(
        self, path: ResourcePath, *, params: Mapping[str, str], read_timeout: float
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        if not self.scripts:
            self.idle.set()
            await asyncio.Event().wait()
        script = self.scripts.pop(0)

        async def lines() -> AsyncIterator[bytes]:
            for event in script:
                yield json.dumps(event).encode()

        yield lines()


async def test_an_informer_is_ready_once_listed_and_follows_events() -> None:
    api = FakeApiserver()
    api.pages = [
        {"items": [obj("a")], "metadata": {"resourceVersion": "1"}},
        {"items": [obj("b", 9)], "metadata": {"resourceVersion": "9"}},
    ]
    api.scripts = [
        [{"type": "ADDED", "object": obj("c", 2)}, {"type": "DELETED", "object": obj("a", 3)}],
        [{"type": "ERROR", "object": {"code": 410, "reason": "Expired"}}],
    ]
    informer = Informer(cast(KubeClient, api), SANDBOXES)
    assert not ready(informer)
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(api.idle.wait(), 5)
        assert ready(informer)
        assert informer.lists == 2  # the 410 listed again
        assert informer.get("ns", "a") is None
        assert informer.get("ns", "c") is None  # not in the second list: dropped
        assert informer.by_uid("uid-b") is not None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
