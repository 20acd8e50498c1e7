import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from kubesandbox_kube import KubeClient
from kubesandbox_kube.paths import ResourcePath
from kubesandbox_operator.clients.cluster import Cluster
from kubesandbox_operator.clients.events import EventPoster
from kubesandbox_operator.clients.nodeagent import NodeAgentAuth, NodeAgents
from kubesandbox_operator.control import Runtime
from kubesandbox_operator.control.controller import FINALIZER, KOPF_DIFFBASE, Controller, compact

UID = "0b7e6d2c-0000-4000-8000-000000000001"


class FakeKube:
    """Lists are empty, watches stay silent; writes are recorded (and answered in kind)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def request(self, method: str, path: ResourcePath | str, **_: Any) -> dict[str, Any]:
        self.calls.append((method, path.url if isinstance(path, ResourcePath) else path))
        return {"items": [], "metadata": {"resourceVersion": "1"}}

    @contextlib.asynccontextmanager
    async def stream(
        self, path: ResourcePath, *, params: Mapping[str, str], read_timeout: float
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        async def silent() -> AsyncIterator[bytes]:
            await asyncio.Event().wait()
            yield b""

        yield silent()

    async def create(self, path: ResourcePath, body: Mapping[str, Any]) -> dict[str, Any]:
        self.calls.append(("POST", path.url))
        created = dict(body)
        created["metadata"] = {**body["metadata"], "uid": "pod-uid"}
        return created

    async def apply(self, path: ResourcePath, body: Mapping[str, Any], **_: Any) -> dict[str, Any]:
        self.calls.append(("APPLY", path.url))
        return dict(body)

    def writes(self, what: str) -> int:
        return sum(1 for method, url in self.calls if method != "GET" and url.endswith(what))


def sandbox(finalized: bool = True, deleting: bool = False) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": "hello",
        "namespace": "team",
        "uid": UID,
        "generation": 1,
        "resourceVersion": "5",
        "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
        "annotations": {KOPF_DIFFBASE: '{"spec": "a copy of the spec"}', "keep": "me"},
    }
    if finalized:
        metadata["finalizers"] = [FINALIZER]
    if deleting:
        metadata["deletionTimestamp"] = "2026-12-04T06:00:00Z"
    return {
        "apiVersion": "kubesandbox.dev/v1alpha1",
        "kind": "Sandbox",
        "metadata": metadata,
        "spec": {"image": {"oci": "busybox:1.36"}},
    }


async def settle(controller: Controller) -> None:
    for _ in range(200):
        await asyncio.sleep(0.01)
        if controller.ready.is_set() and not controller.queue.busy:
            return
    raise AssertionError(f"still busy: {controller.sizes()}")


@contextlib.asynccontextmanager
async def running() -> AsyncIterator[tuple[Controller, FakeKube]]:
    kube = FakeKube()
    client: KubeClient = kube  # type: ignore[assignment]
    no_session: Any = None  # no node agent is asked anything here
    agents = NodeAgents(NodeAgentAuth(token_file=Path("/dev/null")), no_session)
    runtime = Runtime(cluster=Cluster(client, "kubesandbox-system"), agents=agents)
    controller = Controller(runtime, EventPoster(client), workers=4)
    task = asyncio.create_task(controller.run())
    try:
        yield controller, kube
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_sandbox_gets_its_pod_once_and_nothing_runs_while_nothing_changes() -> None:
    async with running() as (controller, kube):
        controller.observe(sandbox())
        await settle(controller)
        assert kube.writes("/pods") == 1
        assert kube.writes("/sandboxes/hello/status") == 1
        controller.observe(sandbox())  # e.g. its own status write coming back
        await settle(controller)
        assert kube.writes("/pods") == 1  # the Pod it created is known before its watch event
        calls = len(kube.calls)
        await asyncio.sleep(0.3)
        assert len(kube.calls) == calls


async def test_no_pass_before_the_finalizer_nor_while_deleting() -> None:
    async with running() as (controller, kube):
        controller.observe(sandbox(finalized=False))
        controller.observe(sandbox(deleting=True) | {"metadata": {"name": "other"}})
        await settle(controller)
        assert kube.writes("/pods") == 0


async def test_a_deleted_sandbox_leaves_nothing_behind() -> None:
    async with running() as (controller, _):
        controller.observe(sandbox())
        await settle(controller)
        controller.forget(("team", "hello"))
        sizes = controller.sizes()
        assert sizes["sandboxes"] == sizes["queued"] == sizes["deadlines"] == 0
        assert sizes["handed_over"] == sizes["references"] == 0


def test_what_is_kept_between_passes_is_small() -> None:
    kept = compact(sandbox())
    assert b"managedFields" not in kept
    assert KOPF_DIFFBASE.encode() not in kept
    assert b'"keep":"me"' in kept
