"""No apiserver read per exec: Sandboxes and Leases from the watch's copy (a fake that is always
current), the apiserver only when the copy cannot answer; and the failed-token rate limit."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer

from kubesandbox_gateway.app import Gateway, trim_sandbox
from kubesandbox_gateway.ratelimit import FailureLimiter
from kubesandbox_gateway.routes import make_app
from tests.unit.gateway import fakes
from tests.unit.gateway.conftest import (
    APP_FIXTURES,
    SA_TOKEN,
    AppClient,
    announce_node_agent,
    bearer,
    running_sandbox,
)

pytestmark = APP_FIXTURES
JsonDict = dict[str, Any]


class WatchedCopy:
    """What an informer would hold: the fake apiserver's objects of one plural, read directly
    (so always current), counting the lookups it answered."""

    def __init__(self, kube: fakes.FakeKube, plural: str) -> None:
        self.kube, self.plural = kube, plural
        self.ready = True
        self.hidden: set[str] = set()
        """Names the watch has "not delivered yet"."""
        self.answered = 0

    def get(self, namespace: str, name: str) -> JsonDict | None:
        found = self.kube.objects.get((self.plural, namespace, name))
        if found is None or name in self.hidden:
            return None
        self.answered += 1
        return found

    def by_uid(self, uid: str) -> JsonDict | None:
        for (plural, _, name), obj in self.kube.objects.items():
            if plural == self.plural and obj["metadata"]["uid"] == uid and name not in self.hidden:
                self.answered += 1
                return obj
        return None


@pytest.fixture
def sandboxes(kube: fakes.FakeKube) -> WatchedCopy:
    return WatchedCopy(kube, "sandboxes")


@pytest.fixture
def leases(kube: fakes.FakeKube) -> WatchedCopy:
    return WatchedCopy(kube, "leases")


@pytest.fixture
def gateway(
    kube: fakes.FakeKube, auth: fakes.FakeAuth, sandboxes: WatchedCopy, leases: WatchedCopy
) -> Gateway:
    return Gateway(
        kube,
        auth,
        sandboxes=sandboxes,
        leases=leases,
        limiter=FailureLimiter(rate=0.5, burst=3, total_rate=100, total_burst=1000),
        poll_interval=0.01,
    )


@pytest.fixture
async def node_agent(kube: fakes.FakeKube) -> AsyncIterator[fakes.FakeNodeAgent]:
    agent = fakes.FakeNodeAgent(token=SA_TOKEN)
    async with TestServer(agent.app) as server:
        announce_node_agent(kube, str(server.make_url("")).rstrip("/"))
        yield agent


async def exec_once(client: AppClient, uid: str) -> None:
    async with client.ws_connect(f"/v1/sandboxes/{uid}/agent", headers=bearer(SA_TOKEN)) as ws:
        greeting = await ws.receive(timeout=5)
        assert greeting.type == WSMsgType.BINARY


async def test_execs_read_nothing_from_the_apiserver(
    client: AppClient,
    kube: fakes.FakeKube,
    node_agent: fakes.FakeNodeAgent,
    sandboxes: WatchedCopy,
    leases: WatchedCopy,
) -> None:
    uid = running_sandbox(kube)["metadata"]["uid"]
    for _ in range(3):
        await exec_once(client, uid)
    assert kube.calls == []
    assert node_agent.agent_sockets == 3
    assert sandboxes.answered == 3
    assert leases.answered == 3


async def test_gets_by_name_and_id_come_from_the_copy(
    client: AppClient, kube: fakes.FakeKube
) -> None:
    uid = running_sandbox(kube, "s1")["metadata"]["uid"]
    by_name = await client.get("/v1/sandboxes/by-name/s1", headers=bearer(SA_TOKEN))
    by_id = await client.get(f"/v1/sandboxes/{uid}", headers=bearer(SA_TOKEN))
    assert (by_name.status, by_id.status) == (200, 200)
    assert (await by_id.json())["name"] == "s1"
    assert kube.calls == []


async def test_a_copy_that_is_not_ready_is_not_trusted(
    client: AppClient,
    kube: fakes.FakeKube,
    node_agent: fakes.FakeNodeAgent,
    sandboxes: WatchedCopy,
    leases: WatchedCopy,
) -> None:
    uid = running_sandbox(kube)["metadata"]["uid"]
    sandboxes.ready = leases.ready = False
    await exec_once(client, uid)
    assert sandboxes.answered == leases.answered == 0
    assert (
        "GET",
        "/apis/coordination.k8s.io/v1/namespaces/kubesandbox-system/leases/node-agent-node-1",
    ) in kube.calls
    assert any(url.endswith("/namespaces/team-a/sandboxes") for _, url in kube.calls)


async def test_what_the_watch_has_not_delivered_yet_is_read_from_the_apiserver(
    client: AppClient, kube: fakes.FakeKube, sandboxes: WatchedCopy
) -> None:
    uid = running_sandbox(kube, "young")["metadata"]["uid"]
    sandboxes.hidden.add("young")
    by_name = await client.get("/v1/sandboxes/by-name/young", headers=bearer(SA_TOKEN))
    assert by_name.status == 200
    assert ("GET", "/apis/kubesandbox.dev/v1alpha1/namespaces/team-a/sandboxes/young") in kube.calls
    by_id = await client.get(f"/v1/sandboxes/{uid}", headers=bearer(SA_TOKEN))
    assert by_id.status == 200  # the uid → name cache of the by-name read, verified by a GET


async def test_random_ids_list_the_namespace_at_most_once_a_second(
    client: AppClient, kube: fakes.FakeKube
) -> None:
    running_sandbox(kube, "s1")
    for n in range(5):
        answer = await client.get(f"/v1/sandboxes/{n:08x}-0000", headers=bearer(SA_TOKEN))
        assert answer.status == 404
    lists = [url for method, url in kube.calls if url.endswith("/namespaces/team-a/sandboxes")]
    assert len(lists) == 1


async def test_an_expired_lease_in_the_copy_is_read_again(
    client: AppClient,
    kube: fakes.FakeKube,
    node_agent: fakes.FakeNodeAgent,
    leases: WatchedCopy,
) -> None:
    uid = running_sandbox(kube)["metadata"]["uid"]
    lease = kube.objects[("leases", "kubesandbox-system", "node-agent-node-1")]
    stale = datetime.now(UTC) - timedelta(minutes=5)
    lease["spec"]["renewTime"] = stale.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    refused = await client.get(f"/v1/sandboxes/{uid}/agent", headers=bearer(SA_TOKEN))
    assert refused.status == 502
    assert "stopped renewing" in (await refused.json())["error"]["message"]
    assert any(url.endswith("/leases/node-agent-node-1") for _, url in kube.calls)


def test_the_copy_keeps_no_scripts_patches_or_managed_fields() -> None:
    trimmed = trim_sandbox(
        {
            "metadata": {
                "name": "s",
                "managedFields": [{"manager": "x"}],
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": "{...}",
                    "keep": "me",
                },
            },
            "spec": {"image": {"oci": "x"}, "scripts": {"a": "b" * 1000}, "patches": [{}]},
            "status": {"phase": "Running"},
        }
    )
    assert trimmed == {
        "metadata": {"name": "s", "annotations": {"keep": "me"}},
        "spec": {"image": {"oci": "x"}},
        "status": {"phase": "Running"},
    }


# ---- failed tokens -----------------------------------------------------------------------


async def test_failed_tokens_are_limited_per_address_with_retry_after(
    client: AppClient, kube: fakes.FakeKube, auth: fakes.FakeAuth
) -> None:
    running_sandbox(kube, "s1")
    statuses = []
    for n in range(6):
        answer = await client.get("/v1/sandboxes", headers=bearer(f"random-{n}"))
        statuses.append(answer.status)
        if answer.status == 429:
            assert int(answer.headers["Retry-After"]) >= 1
            assert (await answer.json())["error"]["code"] == "rate_limited"
    assert statuses == [401, 401, 401, 429, 429, 429]
    assert auth.token_reviews == 3  # the limited ones cost no review
    known = await client.get("/v1/sandboxes", headers=bearer(SA_TOKEN))
    assert known.status == 200  # a token accepted before is not held back


async def test_an_address_gets_its_tokens_back_over_time() -> None:
    now = [0.0]
    limiter = FailureLimiter(rate=0.5, burst=2, clock=lambda: now[0])
    limiter.failed("a")
    limiter.failed("a")
    assert limiter.retry_after("a") == 2
    assert limiter.retry_after("b") == 0
    now[0] = 2.0
    assert limiter.retry_after("a") == 0


async def test_many_addresses_add_up_to_the_total_limit() -> None:
    limiter = FailureLimiter(rate=1, burst=10, total_rate=1, total_burst=5, max_addresses=3)
    for n in range(5):
        limiter.failed(f"10.0.0.{n}")
    assert limiter.retry_after("10.0.0.99") >= 1
    assert len(limiter) == 3  # the address table is bounded


async def test_the_limit_applies_to_the_namespace_prefixed_routes_too(
    gateway: Gateway,
) -> None:
    app: web.Application = make_app(gateway)
    async with TestClient(TestServer(app)) as client:
        for n in range(4):
            answer = await client.get("/ns/team-a/v1/sandboxes", headers=bearer(f"x-{n}"))
        assert answer.status == 429


async def test_waiting_for_running_watches_the_copy_not_the_apiserver(
    kube: fakes.FakeKube, auth: fakes.FakeAuth, sandboxes: WatchedCopy
) -> None:
    """A sandbox served by a warm pool is Running within a fraction of a second: the wait sees
    it in the watch's copy, without an apiserver GET per poll interval."""
    gateway = Gateway(kube, auth, sandboxes=sandboxes, poll_interval=30)
    running_sandbox(kube, "warm")
    stored = kube.sandbox("team-a", "warm")
    stored["status"] = {"phase": "Scheduled"}
    created = json.loads(json.dumps(stored))

    async def becomes_running() -> None:
        await asyncio.sleep(0.2)
        stored["status"] = {"phase": "Running", "nodeName": "node-1"}

    began = time.monotonic()
    flip = asyncio.create_task(becomes_running())
    answer = await gateway.wait_running(created, 60)
    await flip
    assert answer["status"]["phase"] == "Running"
    assert 0.2 <= time.monotonic() - began < 5
    assert kube.calls == []


async def test_running_without_a_node_is_not_usable_yet(
    kube: fakes.FakeKube, auth: fakes.FakeAuth, sandboxes: WatchedCopy
) -> None:
    """A claimed VM reports Running before the operator wrote the node: the SDK's first exec
    needs the node, so the wait goes on until it is there."""
    gateway = Gateway(kube, auth, sandboxes=sandboxes, poll_interval=30)
    running_sandbox(kube, "claimed")
    stored = kube.sandbox("team-a", "claimed")
    stored["status"] = {"phase": "Running"}
    created = json.loads(json.dumps(stored))

    async def placed() -> None:
        await asyncio.sleep(0.2)
        stored["status"] = {"phase": "Running", "nodeName": "node-1"}

    flip = asyncio.create_task(placed())
    answer = await gateway.wait_running(created, 60)
    await flip
    assert answer["status"]["nodeName"] == "node-1"
    assert kube.calls == []
