from __future__ import annotations

import asyncio
import shutil
import struct
import tempfile
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest_asyncio
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer

from kubesandbox_api.status import SandboxMetrics
from kubesandbox_kube.auth import Access, KubeAuthenticator, User
from kubesandbox_kube.errors import KubeError
from kubesandbox_kube.paths import TOKEN_REVIEWS, ResourcePath
from kubesandbox_node.runtime.manager import Runtime
from kubesandbox_node.runtime.supervisor import Timing
from kubesandbox_node.server.app import make_app
from kubesandbox_node.server.services import Services
from kubesandbox_node.status.writer import StatusWriter
from kubesandbox_protocol.frame import FLAG_SESSION_START, Frame, decode_frame
from kubesandbox_protocol.messages import MessageType, decode_body, encode_body, exec_request
from tests.unit.node.runtime.fakes import FakePreparer, FakeVMM

OPERATOR = "operator-token"
READER = "reader-token"


@dataclass
class FakeAuthenticator:
    """``operator-token`` may do everything; ``reader-token`` is a user with no rights."""

    asked: list[Access] = field(default_factory=list)

    async def authenticate(self, token: str) -> User | None:
        return {OPERATOR: User("operator"), READER: User("reader")}.get(token)

    async def authorize(self, user: User, access: Access) -> bool:
        self.asked.append(access)
        return user.name == "operator"


