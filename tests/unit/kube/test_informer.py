"""kube/informer.py: list, then watch from the list's version; 410 and failures re-list."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import pytest

from kubesandbox_kube.errors import KubeError
from kubesandbox_kube.informer import Informer
from kubesandbox_kube.paths import SANDBOXES, ResourcePath

JsonDict = dict[str, Any]


def obj(name: str, rv: int, uid: str = "", **extra: Any) -> JsonDict:
    metadata = {
        "name": name,
        "namespace": "ns",
        "uid": uid or f"uid-{name}",
        "resourceVersion": str(rv),
    }
    return {"metadata": {**metadata, **extra}}


class FakeWatchApi:
    """Lists from ``pages``; each watch plays the next script of events, then ends (as the
    server's timeout does) or raises what the script says."""

    def __init__(self) -> None:
        self.pages: list[JsonDict | KubeError] = []
        self.scripts: list[list[JsonDict | KubeError]] = []
        self.list_params: list[dict[str, str]] = []
        self.watch_params: list[dict[str, str]] = []
        self.idle = asyncio.Event()

    async def request(
        self,
        method: str,
        path: ResourcePath | str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> JsonDict:
        self.list_params.append(dict(params or {}))
        page = self.pages.pop(0)
        if isinstance(page, KubeError):
            raise page
        return page

    @asynccontextmanager
    async def stream(
        self, path: ResourcePath, *, params: Mapping[str, str], read_timeout: float
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        self.watch_params.append(dict(params))
        if not self.scripts:
            self.idle.set()
            await asyncio.Event().wait()  # a watch with nothing more to say
        script = self.scripts.pop(0)

        async def lines() -> AsyncIterator[bytes]:
            for item in script:
                if isinstance(item, KubeError):
                    raise item
                yield json.dumps(item).encode()

        yield lines()


async def settle(api: FakeWatchApi, informer: Informer) -> asyncio.Task[None]:
    task = asyncio.create_task(informer.run())
    await asyncio.wait_for(api.idle.wait(), 5)
    return task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_list_then_watch_from_its_version() -> None:
    api = FakeWatchApi()
    api.pages = [
        {"items": [obj("a", 5)], "metadata": {"continue": "c1", "resourceVersion": "9"}},
        {"items": [obj("b", 7, managedFields=[{}])], "metadata": {"resourceVersion": "10"}},
    ]
    api.scripts = [
        [
            {"type": "ADDED", "object": obj("c", 11)},
            {"type": "MODIFIED", "object": obj("a", 12, labels={"x": "y"})},
            {"type": "DELETED", "object": obj("b", 13)},
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "20"}}},
        ]
    ]
    informer = Informer(api, SANDBOXES, page_size=1)
    task = await settle(api, informer)
    assert api.list_params == [{"limit": "1"}, {"limit": "1", "continue": "c1"}]
    assert api.watch_params[0]["resourceVersion"] == "10"
    assert api.watch_params[0]["allowWatchBookmarks"] == "true"
    assert api.watch_params[1]["resourceVersion"] == "20"  # re-watched after the stream ended
    assert informer.ready
    assert informer.get("ns", "b") is None
    assert informer.by_uid("uid-b") is None
    assert informer.get("ns", "a")["metadata"]["labels"] == {"x": "y"}  # type: ignore[index]
    assert informer.by_uid("uid-c")["metadata"]["name"] == "c"  # type: ignore[index]
    assert informer.lists == 1
    await stop(task)


async def test_a_410_event_lists_again_and_drops_what_was_deleted_meanwhile() -> None:
    api = FakeWatchApi()
    api.pages = [
        {"items": [obj("a", 1), obj("b", 2)], "metadata": {"resourceVersion": "2"}},
        {"items": [obj("a", 1)], "metadata": {"resourceVersion": "50"}},
    ]
    api.scripts = [[{"type": "ERROR", "object": {"code": 410, "reason": "Expired"}}]]
    informer = Informer(api, SANDBOXES)
    task = await settle(api, informer)
    assert informer.lists == 2
    assert informer.get("ns", "b") is None
    assert api.watch_params[-1]["resourceVersion"] == "50"
    await stop(task)


async def test_a_410_answer_to_the_watch_lists_again() -> None:
    api = FakeWatchApi()
    api.pages = [
        {"items": [], "metadata": {"resourceVersion": "2"}},
        {"items": [obj("new", 60)], "metadata": {"resourceVersion": "60"}},
    ]
    api.scripts = [[KubeError(410, "Expired", "too old resource version")]]
    informer = Informer(api, SANDBOXES)
    task = await settle(api, informer)
    assert informer.lists == 2
    assert informer.get("ns", "new") is not None
    await stop(task)


async def test_a_failure_is_not_ready_until_listed_again_after_a_backoff() -> None:
    api = FakeWatchApi()
    api.pages = [
        {"items": [obj("a", 1)], "metadata": {"resourceVersion": "1"}},
        KubeError(0, "Unreachable", "connection refused"),
        {"items": [obj("a", 1)], "metadata": {"resourceVersion": "3"}},
    ]
    api.scripts = [[KubeError(0, "Unreachable", "reset")]]
    informer = Informer(api, SANDBOXES, retry=0.01)
    seen: list[bool] = []
    task = asyncio.create_task(informer.run())
    while not api.idle.is_set():
        seen.append(informer.ready)
        await asyncio.sleep(0.001)
    assert False in seen[1:]  # between the failure and the re-list
    assert informer.ready
    assert informer.lists == 2
    await stop(task)


async def test_an_expired_continue_token_restarts_the_list() -> None:
    api = FakeWatchApi()
    api.pages = [
        {"items": [obj("a", 1)], "metadata": {"continue": "c1", "resourceVersion": "1"}},
        KubeError(410, "Expired", "continue token expired"),
        {"items": [obj("b", 2)], "metadata": {"resourceVersion": "4"}},
    ]
    informer = Informer(api, SANDBOXES, page_size=1)
    task = await settle(api, informer)
    assert [p.get("continue") for p in api.list_params] == [None, "c1", None]
    assert informer.get("ns", "a") is None
    assert informer.get("ns", "b") is not None
    await stop(task)


async def test_more_objects_than_the_bound_keeps_none_and_is_not_ready() -> None:
    api = FakeWatchApi()
    api.pages = [{"items": [obj("a", 1), obj("b", 2)], "metadata": {"resourceVersion": "2"}}]
    api.scripts = [[{"type": "ADDED", "object": obj("c", 3)}]]
    informer = Informer(api, SANDBOXES, max_objects=2)
    task = await settle(api, informer)
    assert not informer.ready
    assert len(informer) == 0
    await stop(task)
