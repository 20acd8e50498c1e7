import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from kubesandbox_kube import KubeClient, KubeError
from kubesandbox_kube.paths import PODS, ResourcePath
from kubesandbox_kube.watch import Key, ListWatch


def pod(name: str, version: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "resourceVersion": version}}


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    def upsert(self, body: dict[str, Any]) -> None:
        self.seen.append(("upsert", body["metadata"]["name"]))

    def remove(self, body: dict[str, Any]) -> None:
        self.seen.append(("remove", body["metadata"]["name"]))

    def retain(self, keys: set[Key]) -> None:
        self.seen.append(("retain", sorted(name for _, name in keys)))


class FakeApi:
    """Pages of a list, then scripted watch streams; records the parameters of each call."""

    def __init__(self, pages: list[dict[str, Any]], streams: list[list[dict[str, Any]] | int]):
        self.pages = pages
        self.streams = streams
        self.lists: list[dict[str, str]] = []
        self.watches: list[dict[str, str]] = []

    async def request(
        self, method: str, path: ResourcePath, *, params: Mapping[str, str], **_: Any
    ) -> dict[str, Any]:
        self.lists.append(dict(params))
        index = 0 if "continue" not in params else int(params["continue"])
        return self.pages[index]

    @contextlib.asynccontextmanager
    async def stream(
        self, path: ResourcePath, *, params: Mapping[str, str], read_timeout: float
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        self.watches.append(dict(params))
        script = self.streams.pop(0) if self.streams else []
        if isinstance(script, int):
            raise KubeError(script, "Expired", "too old")

        async def lines() -> AsyncIterator[bytes]:
            for event in script:
                yield json.dumps(event).encode()
            if not self.streams:
                await asyncio.Event().wait()  # the last watch stays open

        yield lines()


async def run_until(watch: ListWatch, sink: Recorder, count: int) -> None:
    task = asyncio.create_task(watch.run())
    try:
        for _ in range(200):
            if len(sink.seen) >= count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"only {sink.seen}")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_paged_list_then_the_watch_from_its_version() -> None:
    api = FakeApi(
        pages=[
            {"items": [pod("a", "3")], "metadata": {"continue": "1"}},
            {"items": [pod("b", "4")], "metadata": {"resourceVersion": "10"}},
        ],
        streams=[
            [
                {"type": "ADDED", "object": pod("c", "11")},
                {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "12"}}},
                {"type": "DELETED", "object": pod("a", "13")},
            ],
            [{"type": "MODIFIED", "object": pod("b", "14")}],
        ],
    )
    sink = Recorder()
    client: KubeClient = api  # type: ignore[assignment]
    watch = ListWatch(client, PODS, sink, label_selector="app=x", page_size=1)
    await run_until(watch, sink, 6)
    assert sink.seen == [
        ("upsert", "a"),
        ("upsert", "b"),
        ("retain", ["a", "b"]),
        ("upsert", "c"),
        ("remove", "a"),
        ("upsert", "b"),
    ]
    assert api.lists[0] == {"limit": "1", "labelSelector": "app=x"}
    assert api.watches[0]["resourceVersion"] == "10"
    assert api.watches[1]["resourceVersion"] == "13"  # resumed, not listed again
    assert watch.synced.is_set()
    assert (watch.lists, watch.watches) == (1, 2)


@pytest.mark.parametrize("gone", ["status", "event"])
async def test_gone_lists_again_and_the_list_says_what_is_left(gone: str) -> None:
    expired = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}
    api = FakeApi(
        pages=[{"items": [pod("a", "3")], "metadata": {"resourceVersion": "10"}}],
        streams=[410 if gone == "status" else [expired]],
    )
    sink = Recorder()
    client: KubeClient = api  # type: ignore[assignment]
    watch = ListWatch(client, PODS, sink)
    await run_until(watch, sink, 4)
    assert sink.seen[:4] == [("upsert", "a"), ("retain", ["a"]), ("upsert", "a"), ("retain", ["a"])]
    assert watch.lists == 2
