"""The gateway's aiohttp application: who is calling, may they, and what it means for Sandboxes.

Every request goes through the same three steps before it touches anything:

1. **Authentication**: the bearer token becomes a user through TokenReview
   (:mod:`kubesandbox_kube.auth`); none or an invalid one is 401 ``unauthorized``.
2. **Namespace**: ``/ns/<namespace>/v1/...`` names it; without the prefix it is the namespace of
   the token's service account, and any other user is told to add the prefix (400).
3. **Authorization**: a SubjectAccessReview asks whether *that user* may do the verb on
   ``sandboxes`` (or ``sandboxes/exec``) in that namespace; no is 403 ``forbidden`` naming the
   user, verb, resource and namespace. Only then does the gateway read or write with its own
   credentials, and only the objects the reviewed request is about.

The gateway keeps no state: each route is a few reads and writes of the ``Sandbox`` (and, on
create, its companion Secret). Reads by name or id, and of node agent Leases, are served from
watch-backed copies of the apiserver's objects when those have them (``sandboxes``,
``leases``: no apiserver read per exec); writes always go to the apiserver. Clients whose
tokens keep failing are limited (:mod:`.ratelimit`). :mod:`.translate` owns the shape of
bodies; this module owns the HTTP contract (docs/gateway.md). Request bodies are hostile
input: bounded (1 MiB), parsed strictly, and only ever logged through
:func:`translate.redacted`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import structlog
from aiohttp import web

from kubesandbox_api.pool import POOL_LABEL
from kubesandbox_gateway import translate
from kubesandbox_gateway.errors import (
    GatewayError,
    error_response,
    from_kube,
    invalid_request,
    not_found,
    rate_limited,
    unreachable,
)
from kubesandbox_gateway.kubeapi import KubeApi, ObjectCache
from kubesandbox_gateway.nodeagents import node_agent_for
from kubesandbox_gateway.ratelimit import FailureLimiter
from kubesandbox_kube.auth import Access, Authenticator, ReviewUnavailable, TtlCache, User
from kubesandbox_kube.errors import Conflict, KubeError, NotFound
from kubesandbox_kube.informer import trim_common
from kubesandbox_kube.paths import SANDBOXES, SECRETS

JsonDict = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = structlog.get_logger("kubesandbox.gateway")

API_VERSION = "kubesandbox.dev/v1alpha1"
CREATED_BY = "kubesandbox.dev/created-by"
SANDBOX_LABEL = "kubesandbox.dev/sandbox"
AGENTS_NAMESPACE = "kubesandbox-system"
MAX_BODY = 1 << 20
MAX_WAIT = 90.0
WS_MAX_MESSAGE = 16 << 20
"""≥ 8 MiB: one agent frame (≤ 4 MiB + 9) always fits in one message, with room to spare."""
AGENT_CONNECT_TIMEOUT = 10.0
WAKE_CONNECT_TIMEOUT = 180.0
NODE_AGENT_TIMEOUT = 30.0
LIST_PAGE = 500
LOG_QUERY = frozenset({"sources", "follow", "tail", "cursor"})
"""What a log request may ask of the node agent (docs/gateway.md, "The sandbox log")."""
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
UID_CACHE_TTL = 300.0
LIST_INTERVAL = 1.0
"""Callers without namespace-wide rights list a namespace (by missing ids) at most this often."""
SNAPSHOT_RESOURCE = "sandboxsnapshots"
RUNNING = "Running"
TERMINAL_FAILURES = ("Failed", "Crashed")

NAMESPACE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
UID_RE = re.compile(r"^[0-9a-fA-F-]{1,64}$")
LABEL_KEY_RE = re.compile(
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
MAX_LABELS = 64


class GatewayAuth(Authenticator, Protocol):
    def remembers(self, token: str) -> bool:
        """Whether ``token`` was accepted lately (answered without a review)."""
        ...


@dataclass(frozen=True)
class Caller:
    user: User
    token: str
    namespace: str


CACHE_POLL = 0.05
"""How often a request waiting for ``running`` looks at the watch-backed cache."""


@dataclass
class Gateway:
    """The application's dependencies; :func:`make_app` serves them."""

    kube: KubeApi
    auth: GatewayAuth
    sandboxes: ObjectCache | None = None
    """Every Sandbox, kept by a watch (main.py); ``None``: always ask the apiserver."""
    leases: ObjectCache | None = None
    """The node agents' Leases, likewise."""
    limiter: FailureLimiter = field(default_factory=FailureLimiter)
    node_agent_ssl: ssl.SSLContext | None = None
    agents_namespace: str = AGENTS_NAMESPACE
    poll_interval: float = 0.5
    max_wait: float = MAX_WAIT
    _uids: TtlCache[tuple[str, str], str] = field(
        default_factory=lambda: TtlCache[tuple[str, str], str](UID_CACHE_TTL)
    )
    _listed: TtlCache[str, bool] = field(default_factory=lambda: TtlCache[str, bool](LIST_INTERVAL))
    _session: aiohttp.ClientSession | None = None
    _closing: set[asyncio.Task[None]] = field(default_factory=set)
    """Relays being closed after their handler ended (a close waits for the peer's answer)."""

    def remember(self, sandbox: JsonDict) -> None:
        metadata = sandbox.get("metadata") or {}
        if metadata.get("uid") and metadata.get("name") and metadata.get("namespace"):
            key = (str(metadata["namespace"]), str(metadata["uid"]))
            self._uids.put(key, str(metadata["name"]))

    # ---- the three steps ------------------------------------------------------------------

    async def caller(self, request: web.Request, verb: str = "") -> Caller:
        """Authenticates, resolves the namespace and, with ``verb``, authorizes it there."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise GatewayError(401, "unauthorized", "send Authorization: Bearer <token>")
        address = request.remote or "unknown"
        wait = self.limiter.retry_after(address)
        if wait and not self.auth.remembers(token):
            raise rate_limited(wait)
        user = await self.auth.authenticate(token)
        if user is None:
            self.limiter.failed(address)
            raise GatewayError(401, "unauthorized", "the bearer token is not valid")
        namespace = request.match_info.get("namespace") or user.service_account_namespace
        if namespace is None:
            raise invalid_request(
                f"user {user.name!r} is not a service account, so the namespace cannot be "
                "inferred: add /ns/<namespace> to the URL (MSB_API_URL=https://…/ns/<namespace>)"
            )
        if not NAMESPACE_RE.match(namespace):
            raise invalid_request(f"{namespace[:80]!r} is not a valid namespace name")
        caller = Caller(user, token, namespace)
        if verb:
            await self.allow(caller, Access(verb, namespace))
        return caller

    async def allow(self, caller: Caller, access: Access) -> None:
        if not await self.auth.authorize(caller.user, access):
            raise GatewayError(
                403, "forbidden", f"user {caller.user.name!r} may not {access.describe()}"
            )

    # ---- lookups --------------------------------------------------------------------------

    async def by_name(
        self, request: web.Request, verb: str, subresource: str = ""
    ) -> tuple[Caller, JsonDict]:
        name = request.match_info["name"]
        caller = await self.caller(request)
        if not NAME_RE.match(name):
            await self.allow(caller, Access(verb, caller.namespace, subresource=subresource))
            raise not_found(repr(name[:80]))
        await self.allow(caller, Access(verb, caller.namespace, subresource=subresource, name=name))
        sandbox = self.cached(caller.namespace, name)
        if sandbox is None:  # not seen by the watch (yet): the apiserver knows
            try:
                sandbox = await self.kube.get(SANDBOXES.in_namespace(caller.namespace).named(name))
            except KubeError as error:
                raise from_kube(error, what=repr(name)) from error
        self.remember(sandbox)  # the SDK's next calls on this handle use its id
        return caller, sandbox

    async def by_id(
        self, request: web.Request, verb: str, subresource: str = ""
    ) -> tuple[Caller, JsonDict]:
        """The sandbox whose ``metadata.uid`` is the route's id.

        The lookup uses the gateway's credentials, so its answer must not leak across RBAC:
        callers without the right get 403 whether or not the id exists. A caller allowed
        namespace-wide is answered at once; anyone else (``resourceNames`` grants, or no
        rights) is reviewed again with the sandbox's name, and their misses list the namespace
        at most once a second, so random ids cannot turn into a stream of lists.
        """
        caller = await self.caller(request)
        uid = request.match_info["id"]
        return caller, await self.sandbox_by_uid(caller, uid, verb, subresource)

    async def sandbox_by_uid(
        self, caller: Caller, uid: str, verb: str, subresource: str = ""
    ) -> JsonDict:
        """:meth:`by_id` for a uid that came from elsewhere than the route (a request body)."""
        broad = Access(verb, caller.namespace, subresource=subresource)
        wide = await self.auth.authorize(caller.user, broad)
        sandbox = None
        if UID_RE.match(uid):
            sandbox = await self.find_uid(caller.namespace, uid, throttled=not wide)
        if not wide:
            name = str(sandbox["metadata"]["name"]) if sandbox else ""
            await self.allow(
                caller, Access(verb, caller.namespace, subresource=subresource, name=name)
            )
        if sandbox is None:
            raise not_found(repr(uid[:80]))
        return sandbox

    def cached(self, namespace: str, name: str) -> JsonDict | None:
        """The watch's copy of a Sandbox, or ``None`` (not there, or no usable watch)."""
        if self.sandboxes is None or not self.sandboxes.ready:
            return None
        return self.sandboxes.get(namespace, name)

    async def find_uid(self, namespace: str, uid: str, *, throttled: bool) -> JsonDict | None:
        """From the watch's uid index when it is ready (no apiserver read); else O(1) when the
        uid was seen lately (cached uid → name, verified), else an O(n) list.

        Kubernetes cannot select custom objects by ``metadata.uid``, so the fallback lists the
        namespace page by page. The uid → name cache only ever saves a list: a hit is re-read by
        name and its uid compared, so a replaced sandbox of the same name is never mistaken for
        it. A miss in a ready watch still lists (the sandbox may be younger than the watch's
        last event), but at most once a second per namespace, whoever asks.
        """
        if self.sandboxes is not None and self.sandboxes.ready:
            hit = self.sandboxes.by_uid(uid)
            if hit is not None and hit["metadata"].get("namespace") == namespace:
                return hit
            throttled = True
        path = SANDBOXES.in_namespace(namespace)
        found, name = self._uids.lookup((namespace, uid))
        if found and name:
            try:
                sandbox = await self.kube.get(path.named(name))
            except NotFound:
                sandbox = None
            except KubeError as error:
                raise from_kube(error) from error
            if sandbox is not None and sandbox.get("metadata", {}).get("uid") == uid:
                return sandbox
        if throttled:
            if self._listed.lookup(namespace)[0]:
                return None  # listed within the last second: the uid was not there
            self._listed.put(namespace, True)
        params = {"limit": str(LIST_PAGE)}
        while True:
            try:
                page = await self.kube.request("GET", path, params=params)
            except KubeError as error:
                raise from_kube(error) from error
            for item in page.get("items") or []:
                metadata = item.get("metadata", {})
                self.remember(item)
                if metadata.get("uid") == uid:
                    return dict(item)
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return None
            params = {"limit": str(LIST_PAGE), "continue": str(token)}

    async def wait_running(self, sandbox: JsonDict, seconds: float) -> JsonDict:
        """Re-reads until Running, a failure of this generation, or ``seconds``; the last read.

        The SDK does not poll: it reads the status of the object we return. ``failed`` (with
        ``last_failure_message``) and ``starting`` both become clear SDK errors, so a failure
        or a timeout is answered 200 with the sandbox as it is (docs/gateway.md). With the
        watch-backed cache, the object is looked at every ``CACHE_POLL`` seconds there (a
        sandbox served by a warm pool is Running within a fraction of a second); the
        apiserver is still asked every ``poll_interval``, in case the watch lags. Running
        means usable: the phase (the node agent's) and the node (the operator's), since the
        SDK's first exec needs both and a claimed VM can report Running first.
        """
        metadata = sandbox["metadata"]
        path = SANDBOXES.in_namespace(metadata["namespace"]).named(metadata["name"])
        generation = int(metadata.get("generation") or 0)
        deadline = time.monotonic() + min(seconds, self.max_wait)
        cache = self.sandboxes
        tick = min(CACHE_POLL, self.poll_interval) if cache is not None else self.poll_interval
        asked = time.monotonic()
        while True:
            status = sandbox.get("status") or {}
            phase = status.get("phase")
            if phase == RUNNING and status.get("nodeName"):
                return sandbox  # usable: an exec finds its node agent
            observed = status.get("observedGeneration")
            if phase in TERMINAL_FAILURES and (observed is None or int(observed) >= generation):
                return sandbox
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return sandbox
            await asyncio.sleep(min(tick, remaining))
            if cache is not None and cache.ready:
                cached = cache.get(metadata["namespace"], metadata["name"])
                if cached and (cached.get("metadata") or {}).get("uid") == metadata.get("uid"):
                    sandbox = cached
            if time.monotonic() - asked < self.poll_interval:
                continue
            asked = time.monotonic()
            try:
                sandbox = await self.kube.get(path)
            except KubeError as error:
                raise from_kube(error, what=repr(metadata["name"])) from error

    async def set_state(self, caller: Caller, sandbox: JsonDict, state: str) -> JsonDict:
        name = sandbox["metadata"]["name"]
        patch = {"spec": {"lifecycle": {"state": state}}}
        try:
            return await self.kube.merge_patch(
                SANDBOXES.in_namespace(caller.namespace).named(name), patch
            )
        except KubeError as error:
            raise from_kube(error, what=repr(name)) from error

    # ---- routes: PROTOCOL.md §3 -----------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        caller = await self.caller(request, "create")
        body = await json_body(request)
        wait = wait_options(request)
        log.info(
            "create requested",
            user=caller.user.name,
            namespace=caller.namespace,
            body=translate.redacted(body),
        )
        secret_name = f"msb-secrets-{secrets.token_hex(5)}"
        try:
            translation = translate.sandbox_from_create(body, secret_name=secret_name)
        except translate.InvalidConfig as error:
            raise GatewayError(422, "invalid_sandbox_config", str(error)) from error
        if translation.snapshot is not None:  # reading the snapshot is a right of its own
            await self.allow(
                caller,
                Access(
                    "get", caller.namespace, resource=SNAPSHOT_RESOURCE, name=translation.snapshot
                ),
            )
        spec = json.loads(json.dumps(translation.spec))
        if request.query.get("start", "true").lower() == "false":
            spec.setdefault("lifecycle", {})["state"] = "Stopped"
        manifest = {
            "apiVersion": API_VERSION,
            "kind": "Sandbox",
            "metadata": {
                "name": translation.name,
                "namespace": caller.namespace,
                "labels": dict(translation.labels),
                "annotations": {**translation.annotations, CREATED_BY: caller.user.name},
            },
            "spec": spec,
        }
        secret_path = SECRETS.in_namespace(caller.namespace)
        if translation.secret_data:
            await self.create_secret(caller, secret_name, translation)
        try:
            created = await self.kube.create(SANDBOXES.in_namespace(caller.namespace), manifest)
        except KubeError as error:
            if translation.secret_data:
                with contextlib.suppress(KubeError):
                    await self.kube.delete(secret_path.named(secret_name))
            raise create_refusal(error, caller.namespace, translation.name) from error
        metadata = created["metadata"]
        self.remember(created)
        if translation.secret_data:
            await self.adopt_secret(caller, secret_name, created)
        log.info(
            "sandbox created",
            user=caller.user.name,
            namespace=caller.namespace,
            name=metadata["name"],
            uid=metadata["uid"],
        )
        if wait is not None:
            created = await self.wait_running(created, wait)
        answer = translate.sandbox_object(created)
        answer["spec"] = translate.redacted(body)
        return web.json_response(answer)

    async def create_secret(
        self, caller: Caller, secret_name: str, translation: translate.Translation
    ) -> None:
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": secret_name,
                "namespace": caller.namespace,
                "labels": {SANDBOX_LABEL: translation.name},
                "annotations": {CREATED_BY: caller.user.name},
            },
            "stringData": dict(translation.secret_data),
        }
        try:
            await self.kube.create(SECRETS.in_namespace(caller.namespace), secret)
        except KubeError as error:
            raise create_refusal(error, caller.namespace, translation.name) from error

    async def adopt_secret(self, caller: Caller, secret_name: str, sandbox: JsonDict) -> None:
        """The Sandbox owns its Secret, so the garbage collector removes both together."""
        metadata = sandbox["metadata"]
        owner = {
            "apiVersion": API_VERSION,
            "kind": "Sandbox",
            "name": metadata["name"],
            "uid": metadata["uid"],
            "blockOwnerDeletion": False,
        }
        patch = {"metadata": {"ownerReferences": [owner]}}
        try:
            await self.kube.merge_patch(
                SECRETS.in_namespace(caller.namespace).named(secret_name), patch
            )
        except KubeError as error:
            log.error(
                "companion secret not adopted; it will outlive its sandbox",
                namespace=caller.namespace,
                secret=secret_name,
                sandbox=metadata["name"],
                error=str(error),
            )

    async def list(self, request: web.Request) -> web.Response:
        caller = await self.caller(request, "list")
        params = {"limit": str(int_query(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT))}
        cursor = request.query.get("cursor")
        if cursor:
            if len(cursor) > 4096:
                raise invalid_request("cursor is too long")
            params["continue"] = cursor
        # A warm pool's unclaimed members are the pool's, not anybody's sandboxes (docs/pools.md).
        params["labelSelector"] = ",".join(
            term for term in (label_selector(request.query.get("labels")), f"!{POOL_LABEL}") if term
        )
        try:
            page = await self.kube.request(
                "GET", SANDBOXES.in_namespace(caller.namespace), params=params
            )
        except KubeError as error:
            raise from_kube(error) from error
        data = []
        for item in page.get("items") or []:
            self.remember(item)
            try:
                data.append(translate.sandbox_object(item))
            except (KeyError, TypeError, ValueError) as error:
                # The SDK fails a whole list on one bad item: leave it out, and say so.
                name = (item.get("metadata") or {}).get("name")
                log.warning("sandbox left out of a list", name=name, error=repr(error))
        next_cursor = (page.get("metadata") or {}).get("continue") or None
        return web.json_response({"data": data, "next_cursor": next_cursor})

    async def get_by_name(self, request: web.Request) -> web.Response:
        _, sandbox = await self.by_name(request, "get")
        return web.json_response(translate.sandbox_object(sandbox))

    async def get_by_id(self, request: web.Request) -> web.Response:
        _, sandbox = await self.by_id(request, "get")
        return web.json_response(translate.sandbox_object(sandbox))

    async def by_route(self, request: web.Request, verb: str) -> tuple[Caller, JsonDict]:
        """By name or by id, whichever the route carries (the SDK's static ``Sandbox.start(name)``
        posts to ``by-name/{name}/start``, a handle to ``{id}/start``)."""
        if "name" in request.match_info:
            return await self.by_name(request, verb)
        return await self.by_id(request, verb)

    async def start(self, request: web.Request) -> web.Response:
        caller, sandbox = await self.by_route(request, "update")
        wait = wait_options(request)
        patched = await self.set_state(caller, sandbox, RUNNING)
        if wait is not None:
            patched = await self.wait_running(patched, wait)
        return web.json_response(translate.sandbox_object(patched))

    async def stop(self, request: web.Request) -> web.Response:
        """Stopped, also for ephemeral sandboxes: deleting one here would turn the SDK's poll
        for ``stopped`` into ``SandboxNotFoundError`` (docs/gateway.md, "Ephemeral")."""
        caller, sandbox = await self.by_route(request, "update")
        return web.json_response(
            translate.sandbox_object(await self.set_state(caller, sandbox, "Stopped"))
        )

    async def delete_by_name(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        caller = await self.caller(request)
        await self.allow(caller, Access("delete", caller.namespace, name=name))
        if not NAME_RE.match(name):
            raise not_found(repr(name[:80]))
        return await self.delete(caller, name, uid=None)

    async def delete_by_id(self, request: web.Request) -> web.Response:
        caller, sandbox = await self.by_id(request, "delete")
        metadata = sandbox["metadata"]
        return await self.delete(caller, metadata["name"], uid=metadata["uid"])

    async def delete(self, caller: Caller, name: str, *, uid: str | None) -> web.Response:
        try:
            await self.kube.delete(SANDBOXES.in_namespace(caller.namespace).named(name), uid=uid)
        except Conflict as error:
            # The uid precondition failed: the sandbox of that id is gone (a new one has its name).
            raise not_found(repr(uid)) from error
        except KubeError as error:
            raise from_kube(error, what=repr(name)) from error
        gone = await self.wait_gone(caller.namespace, name, uid)
        log.info(
            "sandbox deleted" if gone else "sandbox deleting",
            user=caller.user.name,
            namespace=caller.namespace,
            name=name,
        )
        # The SDK decodes a CloudMessageResponse here (a sandbox object fails to decode).
        what = "deleted" if gone else f"being deleted (still there after {self.max_wait:.0f}s)"
        return web.json_response({"message": f"sandbox {name} {what}"})

    async def wait_gone(self, namespace: str, name: str, uid: str | None) -> bool:
        """Until the Sandbox (of ``uid``, when given) no longer exists, at most ``max_wait``.

        A delete returns while the finalizer runs (the node agent stops the VM and removes its
        files); the SDK treats ``remove`` as done, and a script that creates the same name
        right after would get ``SandboxAlreadyExists``. So removal answers once it is over.
        """
        path = SANDBOXES.in_namespace(namespace).named(name)
        deadline = time.monotonic() + self.max_wait
        while time.monotonic() < deadline:
            try:
                current = await self.kube.get(path)
            except NotFound:
                return True
            except KubeError as error:
                raise from_kube(error, what=repr(name)) from error
            if uid is not None and current["metadata"].get("uid") != uid:
                return True
            await asyncio.sleep(self.poll_interval)
        return False

    # ---- kubesandbox extensions -----------------------------------------------------------

    async def pause(self, request: web.Request) -> web.Response:
        caller, sandbox = await self.by_id(request, "update")
        return web.json_response(
            translate.sandbox_object(await self.set_state(caller, sandbox, "Paused"))
        )

    async def suspend(self, request: web.Request) -> web.Response:
        caller, sandbox = await self.by_id(request, "update")
        return web.json_response(
            translate.sandbox_object(await self.set_state(caller, sandbox, "Suspended"))
        )

    async def resume(self, request: web.Request) -> web.Response:
        caller, sandbox = await self.by_id(request, "update")
        return web.json_response(
            translate.sandbox_object(await self.set_state(caller, sandbox, RUNNING))
        )

    async def kill(self, request: web.Request) -> web.Response:
        return await self.forward(request, "POST", "kill", "update")

    async def drain(self, request: web.Request) -> web.Response:
        return await self.forward(request, "POST", "drain", "update")

    async def metrics(self, request: web.Request) -> web.Response:
        return await self.forward(request, "GET", "metrics", "get")

    async def forward(
        self, request: web.Request, method: str, verb: str, rbac: str
    ) -> web.Response:
        """One node agent verb for one sandbox, with the caller's own token."""
        caller, sandbox = await self.by_id(request, rbac)
        agent = await node_agent_for(self.kube, self.agents_namespace, sandbox, self.leases)
        url = agent.url(sandbox["metadata"]["uid"], verb)
        headers = {"Authorization": f"Bearer {caller.token}"}
        try:
            async with self.session.request(
                method,
                url,
                json={} if method == "POST" else None,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=NODE_AGENT_TIMEOUT),
                ssl=agent.pinned_ssl or True,
            ) as response:
                text = (await response.content.read(MAX_BODY)).decode(errors="replace")
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise unreachable(
                f"the node agent of node {agent.node} is unreachable: {error!r}"
            ) from error
        if status >= 400:
            raise node_agent_refusal(status, text, agent.node)
        try:
            payload = json.loads(text) if text.strip() else {}
        except ValueError as error:
            raise unreachable(f"the node agent of node {agent.node} answered no JSON") from error
        return web.json_response(payload)

    # ---- the sandbox log ------------------------------------------------------------------

    async def logs(self, request: web.Request) -> web.StreamResponse:
        """The sandbox log, streamed from its node agent as it comes (Server-Sent Events).

        The node agent owns the format (the SDK's, docs/msb-compat.md §7) and the query
        (``sources``, ``follow``, ``tail``, ``Last-Event-ID``); the gateway checks ``get
        sandboxes/log``, forwards the caller's token and passes the bytes through. Every
        failure before the first byte is an HTTP error the SDK shows (404, 409, 502, 400)."""
        caller, sandbox = await self.by_id(request, "get", "log")
        agent = await node_agent_for(self.kube, self.agents_namespace, sandbox, self.leases)
        url = agent.url(sandbox["metadata"]["uid"], "logs")
        headers = {"Authorization": f"Bearer {caller.token}", "Accept": "text/event-stream"}
        if "Last-Event-ID" in request.headers:
            headers["Last-Event-ID"] = request.headers["Last-Event-ID"][:200]
        query = {k: v[:200] for k, v in request.query.items() if k in LOG_QUERY}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=AGENT_CONNECT_TIMEOUT)
        response: web.StreamResponse | None = None
        try:
            async with self.session.get(
                url, params=query, headers=headers, timeout=timeout, ssl=agent.pinned_ssl or True
            ) as upstream:
                if upstream.status >= 400:
                    text = (await upstream.content.read(MAX_BODY)).decode(errors="replace")
                    if upstream.status == 400:
                        raise invalid_request(text.strip()[:500])
                    raise node_agent_refusal(upstream.status, text, agent.node)
                response = web.StreamResponse(
                    headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
                )
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            if response is not None:
                return response  # either side went away mid-stream: end it there
            raise unreachable(
                f"the node agent of node {agent.node} is unreachable: {error!r}"
            ) from error
        await response.write_eof()
        return response

    # ---- the agent WebSocket --------------------------------------------------------------

    async def agent(self, request: web.Request) -> web.StreamResponse:
        """Pipes the caller's WebSocket to the relay of the sandbox's node agent.

        The downstream socket is opened first, so every failure (node agent down, refused
        token, unknown sandbox) is an HTTP error before the upgrade, which the SDK reports with
        our message. Frames may be split across messages: bytes are forwarded as they come.
        """
        caller, sandbox = await self.by_id(request, "create", "exec")
        name = sandbox["metadata"]["name"]
        phase = (sandbox.get("status") or {}).get("phase")
        sleeping = translate.sleeping(sandbox)
        if phase != RUNNING and not sleeping:
            raise GatewayError(
                409,
                "sandbox_not_running",
                f"sandbox {name} is {phase or 'not started'}, not Running",
            )
        agent = await node_agent_for(self.kube, self.agents_namespace, sandbox, self.leases)
        url = agent.url(sandbox["metadata"]["uid"], "agent")
        try:
            upstream = await asyncio.wait_for(
                self.session.ws_connect(
                    url,
                    headers={"Authorization": f"Bearer {caller.token}"},
                    max_msg_size=WS_MAX_MESSAGE,
                    autoping=True,
                    ssl=agent.pinned_ssl or True,
                ),
                # the node agent answers the upgrade once a sleeping sandbox is restored
                WAKE_CONNECT_TIMEOUT if sleeping else AGENT_CONNECT_TIMEOUT,
            )
        except aiohttp.WSServerHandshakeError as error:
            raise node_agent_refusal(error.status, error.message, agent.node) from error
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise unreachable(
                f"the node agent of node {agent.node} is unreachable: {error!r}"
            ) from error
        client = web.WebSocketResponse(max_msg_size=WS_MAX_MESSAGE, autoping=True)
        try:
            await client.prepare(request)
            await pipe(client, upstream)
        finally:
            # aiohttp cancels this handler when the client drops its connection (the SDK does,
            # after each call): the relay slot is still given back, and a shutdown waits for it.
            closing = asyncio.ensure_future(close_both(client, upstream))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
            await asyncio.shield(closing)
        return client

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the gateway's node agent session is not open")
        return self._session

    async def node_agent_session(self, app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(ssl=self.node_agent_ssl or True)
        async with aiohttp.ClientSession(connector=connector) as session:
            self._session = session
            yield
            # Relays still closing finish first: a socket the session no longer tracks (a
            # WebSocket's) would otherwise outlive the event loop.
            await asyncio.gather(*self._closing, return_exceptions=True)
            self._session = None


async def close_both(
    client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse
) -> None:
    with contextlib.suppress(aiohttp.ClientError, OSError, RuntimeError):
        await upstream.close()
    with contextlib.suppress(aiohttp.ClientError, OSError, RuntimeError):
        await client.close()


async def pipe(client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse) -> None:
    """Binary messages both ways until either side closes, then both are closed."""

    Socket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse

    async def forward(source: Socket, sink: Socket) -> None:
        async for message in source:
            if message.type == aiohttp.WSMsgType.BINARY:
                await sink.send_bytes(message.data)
            elif message.type == aiohttp.WSMsgType.TEXT:
                await sink.send_str(message.data)
            else:
                return

    tasks = [
        asyncio.ensure_future(forward(upstream, client)),
        asyncio.ensure_future(forward(client, upstream)),
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.info("agent pipe ended by an error", error=repr(task.exception()))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def create_refusal(error: KubeError, namespace: str, name: str) -> GatewayError:
    if isinstance(error, NotFound):  # the namespace itself
        return invalid_request(f"namespace {namespace!r} does not exist")
    return from_kube(error, what=repr(name))


def node_agent_refusal(status: int, message: str, node: str) -> GatewayError:
    detail = message.strip()[:500]
    if status in (401, 403):
        return GatewayError(403, "forbidden", f"the node agent refused the caller: {detail}")
    if status == 404:
        return GatewayError(
            404, "sandbox_not_found", f"the node agent of node {node} does not know it"
        )
    if status == 409:
        return GatewayError(409, "sandbox_not_running", detail)
    return unreachable(f"the node agent of node {node} answered {status}: {detail}")


def trim_sandbox(sandbox: JsonDict) -> JsonDict:
    """What the gateway's Sandbox cache keeps of an object: everything its answers use.
    Scripts and patches (up to megabytes, never echoed to the SDK) are left out, as are
    ``managedFields`` and kubectl's last-applied copy (:func:`trim_common`)."""
    trimmed = trim_common(sandbox)
    spec = trimmed.get("spec")
    if isinstance(spec, dict) and ("scripts" in spec or "patches" in spec):
        trimmed["spec"] = {k: v for k, v in spec.items() if k not in ("scripts", "patches")}
    return trimmed


# ---- request parsing ----------------------------------------------------------------------


async def json_body(request: web.Request) -> JsonDict:
    raw = await request.read()
    try:
        body = json.loads(raw) if raw.strip() else None
    except ValueError as error:
        raise invalid_request(f"the body is not JSON: {error}") from error
    if not isinstance(body, dict):
        raise invalid_request("the body must be a JSON object")
    return body


def int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as error:
        raise invalid_request(f"{name} must be an integer, not {raw[:40]!r}") from error
    if not low <= value <= high:
        raise invalid_request(f"{name} must be between {low} and {high}")
    return value


def wait_options(request: web.Request) -> float | None:
    """Seconds to hold the request for ``running``, or ``None`` when not asked to wait."""
    wait_for = request.query.get("wait_for")
    if not wait_for:
        return None
    if wait_for != "running":
        raise invalid_request(f"wait_for must be 'running', not {wait_for[:40]!r}")
    raw = request.query.get("wait_timeout")
    if raw is None or raw == "":
        return MAX_WAIT
    try:
        seconds = float(raw)
    except ValueError as error:
        raise invalid_request(f"wait_timeout must be a number, not {raw[:40]!r}") from error
    if not 0 <= seconds < float("inf"):
        raise invalid_request("wait_timeout must be a non-negative number of seconds")
    return min(seconds, MAX_WAIT)


def label_selector(raw: str | None) -> str:
    """``labels`` (a JSON object of exact matches) as a Kubernetes label selector."""
    if not raw:
        return ""
    if len(raw) > 16384:
        raise invalid_request("labels is too long")
    try:
        labels = json.loads(raw)
    except ValueError as error:
        raise invalid_request(f"labels must be a JSON object: {error}") from error
    if not isinstance(labels, dict) or len(labels) > MAX_LABELS:
        raise invalid_request(f"labels must be a JSON object of at most {MAX_LABELS} entries")
    terms = []
    for key, value in sorted(labels.items()):
        if not isinstance(value, str) or not LABEL_KEY_RE.match(key):
            raise invalid_request(
                f"labels: {key[:80]!r} is not a valid label key with a string value"
            )
        if not LABEL_VALUE_RE.match(value):
            raise invalid_request(f"labels: {value[:80]!r} is not a valid value for {key!r}")
        terms.append(f"{key}={value}")
    return ",".join(terms)


# ---- the application ----------------------------------------------------------------------

GATEWAY = web.AppKey("gateway", Gateway)


def status_code(status: int) -> str:
    return {
        400: "invalid_request",
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        413: "invalid_request",
    }.get(status, "invalid_request" if status < 500 else "internal_error")


@web.middleware
async def errors_and_access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every refusal as ``{"error": {code, message}}``, and one log line per request."""
    started = time.monotonic()
    response: web.StreamResponse
    try:
        response = await handler(request)
    except GatewayError as error:
        response = error.response()
    except ReviewUnavailable as error:
        log.warning("credentials cannot be checked", error=str(error))
        response = unreachable(
            "the Kubernetes API cannot review the credentials right now; try again"
        ).response()
    except KubeError as error:
        response = from_kube(error).response()
    except web.HTTPException as error:
        if error.status < 400:
            raise
        response = error_response(error.status, status_code(error.status), error.reason)
    except asyncio.CancelledError:
        # The client went away (aiohttp cancels the handler); say so, then let it unwind.
        log.info(
            "request",
            method=request.method,
            path=request.path,
            status="client gone",
            seconds=round(time.monotonic() - started, 3),
        )
        raise
    except Exception:
        log.exception("request failed", method=request.method, path=request.path)
        response = error_response(500, "internal_error", "the gateway failed; see its log")
    log.info(
        "request",
        method=request.method,
        path=request.path,
        status=response.status,
        seconds=round(time.monotonic() - started, 3),
    )
    return response
