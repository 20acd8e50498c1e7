"""The aiohttp application of docs/node-agent-api.md.

Every route but ``/healthz`` needs ``Authorization: Bearer <token>``: the token is reviewed
(``Authenticator.authenticate``: 401 when unknown) and the caller authorized in the Sandbox's
namespace (403): control routes need ``update`` on ``sandboxes``, the agent WebSocket
``create`` on ``sandboxes/exec``, ``/metrics`` ``get`` on ``sandboxes`` cluster-wide. When the
apiserver cannot be asked the request is refused with 503 (never let through): the caller can
tell "you may not" from "nobody can be checked right now" and retry.

Handlers are thin: parse, authorize, one call into the runtime, serialize. The agent
WebSocket is a byte pipe to the sandbox's relay socket, so it gets its own client slot and
every relay rule (id range, drain refusal, disconnect notice) applies unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from kubesandbox_api.conditions import Phase
from kubesandbox_kube.auth import Access, ReviewUnavailable, User
from kubesandbox_node.logs import stream
from kubesandbox_node.metrics import prometheus
from kubesandbox_node.runtime.model import ClaimRequest, DesiredSandbox
from kubesandbox_node.runtime.snapshots import SnapshotRefused
from kubesandbox_node.runtime.supervisor import ClaimRefused, Supervisor
from kubesandbox_node.server.bridge import AgentBridge
from kubesandbox_node.server.services import Services

SERVICES = web.AppKey("services", Services)
USER = web.RequestKey("user", User)
DELETE_PATIENCE = 1.0
WAKE_MARGIN = 30.0
"""Beyond the ready timeout, for a suspend in progress to finish before the wake."""
VERBS = ("stop", "start", "kill", "drain", "pause", "resume")

log = structlog.get_logger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _services(request: web.Request) -> Services:
    return request.app[SERVICES]


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path == "/healthz":
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise web.HTTPUnauthorized(text="bearer token required")
    try:
        user = await _services(request).authenticator.authenticate(token.strip())
    except ReviewUnavailable as error:
        raise _unavailable(error) from error
    if user is None:
        raise web.HTTPUnauthorized(text="token not accepted")
    request[USER] = user
    return await handler(request)


async def authorize(request: web.Request, access: Access) -> None:
    user = request[USER]
    try:
        allowed = await _services(request).authenticator.authorize(user, access)
    except ReviewUnavailable as error:
        raise _unavailable(error) from error
    if not allowed:
        what = access.resource + (f"/{access.subresource}" if access.subresource else "")
        where = f"in namespace {access.namespace}" if access.namespace else "cluster-wide"
        raise web.HTTPForbidden(text=f"{user.name} may not {access.verb} {what} {where}")


def _unavailable(error: ReviewUnavailable) -> web.HTTPServiceUnavailable:
    log.warning("auth.review_unavailable", error=str(error))
    return web.HTTPServiceUnavailable(
        text="the Kubernetes API cannot review the credentials right now; try again"
    )


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


async def _known(request: web.Request, verb: str = "update", subresource: str = "") -> Supervisor:
    uid = request.match_info["uid"]
    supervisor = _services(request).runtime.get(uid)
    if supervisor is None:
        await authorize(request, Access(verb, "", subresource=subresource))
        raise web.HTTPNotFound(text=f"no sandbox {uid} on this node")
    desired = supervisor.desired
    await authorize(
        request, Access(verb, desired.namespace, subresource=subresource, name=desired.name)
    )
    return supervisor


def _status(supervisor: Supervisor, services: Services) -> dict[str, Any]:
    status = supervisor.status()
    metrics = services.sampler.latest.get(supervisor.uid)
    if metrics is not None and supervisor.handle is not None:
        status = status.model_copy(update={"metrics": metrics})
    return status.wire()


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


Model = TypeVar("Model", bound=BaseModel)


async def _body(request: web.Request, model: type[Model]) -> Model:
    """The JSON body as ``model``; 422 naming what is wrong."""
    try:
        return model.model_validate(await request.json())
    except ValueError as exc:
        detail = exc.errors() if isinstance(exc, ValidationError) else str(exc)
        raise web.HTTPUnprocessableEntity(
            text=json.dumps({"message": f"invalid {model.__name__}", "details": detail}),
            content_type="application/json",
        ) from exc


class SnapshotRequest(BaseModel):
    """``PUT /v1/snapshots/{uid}``: take SandboxSnapshot ``uid`` of a stopped sandbox here."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    namespace: str = Field(min_length=1, max_length=63)
    name: str = Field(min_length=1, max_length=253)
    """The SandboxSnapshot's name."""
    source_uid: str = Field(pattern=r"^[0-9a-fA-F-]{8,64}$")


