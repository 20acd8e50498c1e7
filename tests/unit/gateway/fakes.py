"""Fakes behind the gateway's two interfaces (``KubeApi`` and ``Authenticator``), a stand-in
for :mod:`kubesandbox_gateway.translate` that keeps its contract, and a fake node agent.

The fake apiserver behaves like the real one where the gateway relies on it: uids, generation
bumped by spec changes, ``AlreadyExists``, uid preconditions on delete, merge patches,
``limit``/``continue`` paging and equality label selectors. Unit tests therefore check the
gateway's own decisions; tests/integration/gateway checks the same routes against a real
kube-apiserver.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

from kubesandbox_gateway.translate import InvalidConfig, Translation
from kubesandbox_kube.auth import Access, ReviewUnavailable, User
from kubesandbox_kube.errors import AlreadyExists, Conflict, KubeError, NotFound
from kubesandbox_kube.paths import ResourcePath

JsonDict = dict[str, Any]
REDACTED = "<redacted>"


def _merge(target: JsonDict, patch: Mapping[str, Any]) -> JsonDict:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], JsonDict] = {}
        self.calls: list[tuple[str, str]] = []
        self.down = False
        self.refuse_create: dict[str, KubeError] = {}
        """plural → the error its next create raises (as an admission webhook or schema)."""

    def _key(self, path: ResourcePath) -> tuple[str, str, str]:
        assert path.namespace is not None
        assert path.name is not None
        return (path.plural, path.namespace, path.name)

    def _check(self, method: str, path: ResourcePath | str) -> None:
        url = path.url if isinstance(path, ResourcePath) else path
        self.calls.append((method, url))
        if self.down:
            raise KubeError(0, "Unreachable", f"{method} {url}: connection refused")

    def put(self, plural: str, namespace: str, obj: JsonDict) -> JsonDict:
        """Stores ``obj`` as the apiserver would (fills uid, generation)."""
        stored = copy.deepcopy(obj)
        metadata = stored.setdefault("metadata", {})
        metadata["namespace"] = namespace
        metadata.setdefault("uid", str(uuid.uuid4()))
        metadata.setdefault("generation", 1)
        metadata.setdefault("creationTimestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        self.objects[(plural, namespace, metadata["name"])] = stored
        return copy.deepcopy(stored)

    def sandbox(self, namespace: str, name: str) -> JsonDict:
        return self.objects[("sandboxes", namespace, name)]

    async def request(
        self,
        method: str,
        path: ResourcePath | str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> JsonDict:
        self._check(method, path)
        assert method == "GET"
        assert isinstance(path, ResourcePath)
        assert path.name is None
        params = params or {}
        items = [
            copy.deepcopy(obj)
            for (plural, namespace, _), obj in sorted(self.objects.items())
            if plural == path.plural and namespace == path.namespace
        ]
        for term in filter(None, params.get("labelSelector", "").split(",")):
            if term.startswith("!"):  # the label does not exist
                items = [i for i in items if term[1:] not in i["metadata"].get("labels", {})]
                continue
            key, _, value = term.partition("=")
            items = [i for i in items if i["metadata"].get("labels", {}).get(key) == value]
        start = 0
        if params.get("continue"):
            if params["continue"] == "expired":
                raise KubeError(410, "Expired", "the continue token has expired")
            start = int(params["continue"])
        limit = int(params.get("limit", "0")) or len(items)
        page = items[start : start + limit]
        more = start + limit < len(items)
        return {"items": page, "metadata": {"continue": str(start + limit) if more else ""}}

    async def get(self, path: ResourcePath) -> JsonDict:
        self._check("GET", path)
        found = self.objects.get(self._key(path))
        if found is None:
            raise NotFound(404, "NotFound", f'{path.plural} "{path.name}" not found')
        return copy.deepcopy(found)

    async def create(self, path: ResourcePath, body: Mapping[str, Any]) -> JsonDict:
        self._check("POST", path)
        if path.plural in self.refuse_create:
            raise self.refuse_create.pop(path.plural)
        assert path.namespace is not None
        name = body["metadata"]["name"]
        if (path.plural, path.namespace, name) in self.objects:
            raise AlreadyExists(409, "AlreadyExists", f'{path.plural} "{name}" already exists')
        return self.put(path.plural, path.namespace, dict(body))

    async def delete(
        self, path: ResourcePath, *, uid: str | None = None, grace_seconds: int | None = None
    ) -> JsonDict:
        self._check("DELETE", path)
        key = self._key(path)
        found = self.objects.get(key)
        if found is None:
            raise NotFound(404, "NotFound", f'{path.plural} "{path.name}" not found')
        if uid is not None and found["metadata"]["uid"] != uid:
            raise Conflict(409, "Conflict", "Precondition failed: UID in precondition")
        del self.objects[key]
        return {"kind": "Status", "status": "Success"}

    async def merge_patch(self, path: ResourcePath, body: Mapping[str, Any]) -> JsonDict:
        self._check("PATCH", path)
        key = self._key(path)
        found = self.objects.get(key)
        if found is None:
            raise NotFound(404, "NotFound", f'{path.plural} "{path.name}" not found')
        before = json.dumps(found.get("spec"), sort_keys=True)
        _merge(found, body)
        if json.dumps(found.get("spec"), sort_keys=True) != before:
            found["metadata"]["generation"] += 1
        return copy.deepcopy(found)


class FakeAuth:
    """Tokens name users; grants are (user, verb, resource[/sub], namespace, name or "*")."""

    def __init__(self) -> None:
        self.users: dict[str, User] = {}
        self.grants: set[tuple[str, str, str, str, str]] = set()
        self.reviews: list[tuple[User, Access]] = []
        self.token_reviews = 0
        self.down = False

    def add_user(self, token: str, name: str) -> User:
        self.users[token] = User(name, uid=f"uid-{name}", groups=("system:authenticated",))
        return self.users[token]

    def grant(self, user: str, verbs: str, namespace: str, resource: str = "sandboxes") -> None:
        for verb in verbs.split(","):
            self.grants.add((user, verb, resource, namespace, "*"))

    async def authenticate(self, token: str) -> User | None:
        if self.down:
            raise ReviewUnavailable("apiserver unreachable")
        self.token_reviews += 1
        return self.users.get(token)

    def remembers(self, token: str) -> bool:
        return token in self.users

    async def authorize(self, user: User, access: Access) -> bool:
        if self.down:
            raise ReviewUnavailable("apiserver unreachable")
        self.reviews.append((user, access))
        resource = access.resource + (f"/{access.subresource}" if access.subresource else "")
        return any(
            (user.name, access.verb, resource, access.namespace, name) in self.grants
            for name in ("*", access.name)
        )


# ---- translate stand-in (the contract of gateway/translate.py, nothing more) ----------------

STATUS = {
    "Running": "running",
    "Paused": "stopped",
    "Stopped": "stopped",
    "Draining": "stopping",
    "Stopping": "stopping",
    "Failed": "failed",
    "Crashed": "failed",
}


def sandbox_from_create(body: Mapping[str, Any], *, secret_name: str) -> Translation:
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidConfig("name", "required")
    reference = body.get("reference") or (body.get("image") or {}).get("reference")
    if not reference:
        raise InvalidConfig("reference", "an image reference is required")
    spec: JsonDict = {
        "image": {"oci": reference},
        "env": [{"name": e["key"], "value": e["value"]} for e in body.get("env") or []],
    }
    if (body.get("lifecycle") or {}).get("ephemeral"):
        spec["lifecycle"] = {"ephemeral": True}
    secret_data: dict[str, str] = {}
    entries = ((body.get("network") or {}).get("secrets") or {}).get("entries") or []
    if entries:
        spec["secrets"] = []
        for entry in entries:
            secret_data[entry["env_var"]] = entry["value"]
            spec["secrets"].append(
                {
                    "env": entry["env_var"],
                    "secretKeyRef": {"name": secret_name, "key": entry["env_var"]},
                    "allowHosts": [h["value"] for h in entry.get("allowed_hosts") or []],
                }
            )
    return Translation(
        name=name,
        spec=spec,
        labels=dict(body.get("labels") or {}),
        annotations={},
        secret_data=secret_data,
    )


def sandbox_object(sandbox: Mapping[str, Any]) -> JsonDict:
    metadata = sandbox["metadata"]
    status = sandbox.get("status") or {}
    phase = status.get("phase")
    msb_status = STATUS.get(phase or "", "starting")
    answer: JsonDict = {
        "id": metadata["uid"],
        "org_id": metadata["namespace"],
        "name": metadata["name"],
        "slug": metadata["name"],
        "status": msb_status,
        "ephemeral": (sandbox.get("spec", {}).get("lifecycle") or {}).get("ephemeral") is True,
        "created_at": metadata.get("creationTimestamp"),
        "spec": {"env": sandbox.get("spec", {}).get("env", [])},
    }
    if msb_status == "failed":
        answer["last_failure_message"] = status.get("message")
    return answer


def redacted(body: Mapping[str, Any]) -> JsonDict:
    clean = copy.deepcopy(dict(body))
    for entry in ((clean.get("network") or {}).get("secrets") or {}).get("entries") or []:
        entry["value"] = REDACTED
    if isinstance(clean.get("registry"), dict) and "password" in clean["registry"]:
        clean["registry"]["password"] = REDACTED
    return clean


# ---- a node agent: the relay echoes bytes; verbs record what they got ----------------------


class FakeNodeAgent:
    def __init__(self, token: str) -> None:
        self.token = token
        self.verbs: list[tuple[str, str, str]] = []
        self.agent_sockets = 0
        self.agent_sockets_closed = 0
        self.refuse_with: int | None = None
        self.app = web.Application()
        self.app.router.add_get("/v1/sandboxes/{uid}/agent", self.agent)
        self.app.router.add_post("/v1/sandboxes/{uid}/{verb}", self.verb)
        self.app.router.add_get("/v1/sandboxes/{uid}/metrics", self.metrics)
        self.app.router.add_get("/v1/sandboxes/{uid}/logs", self.logs)
        self.log_requests: list[tuple[dict[str, str], str | None]] = []
        """(query, Last-Event-ID) of each log request."""
        self.log_events = LOG_EVENTS
        self.log_status = 200

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.token}"

    async def agent(self, request: web.Request) -> web.StreamResponse:
        if self.refuse_with is not None:
            return web.json_response({"error": "refused"}, status=self.refuse_with)
        if not self._authorized(request):
            return web.json_response({"error": "forbidden"}, status=403)
        self.agent_sockets += 1
        ws = web.WebSocketResponse(max_msg_size=16 << 20)
        try:
            await ws.prepare(request)
            # The relay greets first (id range + core.ready), unprompted.
            await ws.send_bytes(b"\x00\x00\x00\x01\x02\x00\x00\x00" + b"ready")
            async for message in ws:
                if message.type != WSMsgType.BINARY:
                    break
                if message.data == b"close-please":
                    break
                await ws.send_bytes(b"echo:" + message.data)
            await ws.close()
        finally:
            self.agent_sockets_closed += 1
        return ws

    async def verb(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "forbidden"}, status=403)
        verb = request.match_info["verb"]
        self.verbs.append((request.match_info["uid"], verb, await request.text()))
        return web.json_response({"phase": "Draining" if verb == "drain" else "Stopped"})

    async def metrics(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "forbidden"}, status=403)
        return web.json_response({"cpuPercent": 12.5, "memoryBytes": 1 << 20})

    async def logs(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return web.json_response({"error": "forbidden"}, status=403)
        self.log_requests.append((dict(request.query), request.headers.get("Last-Event-ID")))
        if self.log_status != 200:
            return web.Response(status=self.log_status, text="sources: 'x' is not a source")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in self.log_events:
            await response.write(event)  # one event per write: the gateway must not wait for all
        await response.write_eof()
        return response


LOG_CURSOR = "AQAAAAAAAAABAAAAAAAAAEA="
"""A cursor as the node agent makes them (tag 1, segment 1, offset 64)."""
LOG_EVENTS = [
    b"event: log\nid: " + LOG_CURSOR.encode() + b"\ndata: "
    b'{"ts":"2026-12-04T06:00:00.000Z","source":"stdout","session_id":7,"text":"hello\\n"}\n\n',
    b"event: log\nid: " + LOG_CURSOR.encode() + b"\ndata: "
    b'{"ts":"2026-12-04T06:00:01.000Z","source":"system","session_id":null,'
    b'"text":"session 7: exited with code 0\\n"}\n\n',
]
