"""The gateway's watch-backed caches and failed-token limit against a real kube-apiserver:
list+watch keeps up with real writes, an exec reads neither Sandbox nor Lease from the
apiserver, and random tokens turn into 429 before they turn into a TokenReview flood."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from kubesandbox_devenv.controlplane import ControlPlane
from kubesandbox_gateway.app import Gateway, trim_sandbox
from kubesandbox_gateway.routes import make_app
from kubesandbox_kube import KubeClient
from kubesandbox_kube.auth import KubeAuthenticator
from kubesandbox_kube.informer import Informer
from kubesandbox_kube.paths import LEASES, SANDBOXES, ResourcePath
from tests.integration.gateway.test_gateway import (
    QUICK,
    SYSTEM_NAMESPACE,
    Tenants,
    announce,
    bearer,
    create_body,
    node_agent,
    tenants,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.usefixtures("installed_crds")
FIXTURES = (node_agent, tenants)  # test_gateway.py's
AppClient = TestClient[web.Request, web.Application]


class CountingKube:
    """The gateway's apiserver client, counting the reads it makes."""

    def __init__(self, kube: KubeClient) -> None:
        self.kube = kube
        self.reads: list[str] = []

    async def request(
        self,
        method: str,
        path: ResourcePath | str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        if method == "GET":
            self.reads.append(path.url if isinstance(path, ResourcePath) else path)
        return await self.kube.request(
            method, path, body=body, params=params, content_type=content_type
        )

    async def get(self, path: ResourcePath) -> dict[str, Any]:
        return await self.request("GET", path)

    async def create(self, path: ResourcePath, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.kube.create(path, body)

    async def delete(
        self, path: ResourcePath, *, uid: str | None = None, grace_seconds: int | None = None
    ) -> dict[str, Any]:
        return await self.kube.delete(path, uid=uid, grace_seconds=grace_seconds)

    async def merge_patch(self, path: ResourcePath, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.kube.merge_patch(path, body)


async def test_the_informer_follows_real_writes_across_watch_timeouts(
    control_plane: ControlPlane, tenants: Tenants
) -> None:
    async with KubeClient.connect(control_plane.kubeconfig) as kube:
        informer = Informer(kube, SANDBOXES, trim=trim_sandbox, min_watch_seconds=1)
        task = asyncio.create_task(informer.run())
        try:
            async with asyncio.timeout(30):
                await informer.wait_synced()
            name = f"watched-{uuid.uuid4().hex[:6]}"
            manifest = {
                "apiVersion": "kubesandbox.dev/v1alpha1",
                "kind": "Sandbox",
                "metadata": {"name": name, "namespace": tenants.a},
                "spec": {"image": {"oci": "busybox:1.36"}, "scripts": {"big": "x" * 1000}},
            }
            control_plane.kubectl("apply", "-f", "-", input_text=json.dumps(manifest))

            async def seen() -> bool:
                return informer.get(tenants.a, name) is not None

            await wait_until(seen, within=20, what="the new sandbox in the cache")
            cached = informer.get(tenants.a, name)
            assert cached is not None
            assert "scripts" not in cached["spec"]
            assert "managedFields" not in cached["metadata"]
            assert informer.by_uid(cached["metadata"]["uid"]) is cached
            await asyncio.sleep(3)  # the server ends each watch within 2 s: watched again
            control_plane.kubectl(
                "patch", "sandbox", name, "-n", tenants.a, "--subresource=status",
                "--type=merge", "-p", json.dumps({"status": {"phase": "Running"}}),
            )  # fmt: skip

            async def running() -> bool:
                found = informer.get(tenants.a, name) or {}
                return bool((found.get("status") or {}).get("phase") == "Running")

            await wait_until(running, within=20, what="the status change in the cache")
            control_plane.kubectl("delete", "sandbox", name, "-n", tenants.a)

            async def gone() -> bool:
                return informer.get(tenants.a, name) is None

            await wait_until(gone, within=20, what="the deletion in the cache")
            assert informer.ready
            assert informer.lists == 1  # re-watched from its version, never re-listed
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
async def cached_client(
    control_plane: ControlPlane,
) -> AsyncIterator[tuple[AppClient, CountingKube, Gateway]]:
    async with KubeClient.connect(control_plane.kubeconfig) as kube:
        sandboxes = Informer(kube, SANDBOXES, trim=trim_sandbox)
        leases = Informer(kube, LEASES.in_namespace(SYSTEM_NAMESPACE))
        tasks = [asyncio.create_task(i.run()) for i in (sandboxes, leases)]
        counting = CountingKube(kube)
        gateway = Gateway(
            counting, KubeAuthenticator(kube), sandboxes=sandboxes, leases=leases, poll_interval=0.2
        )
        try:
            async with asyncio.timeout(30):
                await sandboxes.wait_synced()
                await leases.wait_synced()
            async with TestClient(TestServer(make_app(gateway))) as client:
                yield client, counting, gateway
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def test_execs_read_nothing_from_the_apiserver(
    cached_client: tuple[AppClient, CountingKube, Gateway],
    tenants: Tenants,
    control_plane: ControlPlane,
    node_agent: str,
) -> None:
    client, counting, gateway = cached_client
    control_plane.kubectl("create", "namespace", SYSTEM_NAMESPACE, check=False)
    node = f"gw-cache-{uuid.uuid4().hex[:6]}"
    announce(control_plane, node, node_agent)
    runner = bearer(tenants.runner)
    created = await client.post(
        "/v1/sandboxes", params=QUICK, json=create_body("cached"), headers=runner
    )
    uid = (await created.json())["id"]
    control_plane.kubectl(
        "patch", "sandbox", "cached", "-n", tenants.a, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"phase": "Running", "nodeName": node}}),
    )  # fmt: skip

    async def watched() -> bool:
        sandbox = gateway.sandboxes.get(tenants.a, "cached") if gateway.sandboxes else None
        lease = (
            gateway.leases.get(SYSTEM_NAMESPACE, f"node-agent-{node}") if gateway.leases else None
        )
        return lease is not None and (sandbox or {}).get("status", {}).get("phase") == "Running"

    await wait_until(watched, within=20, what="the sandbox and the Lease in the caches")
    counting.reads.clear()
    for _ in range(3):
        async with client.ws_connect(f"/v1/sandboxes/{uid}/agent", headers=runner) as ws:
            greeting = await ws.receive(timeout=10)
            assert greeting.data == f"relay for system:serviceaccount:{tenants.a}:runner".encode()
    assert counting.reads == []
    by_name = await client.get("/v1/sandboxes/by-name/cached", headers=runner)
    assert by_name.status == 200
    assert counting.reads == []


async def test_random_tokens_are_limited_before_they_flood_tokenreviews(
    cached_client: tuple[AppClient, CountingKube, Gateway], tenants: Tenants
) -> None:
    client, _, gateway = cached_client
    runner = bearer(tenants.runner)
    assert (await client.get("/v1/sandboxes", headers=runner)).status == 200
    statuses = []
    for n in range(gateway.limiter.burst + 3):
        response = await client.get("/v1/sandboxes", headers=bearer(f"random-{n}-{uuid.uuid4()}"))
        statuses.append(response.status)
        if response.status == 429:
            assert int(response.headers["Retry-After"]) >= 1
            assert (await response.json())["error"]["code"] == "rate_limited"
    assert statuses == [401] * gateway.limiter.burst + [429] * 3
    # A token accepted before still works from the same address.
    assert (await client.get("/v1/sandboxes", headers=runner)).status == 200
