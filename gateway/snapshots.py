"""The SDK's snapshot routes, served over ``SandboxSnapshot`` objects (docs/snapshots.md).

The same three steps as every route (:mod:`.app`): the caller's token, the namespace, and a
SubjectAccessReview, here on ``sandboxsnapshots`` (``create``, ``get``, ``list``,
``delete``); taking a snapshot also needs ``get`` on the source sandbox. Only then does the
gateway read or write, with its own credentials, the objects the request is about. The
capture itself is the operator's and the node agent's: the gateway creates the object and
reports its phase as the SDK's snapshot *operation*, waiting (at most ``max_wait``) for it to
end, as the SDK would poll it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from kubesandbox_api.snapshot import SNAPSHOT_KIND
from kubesandbox_gateway import msb_snapshot
from kubesandbox_gateway.app import (
    API_VERSION,
    CREATED_BY,
    LIST_PAGE,
    NAME_RE,
    SNAPSHOT_RESOURCE,
    UID_RE,
    Caller,
    Gateway,
    Handler,
    int_query,
    json_body,
)
from kubesandbox_gateway.errors import GatewayError, from_kube, invalid_request
from kubesandbox_gateway.msb_input import InvalidConfig
from kubesandbox_kube.auth import Access
from kubesandbox_kube.errors import AlreadyExists, KubeError, NotFound
from kubesandbox_kube.paths import SANDBOX_SNAPSHOTS, SANDBOXES

JsonDict = dict[str, Any]
STOPPED = "Stopped"
SETTLED = frozenset({STOPPED, "Failed", "Crashed"})
"""Phases of a sandbox that no longer runs."""
ENDED = frozenset({"Ready", "Failed"})
MAX_PAGE = 500


def snapshot_not_found(what: str) -> GatewayError:
    return GatewayError(404, "snapshot_not_found", f"snapshot {what} not found")


@dataclass
class SnapshotRoutes:
    gateway: Gateway

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("POST", "/v1/snapshots", self.create),
            ("GET", "/v1/snapshots", self.list),
            ("GET", "/v1/snapshots/by-name/{name}", self.get_by_name),
            ("DELETE", "/v1/snapshots/by-name/{name}", self.delete_by_name),
            ("GET", "/v1/snapshots/{id}", self.get_by_id),
            ("DELETE", "/v1/snapshots/{id}", self.delete_by_id),
            ("GET", "/v1/snapshot-operations/{id}", self.get_operation),
        ]

    async def allowed(self, request: web.Request, verb: str, name: str = "") -> Caller:
        caller = await self.gateway.caller(request)
        access = Access(verb, caller.namespace, resource=SNAPSHOT_RESOURCE, name=name)
        await self.gateway.allow(caller, access)
        return caller

    # ---- taking one -----------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        gateway = self.gateway
        body = await json_body(request)
        try:
            source_id, name = msb_snapshot.create_request(body)
        except InvalidConfig as error:
            raise GatewayError(422, "invalid_request", str(error)) from error
        caller = await self.allowed(request, "create", name)
        source = await gateway.sandbox_by_uid(caller, source_id, "get")
        source = await self.wait_stopped(caller, source)
        manifest = {
            "apiVersion": API_VERSION,
            "kind": SNAPSHOT_KIND,
            "metadata": {
                "name": name,
                "namespace": caller.namespace,
                "annotations": {CREATED_BY: caller.user.name},
            },
            "spec": {"source": {"name": source["metadata"]["name"]}},
        }
        path = SANDBOX_SNAPSHOTS.in_namespace(caller.namespace)
        try:
            created = await gateway.kube.create(path, manifest)
        except AlreadyExists as error:
            raise GatewayError(
                409, "snapshot_already_exists", f"snapshot {name!r} already exists"
            ) from error
        except KubeError as error:
            raise from_kube(error, what=repr(name)) from error
        return web.json_response(msb_snapshot.operation(await self.wait_ended(created)))

    async def wait_stopped(self, caller: Caller, sandbox: JsonDict) -> JsonDict:
        """The source once it has stopped: the SDK's ``stop()`` returns before the VM is down,
        and a snapshot right after it is the usual flow. A source not asked to stop is refused
        at once (only a stopped sandbox's writable layer is copied)."""
        name = sandbox["metadata"]["name"]
        path = SANDBOXES.in_namespace(caller.namespace).named(name)
        deadline = time.monotonic() + self.gateway.max_wait
        while True:
            spec = sandbox.get("spec") or {}
            wanted = (spec.get("lifecycle") or {}).get("state", "Running")
            phase = (sandbox.get("status") or {}).get("phase")
            if phase == STOPPED:
                return sandbox
            if wanted != STOPPED or phase in SETTLED:
                raise GatewayError(
                    409,
                    "invalid_state",
                    f"sandbox {name!r} is {phase or 'Pending'}: a snapshot is taken of a "
                    "stopped sandbox (stop it first)",
                )
            if time.monotonic() >= deadline:
                raise GatewayError(
                    409, "invalid_state", f"sandbox {name!r} is still {phase}: not stopped yet"
                )
            await asyncio.sleep(self.gateway.poll_interval)
            try:
                sandbox = await self.gateway.kube.get(path)
            except KubeError as error:
                raise from_kube(error, what=repr(name)) from error

    async def wait_ended(self, snapshot: JsonDict) -> JsonDict:
        """Re-reads the SandboxSnapshot until Ready or Failed, at most ``max_wait`` (the SDK
        polls the operation after that)."""
        metadata = snapshot["metadata"]
        path = SANDBOX_SNAPSHOTS.in_namespace(metadata["namespace"]).named(metadata["name"])
        deadline = time.monotonic() + self.gateway.max_wait
        while (snapshot.get("status") or {}).get("phase") not in ENDED:
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(self.gateway.poll_interval)
            try:
                snapshot = await self.gateway.kube.get(path)
            except KubeError as error:
                raise from_kube(error, what=repr(metadata["name"])) from error
        return snapshot

    async def get_operation(self, request: web.Request) -> web.Response:
        caller = await self.allowed(request, "list")
        snapshot = await self.find_uid(caller, request.match_info["id"])
        if snapshot is None:
            raise GatewayError(404, "snapshot_operation_not_found", "no such snapshot operation")
        return web.json_response(msb_snapshot.operation(snapshot))

    # ---- reading them ---------------------------------------------------------------------

    async def list(self, request: web.Request) -> web.Response:
        caller = await self.allowed(request, "list")
        params = {"limit": str(int_query(request, "limit", 100, 1, MAX_PAGE))}
        cursor = request.query.get("cursor")
        if cursor:
            if len(cursor) > 4096:
                raise invalid_request("cursor is too long")
            params["continue"] = cursor
        try:
            page = await self.gateway.kube.request(
                "GET", SANDBOX_SNAPSHOTS.in_namespace(caller.namespace), params=params
            )
        except KubeError as error:
            raise from_kube(error) from error
        # Only captured snapshots: the SDK has no shape for one still being taken.
        data = [s for s in map(msb_snapshot.cloud_snapshot, page.get("items") or []) if s]
        next_cursor = (page.get("metadata") or {}).get("continue") or None
        return web.json_response({"data": data, "next_cursor": next_cursor})

    async def by_name(self, request: web.Request, verb: str) -> tuple[Caller, JsonDict]:
        name = request.match_info["name"]
        caller = await self.allowed(request, verb, name if NAME_RE.match(name) else "")
        if not NAME_RE.match(name):
            raise snapshot_not_found(repr(name[:80]))
        path = SANDBOX_SNAPSHOTS.in_namespace(caller.namespace).named(name)
        try:
            return caller, await self.gateway.kube.get(path)
        except NotFound as error:
            raise snapshot_not_found(repr(name)) from error
        except KubeError as error:
            raise from_kube(error, what=repr(name)) from error

    async def by_id(self, request: web.Request, verb: str) -> tuple[Caller, JsonDict]:
        """Namespace-wide rights only: a snapshot id is found by listing the namespace."""
        caller = await self.allowed(request, verb)
        uid = request.match_info["id"]
        snapshot = await self.find_uid(caller, uid)
        if snapshot is None:
            raise snapshot_not_found(repr(uid[:80]))
        return caller, snapshot

    async def find_uid(self, caller: Caller, uid: str) -> JsonDict | None:
        if not UID_RE.match(uid):
            return None
        async for item in self.every(caller.namespace):
            if (item.get("metadata") or {}).get("uid") == uid:
                return item
        return None

    async def every(self, namespace: str) -> AsyncIterator[JsonDict]:
        params = {"limit": str(LIST_PAGE)}
        while True:
            try:
                page = await self.gateway.kube.request(
                    "GET", SANDBOX_SNAPSHOTS.in_namespace(namespace), params=params
                )
            except KubeError as error:
                raise from_kube(error) from error
            for item in page.get("items") or []:
                yield item
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return
            params = {"limit": str(LIST_PAGE), "continue": str(token)}

    def answer(self, snapshot: JsonDict) -> web.Response:
        found = msb_snapshot.cloud_snapshot(snapshot)
        if found is None:
            status = snapshot.get("status") or {}
            phase = status.get("phase") or "Pending"
            why = f": {status['message']}" if status.get("message") else ""
            raise GatewayError(
                404,
                "snapshot_not_found",
                f"snapshot {snapshot['metadata']['name']!r} is {phase}, not Ready{why}",
            )
        return web.json_response(found)

    async def get_by_name(self, request: web.Request) -> web.Response:
        return self.answer((await self.by_name(request, "get"))[1])

    async def get_by_id(self, request: web.Request) -> web.Response:
        return self.answer((await self.by_id(request, "get"))[1])

    # ---- removing them --------------------------------------------------------------------

    async def delete_by_name(self, request: web.Request) -> web.Response:
        return await self.delete(*await self.by_name(request, "delete"))

    async def delete_by_id(self, request: web.Request) -> web.Response:
        return await self.delete(*await self.by_id(request, "delete"))

    async def delete(self, caller: Caller, snapshot: JsonDict) -> web.Response:
        """Deletes the object; the operator removes the copy on the node before it goes."""
        metadata = snapshot["metadata"]
        path = SANDBOX_SNAPSHOTS.in_namespace(caller.namespace).named(metadata["name"])
        try:
            await self.gateway.kube.delete(path, uid=metadata.get("uid"))
        except NotFound as error:
            raise snapshot_not_found(repr(metadata["name"])) from error
        except KubeError as error:
            raise from_kube(error, what=repr(metadata["name"])) from error
        return web.json_response({"message": f"snapshot {metadata['name']} deleted"})