async def put_snapshot(request: web.Request) -> web.Response:
    """Takes the snapshot (a copy of the source's writable layer) and answers what it holds;
    409 with the reason when it cannot be taken (docs/snapshots.md)."""
    uid = request.match_info["uid"]
    body = await _body(request, SnapshotRequest)
    access = Access("update", body.namespace, resource="sandboxsnapshots", name=body.name)
    await authorize(request, access)
    runtime = _services(request).runtime
    source = runtime.get(body.source_uid)
    if source is None or source.desired.namespace != body.namespace:
        return _json({"message": f"no sandbox {body.source_uid} of {body.namespace} here"}, 404)
    try:
        info = await runtime.snapshot(uid, body.source_uid)
    except SnapshotRefused as error:
        return _json({"message": str(error)}, 409)
    return _json(info.model_dump(mode="json", by_alias=True))


async def delete_snapshot(request: web.Request) -> web.Response:
    """Removes the snapshot's copy (``?namespace=`` is the SandboxSnapshot's); 204 also when
    it was not here."""
    uid = request.match_info["uid"]
    namespace = request.query.get("namespace", "")
    runtime = _services(request).runtime
    try:
        info = runtime.snapshots.get(uid)
    except SnapshotRefused as error:
        return _json({"message": str(error)}, 422)
    if info is not None and info.namespace != namespace:
        namespace = info.namespace  # reviewed where the snapshot really is
    await authorize(request, Access("update", namespace, resource="sandboxsnapshots"))
    await runtime.remove_snapshot(uid)
    return web.Response(status=204)


async def put_sandbox(request: web.Request) -> web.Response:
    uid = request.match_info["uid"]
    desired = await _body(request, DesiredSandbox)
    if desired.uid != uid:
        return _json({"message": f"body uid {desired.uid} does not match the path"}, 422)
    services = _services(request)
    existing = services.runtime.get(uid)
    await authorize(request, Access("update", desired.namespace, name=desired.name))
    if existing is not None and existing.desired.namespace != desired.namespace:
        return _json({"message": "a sandbox cannot change namespace"}, 409)
    try:
        supervisor = services.runtime.put(desired)
    except ClaimRefused as error:
        return _json({"message": str(error)}, 409)
    return _json(_status(supervisor, services))


async def claim(request: web.Request) -> web.Response:
    """A pool member's running VM now serves the claimant (docs/pools.md)."""
    member_uid = request.match_info["uid"]
    body = await _body(request, ClaimRequest)
    claimant = body.sandbox
    await authorize(request, Access("update", claimant.namespace, name=claimant.name))
    member = await _known(request)
    services = _services(request)
    try:
        supervisor = await services.runtime.claim(member_uid, claimant, body.pool)
    except ClaimRefused as error:
        return _json({"message": str(error)}, 409)
    services.forget_target(member.uid)
    if services.status is not None:
        # The claimant's status (Running, pool) is stored before the operator hears of the
        # claim: it writes Ready from this answer, and Ready must not come first.
        await services.status.write_now(supervisor.sandbox_uid)
    return _json(_status(supervisor, services))


async def get_sandbox(request: web.Request) -> web.Response:
    supervisor = await _known(request)
    return _json(_status(supervisor, _services(request)))


async def delete_sandbox(request: web.Request) -> web.Response:
    uid = request.match_info["uid"]
    services = _services(request)
    supervisor = services.runtime.get(uid)
    if supervisor is None:
        await authorize(request, Access("update", ""))
        return web.Response(status=204)
    await authorize(
        request, Access("update", supervisor.desired.namespace, name=supervisor.desired.name)
    )
    key = supervisor.uid
    removals: dict[str, asyncio.Task[None]] = request.app[REMOVALS]
    task = removals.get(uid)
    if task is None:
        task = asyncio.create_task(services.runtime.remove(uid))
        removals[uid] = task

        def removed(_: asyncio.Task[None]) -> None:
            removals.pop(uid, None)
            services.forget(key, uid)

        task.add_done_callback(removed)
    done, _ = await asyncio.wait({task}, timeout=DELETE_PATIENCE)
    return web.Response(status=204 if done else 202)


async def verb(request: web.Request) -> web.Response:
    name = request.match_info["verb"]
    if name not in VERBS:
        raise web.HTTPNotFound(text=f"unknown verb {name}")
    supervisor = await _known(request)
    body: dict[str, Any] = {}
    if request.can_read_body:
        with contextlib.suppress(ValueError):
            body = await request.json() or {}
    if name == "stop":
        grace = body.get("gracePeriodSeconds")
        supervisor.stop(None if grace is None else float(grace))
    elif name == "start":
        if supervisor.handle is None and supervisor.phase not in (Phase.PULLING, Phase.BOOTING):
            supervisor.start()
    elif name == "kill":
        supervisor.kill()
    elif name == "drain":
        supervisor.drain()
    elif name == "pause":
        supervisor.pause()
    else:
        supervisor.resume()
    await asyncio.sleep(0)
    return _json(_status(supervisor, _services(request)), 202)