@dataclass
class Api:
    client: TestClient[Any, Any]
    services: Services
    auth: FakeAuthenticator
    vmm: FakeVMM

    async def call(
        self, method: str, path: str, token: str = OPERATOR, **kwargs: Any
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"}
        async with self.client.request(method, path, headers=headers, **kwargs) as response:
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, await response.text()

    async def running(self, uid: str | None = None) -> str:
        uid = uid or str(uuid.uuid4())
        status, body = await self.call("PUT", f"/v1/sandboxes/{uid}", json=desired(uid))
        assert status == 200, body
        await self.until(uid, "Running")
        return uid

    async def until(self, uid: str, phase: str) -> dict[str, Any]:
        async with asyncio.timeout(5):
            while True:
                status, body = await self.call("GET", f"/v1/sandboxes/{uid}")
                if status == 200 and body["phase"] == phase:
                    return dict(body)
                await asyncio.sleep(0.02)


def desired(uid: str, **spec: Any) -> dict[str, Any]:
    return {
        "namespace": "team-a",
        "name": "hello",
        "uid": uid,
        "generation": 1,
        "spec": {"image": {"oci": "busybox:1.36"}, **spec},
    }


@pytest_asyncio.fixture
async def api() -> AsyncIterator[Api]:
    state = Path(tempfile.mkdtemp(prefix="ksb-api-"))
    vmm = FakeVMM()
    runtime = Runtime(
        state,
        vmm=vmm,
        preparer=FakePreparer(state / "rootfs"),
        emulation=True,
        timing=Timing(ready_timeout=5, policy_tick=0.05),
    )
    auth = FakeAuthenticator()
    services = Services(runtime, auth, sample_interval=3600)
    client = TestClient(TestServer(make_app(services)))
    await client.start_server()
    try:
        yield Api(client, services, auth, vmm)
    finally:
        for uid in list(runtime.sandboxes):
            await runtime.remove(uid)
        await client.close()
        shutil.rmtree(state, ignore_errors=True)


async def test_healthz_is_open(api: Api) -> None:
    async with api.client.get("/healthz") as response:
        assert response.status == 200


async def test_no_token_or_unknown_token_is_401(api: Api) -> None:
    async with api.client.get(f"/v1/sandboxes/{uuid.uuid4()}") as response:
        assert response.status == 401
    status, _ = await api.call("GET", f"/v1/sandboxes/{uuid.uuid4()}", token="nope")
    assert status == 401


class Apiserver:
    """Reviews through the real authenticator; ``down`` makes the apiserver unreachable for
    TokenReview (``"tokens"``) or SubjectAccessReview (``"access"``)."""

    def __init__(self) -> None:
        self.down = ""

    async def create(self, path: ResourcePath, body: Mapping[str, Any]) -> dict[str, Any]:
        review = "tokens" if path == TOKEN_REVIEWS else "access"
        if self.down == review:
            raise KubeError(0, "Unreachable", "connection refused")
        if review == "tokens":
            return {"status": {"authenticated": True, "user": {"username": "alice"}}}
        return {"status": {"allowed": True}}


async def test_reviews_that_cannot_be_asked_are_503_never_allowed(api: Api) -> None:
    apiserver = Apiserver()
    api.services.authenticator = KubeAuthenticator(apiserver)
    uid = str(uuid.uuid4())
    apiserver.down = "tokens"
    status, text = await api.call("PUT", f"/v1/sandboxes/{uid}", "any", json=desired(uid))
    assert status == 503
    assert "cannot review the credentials" in text
    apiserver.down = "access"
    status, text = await api.call("PUT", f"/v1/sandboxes/{uid}", "any", json=desired(uid))
    assert status == 503
    assert api.services.runtime.get(uid) is None
    apiserver.down = ""
    status, _ = await api.call("PUT", f"/v1/sandboxes/{uid}", "any", json=desired(uid))
    assert status == 200
    await api.until(uid, "Running")


async def test_user_without_rights_is_403_in_the_sandbox_namespace(api: Api) -> None:
    uid = str(uuid.uuid4())
    status, text = await api.call("PUT", f"/v1/sandboxes/{uid}", READER, json=desired(uid))
    assert status == 403
    assert "team-a" in text
    assert api.auth.asked[-1] == Access("update", "team-a", name="hello")


async def test_put_creates_once_and_reports_status(api: Api) -> None:
    uid = await api.running()
    status, body = await api.call("PUT", f"/v1/sandboxes/{uid}", json=desired(uid))
    assert status == 200
    assert body["phase"] == "Running"
    assert {c["type"] for c in body["conditions"]} >= {"ImageReady", "AgentConnected"}
    assert body["image"]["digest"].startswith("sha256:")
    assert len(api.vmm.handles) == 1


async def test_invalid_body_is_422(api: Api) -> None:
    uid = str(uuid.uuid4())
    status, body = await api.call("PUT", f"/v1/sandboxes/{uid}", json={"uid": uid})
    assert status == 422
    assert body["message"] == "invalid DesiredSandbox"
    status, _ = await api.call("PUT", f"/v1/sandboxes/{uid}", json=desired(str(uuid.uuid4())))
    assert status == 422


async def test_verbs_and_wait(api: Api) -> None:
    uid = await api.running()
    assert (await api.call("POST", f"/v1/sandboxes/{uid}/pause", json={}))[0] == 202
    await api.until(uid, "Paused")
    await api.call("POST", f"/v1/sandboxes/{uid}/resume")
    await api.until(uid, "Running")
    waiter = asyncio.create_task(api.call("GET", f"/v1/sandboxes/{uid}/wait"))
    await api.call("POST", f"/v1/sandboxes/{uid}/stop", json={"gracePeriodSeconds": 1})
    status, body = await asyncio.wait_for(waiter, 5)
    assert status == 200
    assert body["exitStatus"] == {"success": True, "reason": "StoppedByUser", "code": 0}
    await api.call("POST", f"/v1/sandboxes/{uid}/start")
    await api.until(uid, "Running")
    assert (await api.call("POST", f"/v1/sandboxes/{uid}/explode"))[0] == 404


async def test_delete_removes_and_is_idempotent(api: Api) -> None:
    uid = await api.running()
    assert (await api.call("DELETE", f"/v1/sandboxes/{uid}"))[0] == 204
    assert (await api.call("GET", f"/v1/sandboxes/{uid}"))[0] == 404
    assert (await api.call("DELETE", f"/v1/sandboxes/{uid}"))[0] == 204


async def test_agent_websocket_pipes_the_relay(api: Api) -> None:
    uid = await api.running()
    headers = {"Authorization": f"Bearer {OPERATOR}"}
    async with api.client.ws_connect(f"/v1/sandboxes/{uid}/agent", headers=headers) as ws:
        data = b""
        while len(data) < 12 or len(data) < 12 + struct.unpack(">I", data[8:12])[0]:
            data += await ws.receive_bytes(timeout=5)
        id_start, _ = struct.unpack(">II", data[:8])
        assert decode_body(decode_frame(data[8:]).body).t == MessageType.READY
        request = encode_body(MessageType.EXEC_REQUEST, exec_request("echo", ["over", "ws"]))
        await ws.send_bytes(Frame(id_start + 1, FLAG_SESSION_START, request).encode())
        out = b""
        while b"core.exec.exited" not in out:
            out += await ws.receive_bytes(timeout=5)
        assert b"over ws" in out
    assert api.auth.asked[-1] == Access("create", "team-a", subresource="exec", name="hello")


async def test_websocket_refused_without_exec_rights(api: Api) -> None:
    uid = await api.running()
    headers = {"Authorization": f"Bearer {READER}"}
    async with api.client.get(f"/v1/sandboxes/{uid}/agent", headers=headers) as response:
        assert response.status == 403


async def test_websocket_closes_when_the_sandbox_drains(api: Api) -> None:
    uid = await api.running()
    headers = {"Authorization": f"Bearer {OPERATOR}"}
    async with api.client.ws_connect(f"/v1/sandboxes/{uid}/agent", headers=headers) as ws:
        await ws.receive_bytes(timeout=5)
        await api.call("POST", f"/v1/sandboxes/{uid}/drain")
        message = await ws.receive(timeout=5)
        while message.type == WSMsgType.BINARY:
            message = await ws.receive(timeout=5)
        assert message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
    await api.until(uid, "Stopped")


async def test_prometheus_endpoint(api: Api) -> None:
    uid = await api.running()
    api.services.sampler.latest[uid] = SandboxMetrics(memory_bytes=123, cpu_percent=1.5)
    status, text = await api.call("GET", "/metrics")
    assert status == 200
    assert (
        f'kubesandbox_sandbox_memory_bytes{{namespace="team-a",name="hello",uid="{uid}"}} 123'
        in text
    )
    assert 'kubesandbox_node_sandboxes{phase="Running"} 1' in text
    status, body = await api.call("GET", f"/v1/sandboxes/{uid}/metrics")
    assert body["memoryBytes"] == 123


async def test_a_pool_member_is_claimed_through_the_api_and_serves_nobody_before(api: Api) -> None:
    member = str(uuid.uuid4())
    body = {**desired(member), "name": "pool-x", "poolMember": True}
    status, _ = await api.call("PUT", f"/v1/sandboxes/{member}", json=body)
    assert status == 200
    await api.until(member, "Running")
    status, text = await api.call("GET", f"/v1/sandboxes/{member}/agent")
    assert status == 409
    assert "unclaimed pool VM" in text
    claimant = str(uuid.uuid4())
    claim = {"pool": "pool", "sandbox": desired(claimant)}
    status, answer = await api.call("POST", f"/v1/sandboxes/{member}/claim", json=claim)
    assert status == 200, answer
    assert answer["pool"] == "pool"
    assert answer["phase"] == "Running"
    assert (await api.call("GET", f"/v1/sandboxes/{claimant}"))[0] == 200
    assert (await api.call("GET", f"/v1/sandboxes/{member}"))[0] == 404
    again = {"pool": "pool", "sandbox": desired(str(uuid.uuid4()))}
    status, answer = await api.call("POST", f"/v1/sandboxes/{claimant}/claim", json=again)
    assert status == 409, answer


async def test_a_claim_is_answered_after_the_claimants_status_is_stored(api: Api) -> None:
    """The operator writes Ready from the claim's answer: the claimant's phase and pool must
    be in the apiserver first (a burst of claims saw Ready without them)."""
    stored: list[dict[str, Any]] = []

    class Kube:
        async def apply(
            self, path: ResourcePath, body: dict[str, Any], *, field_manager: str
        ) -> dict[str, Any]:
            stored.append(body)
            return body

    api.services.status = StatusWriter(Kube())  # type: ignore[arg-type]  # its loop not run
    member = str(uuid.uuid4())
    body = {**desired(member), "name": "pool-x", "poolMember": True}
    assert (await api.call("PUT", f"/v1/sandboxes/{member}", json=body))[0] == 200
    await api.until(member, "Running")
    claimant = str(uuid.uuid4())
    claim = {"pool": "warm", "sandbox": desired(claimant)}
    status, answer = await api.call("POST", f"/v1/sandboxes/{member}/claim", json=claim)
    assert status == 200, answer
    mine = [b["status"] for b in stored if b["metadata"]["uid"] == claimant]
    assert mine, stored
    assert (mine[-1]["phase"], mine[-1]["pool"]) == ("Running", "warm")


async def test_a_claim_is_authorized_in_the_claimants_namespace(api: Api) -> None:
    member = await api.running()
    claim = {"pool": "pool", "sandbox": desired(str(uuid.uuid4()))}
    status, _ = await api.call("POST", f"/v1/sandboxes/{member}/claim", READER, json=claim)
    assert status == 403
    status, answer = await api.call("POST", f"/v1/sandboxes/{member}/claim", json={"pool": ""})
    assert status == 422
    assert answer["message"] == "invalid ClaimRequest"


async def test_agent_websocket_wakes_an_idle_suspended_sandbox(api: Api) -> None:
    uid = str(uuid.uuid4())
    body = desired(uid, lifecycle={"idleTimeoutSeconds": 1, "idleAction": "Suspend"})
    assert (await api.call("PUT", f"/v1/sandboxes/{uid}", json=body))[0] == 200
    await api.until(uid, "Running")
    asleep = await api.until(uid, "Suspended")
    assert asleep["suspension"]["reason"] == "IdleTimeout"
    headers = {"Authorization": f"Bearer {OPERATOR}"}
    async with api.client.ws_connect(f"/v1/sandboxes/{uid}/agent", headers=headers) as ws:
        data = await ws.receive_bytes(timeout=5)
        assert len(data) >= 8
    _, awake = await api.call("GET", f"/v1/sandboxes/{uid}")
    assert awake["phase"] == "Running"
    assert "resumedAt" in awake["suspension"]
    woken = next(c for c in awake["conditions"] if c["type"] == "Suspended")
    assert (woken["status"], woken["reason"]) == ("False", "WokenByUse")
    assert len(api.vmm.restored_from) == 1


async def test_agent_websocket_does_not_wake_a_sandbox_suspended_on_purpose(api: Api) -> None:
    uid = await api.running()
    body = desired(uid, lifecycle={"state": "Suspended"}) | {"generation": 2}
    assert (await api.call("PUT", f"/v1/sandboxes/{uid}", json=body))[0] == 200
    await api.until(uid, "Suspended")
    headers = {"Authorization": f"Bearer {OPERATOR}"}
    async with api.client.get(f"/v1/sandboxes/{uid}/agent", headers=headers) as response:
        assert response.status == 409
    assert api.vmm.restored_from == []


async def test_snapshots_are_taken_of_stopped_sandboxes_and_authorized_on_snapshots(
    api: Api,
) -> None:
    uid = await api.running()
    snap = str(uuid.uuid4())
    body = {"namespace": "team-a", "name": "snap", "sourceUid": uid}
    status, answer = await api.call("PUT", f"/v1/snapshots/{snap}", json=body)
    assert status == 409
    assert "a snapshot is of a Stopped sandbox" in answer["message"]
    await api.call("POST", f"/v1/sandboxes/{uid}/kill")
    await api.until(uid, "Stopped")
    assert (await api.call("PUT", f"/v1/snapshots/{snap}", READER, json=body))[0] == 403
    asked = api.auth.asked[-1]
    assert (asked.verb, asked.resource, asked.namespace, asked.name) == (
        "update", "sandboxsnapshots", "team-a", "snap",
    )  # fmt: skip
    other = {**body, "namespace": "team-b"}
    assert (await api.call("PUT", f"/v1/snapshots/{snap}", json=other))[0] == 404
    status, answer = await api.call("PUT", f"/v1/snapshots/{snap}", json=body)
    assert status == 200, answer
    assert answer["sourceUid"] == uid
    assert answer["namespace"] == "team-a"
    assert answer["apparentBytes"] > 0
    assert answer["image"]["reference"] == "busybox:1.36"
    assert (await api.call("PUT", f"/v1/snapshots/{snap}", json=body))[1] == answer
    copy = api.services.runtime.snapshots.upper(snap)
    assert copy.is_file()
    # a caller without rights in the snapshot's own namespace cannot delete it by naming another
    path = f"/v1/snapshots/{snap}?namespace=team-b"
    assert (await api.call("DELETE", path, READER))[0] == 403
    assert api.auth.asked[-1].namespace == "team-a"
    assert copy.is_file()
    assert (await api.call("DELETE", f"/v1/snapshots/{snap}?namespace=team-a"))[0] == 204
    assert not copy.parent.exists()
    assert (await api.call("DELETE", f"/v1/snapshots/{snap}?namespace=team-a"))[0] == 204
    assert (await api.call("DELETE", "/v1/snapshots/..?namespace=team-a"))[0] in (404, 422)
