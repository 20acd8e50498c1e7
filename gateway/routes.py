"""The gateway's routes: every handler of :mod:`.app` and :mod:`.snapshots` at ``/v1/...`` and
at ``/ns/{namespace}/v1/...``, and ``/healthz``."""

from __future__ import annotations

from aiohttp import web

from kubesandbox_gateway.app import GATEWAY, MAX_BODY, Gateway, Handler, errors_and_access_log
from kubesandbox_gateway.snapshots import SnapshotRoutes


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def make_app(gateway: Gateway) -> web.Application:
    """Every route at ``/v1/...`` and at ``/ns/{namespace}/v1/...``."""
    app = web.Application(client_max_size=MAX_BODY, middlewares=[errors_and_access_log])
    app[GATEWAY] = gateway
    app.cleanup_ctx.append(gateway.node_agent_session)
    app.router.add_get("/healthz", healthz)
    routes: list[tuple[str, str, Handler]] = [
        ("POST", "/v1/sandboxes", gateway.create),
        ("GET", "/v1/sandboxes", gateway.list),
        ("GET", "/v1/sandboxes/by-name/{name}", gateway.get_by_name),
        ("DELETE", "/v1/sandboxes/by-name/{name}", gateway.delete_by_name),
        ("GET", "/v1/sandboxes/{id}", gateway.get_by_id),
        ("DELETE", "/v1/sandboxes/{id}", gateway.delete_by_id),
        ("POST", "/v1/sandboxes/by-name/{name}/start", gateway.start),
        ("POST", "/v1/sandboxes/by-name/{name}/stop", gateway.stop),
        ("POST", "/v1/sandboxes/{id}/start", gateway.start),
        ("POST", "/v1/sandboxes/{id}/stop", gateway.stop),
        ("POST", "/v1/sandboxes/{id}/pause", gateway.pause),
        ("POST", "/v1/sandboxes/{id}/resume", gateway.resume),
        ("POST", "/v1/sandboxes/{id}/suspend", gateway.suspend),
        ("POST", "/v1/sandboxes/{id}/kill", gateway.kill),
        ("POST", "/v1/sandboxes/{id}/drain", gateway.drain),
        ("GET", "/v1/sandboxes/{id}/metrics", gateway.metrics),
        ("GET", "/v1/sandboxes/{id}/agent", gateway.agent),
        ("GET", "/v1/sandboxes/{id}/logs", gateway.logs),
        *SnapshotRoutes(gateway).routes(),
    ]
    for prefix in ("", "/ns/{namespace}"):
        for method, path, handler in routes:
            app.router.add_route(method, prefix + path, handler)
    return app