async def wait(request: web.Request) -> web.Response:
    supervisor = await _known(request)
    exit_status = await supervisor.wait()
    data = (
        exit_status.model_dump(mode="json", by_alias=True, exclude_none=True)
        if exit_status
        else None
    )
    return _json({"phase": supervisor.phase.value, "exitStatus": data})


async def sandbox_metrics(request: web.Request) -> web.Response:
    supervisor = await _known(request)
    services = _services(request)
    handle = supervisor.handle
    if handle is None:
        raise web.HTTPConflict(text=f"sandbox is {supervisor.phase.value}, not running")
    metrics = services.sampler.latest.get(supervisor.uid)
    if metrics is None:
        metrics = await services.sampler.sample(supervisor.uid, handle)
    return _json(metrics.model_dump(mode="json", by_alias=True, exclude_none=True))


async def node_metrics(request: web.Request) -> web.Response:
    await authorize(request, Access("get", ""))
    services = _services(request)
    phases: dict[str, int] = {}
    labelled = []
    for uid, supervisor in services.runtime.sandboxes.items():
        phases[supervisor.phase.value] = phases.get(supervisor.phase.value, 0) + 1
        metrics = services.sampler.latest.get(uid)
        if metrics is not None and supervisor.handle is not None:
            d = supervisor.desired
            labelled.append(
                prometheus.Labelled(d.namespace, d.name, supervisor.sandbox_uid, metrics)
            )
    text = prometheus.render(labelled, phases)
    return web.Response(body=text.encode(), headers={"Content-Type": prometheus.CONTENT_TYPE})


async def agent(request: web.Request) -> web.StreamResponse:
    supervisor = await _known(request, "create", "exec")
    if supervisor.desired.pool_member:
        raise web.HTTPConflict(text="an unclaimed pool VM serves nobody until it is claimed")
    if supervisor.handle is None and supervisor.sleeping():
        # idle-suspended: this connection is its next use (docs/suspend.md, "Idle suspend")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(supervisor.timing.ready_timeout + WAKE_MARGIN):
                await supervisor.wake()
    if supervisor.handle is None:
        raise web.HTTPConflict(text=f"sandbox is {supervisor.phase.value}, not running")
    relay = supervisor.handle.relay
    if relay.closed:
        raise web.HTTPServiceUnavailable(text="relay unavailable: the guest channel is closed")
    ws = web.WebSocketResponse(max_msg_size=8 << 20)
    await ws.prepare(request)
    await AgentBridge(ws).serve(relay)
    return ws


async def logs(request: web.Request) -> web.StreamResponse:
    """The sandbox log as Server-Sent Events (:mod:`kubesandbox_node.logs.stream`)."""
    supervisor = await _known(request, "get", "log")
    log = _services(request).logs.open(supervisor.uid, supervisor.dir)
    try:
        return await stream.serve(request, log)
    except stream.BadQuery as error:
        raise web.HTTPBadRequest(text=str(error)) from error


REMOVALS = web.AppKey("removals", dict[str, asyncio.Task[None]])


def make_app(services: Services) -> web.Application:
    app = web.Application(middlewares=[authenticate], client_max_size=16 << 20)
    app[SERVICES] = services
    app[REMOVALS] = {}

    async def background(app: web.Application) -> AsyncIterator[None]:
        async with app[SERVICES].running():
            yield

    app.cleanup_ctx.append(background)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", node_metrics)
    app.router.add_put("/v1/sandboxes/{uid}", put_sandbox)
    app.router.add_get("/v1/sandboxes/{uid}", get_sandbox)
    app.router.add_delete("/v1/sandboxes/{uid}", delete_sandbox)
    app.router.add_get("/v1/sandboxes/{uid}/wait", wait)
    app.router.add_get("/v1/sandboxes/{uid}/metrics", sandbox_metrics)
    app.router.add_get("/v1/sandboxes/{uid}/agent", agent)
    app.router.add_get("/v1/sandboxes/{uid}/logs", logs)
    app.router.add_post("/v1/sandboxes/{uid}/claim", claim)
    app.router.add_post("/v1/sandboxes/{uid}/{verb}", verb)
    app.router.add_put("/v1/snapshots/{uid}", put_snapshot)
    app.router.add_delete("/v1/snapshots/{uid}", delete_snapshot)
    return app
