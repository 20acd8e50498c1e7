"""Who the caller is and where the gateway is: credentials, namespace, discovery, REST calls.

Everything goes to the gateway with the caller's own bearer token (from ``--token`` or their
kubeconfig user: a token, a token file or an exec plugin). The apiserver is only asked where
the gateway is (the Service ``kubesandbox-gateway`` in ``kubesandbox-system``).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from kubesandbox_cli.errors import CliError
from kubesandbox_kube import config
from kubesandbox_kube.client import KubeClient
from kubesandbox_kube.errors import KubeError, NotFound
from kubesandbox_protocol.client import AgentClient, AgentConnectError

GATEWAY_ENV = "KUBESANDBOX_GATEWAY"
GATEWAY_NAMESPACE = "kubesandbox-system"
GATEWAY_SERVICE = "kubesandbox-gateway"
URL_ANNOTATION = "kubesandbox.dev/url"
PASS_GATEWAY = f"pass --gateway URL or set ${GATEWAY_ENV} (e.g. --gateway http://127.0.0.1:8080)"

JsonDict = dict[str, Any]


@dataclass(frozen=True)
class Target:
    """Global flags, as given on the command line."""

    kubeconfig: Path | None = None
    context: str | None = None
    namespace: str | None = None
    gateway: str | None = None
    token: str | None = None


def load_credentials(target: Target) -> config.Credentials | None:
    """The kubeconfig's credentials; None when ``--token`` and ``--gateway`` make it unneeded
    and there is no kubeconfig to read."""
    try:
        return config.load(target.kubeconfig, target.context)
    except config.ConfigError as error:
        if target.token and (target.gateway or os.environ.get(GATEWAY_ENV)):
            return None
        raise CliError(str(error)) from error
    except OSError as error:
        raise CliError(f"cannot read credentials: {error}") from error


def authorization(target: Target, credentials: config.Credentials | None) -> str:
    """The ``Authorization`` header the gateway gets, or a clear refusal."""
    if target.token:
        return f"Bearer {target.token}"
    if credentials is not None and credentials.authorization:
        return credentials.authorization
    namespace = namespace_of(target, credentials)
    if credentials is not None and credentials.client_certificate:
        raise CliError(
            f"your kubeconfig user {credentials.user!r} signs in with a client certificate, but "
            "the gateway accepts bearer tokens only (until kubesandbox has an aggregated API). "
            "Get a token for a service account allowed to use sandboxes, e.g. "
            f"`kubectl create token <serviceaccount> -n {namespace}`, and pass it with "
            "--token TOKEN or put it in a kubeconfig user (`token:`)"
        )
    raise CliError(
        "no bearer token: your kubeconfig user has neither a token nor an exec plugin; "
        f"pass --token TOKEN (e.g. from `kubectl create token <serviceaccount> -n {namespace}`)"
    )


def namespace_of(target: Target, credentials: config.Credentials | None) -> str:
    if target.namespace:
        return target.namespace
    if credentials is not None:
        return credentials.default_namespace
    return "default"


async def discover_gateway(target: Target, credentials: config.Credentials | None) -> str:
    """``--gateway``, else ``$KUBESANDBOX_GATEWAY``, else the gateway Service's address."""
    if target.gateway:
        return target.gateway.rstrip("/")
    if os.environ.get(GATEWAY_ENV):
        return os.environ[GATEWAY_ENV].rstrip("/")
    if credentials is None:
        raise CliError(f"cannot find the gateway without a kubeconfig; {PASS_GATEWAY}")
    headers = {"Accept": "application/json"}
    if credentials.authorization:
        headers["Authorization"] = credentials.authorization
    where = f"Service {GATEWAY_NAMESPACE}/{GATEWAY_SERVICE}"
    try:
        async with aiohttp.ClientSession(
            base_url=credentials.server,
            headers=headers,
            connector=aiohttp.TCPConnector(ssl=credentials.ssl_context),
            timeout=aiohttp.ClientTimeout(total=15),
        ) as session:
            service = await KubeClient(credentials, session).request(
                "GET", f"/api/v1/namespaces/{GATEWAY_NAMESPACE}/services/{GATEWAY_SERVICE}"
            )
    except NotFound as error:
        raise CliError(f"there is no {where} in this cluster; {PASS_GATEWAY}") from error
    except KubeError as error:
        raise CliError(f"cannot read {where} ({error}); {PASS_GATEWAY}") from error
    url = service_url(service)
    if url is None:
        raise CliError(f"{where} has no address (no annotation {URL_ANNOTATION}); {PASS_GATEWAY}")
    return url


def service_url(service: Mapping[str, Any]) -> str | None:
    """The gateway URL a Service advertises: its annotation, else a load balancer, else its
    cluster IP, with its first port."""
    annotations = (service.get("metadata") or {}).get("annotations") or {}
    if annotations.get(URL_ANNOTATION):
        return str(annotations[URL_ANNOTATION]).rstrip("/")
    spec = service.get("spec") or {}
    ports = spec.get("ports") or []
    port = int(ports[0]["port"]) if ports else 80
    ingress = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    host = None
    if ingress:
        host = ingress[0].get("ip") or ingress[0].get("hostname")
    if not host and spec.get("clusterIP") not in (None, "", "None"):
        host = spec["clusterIP"]
    if not host:
        return None
    if ":" in str(host):
        host = f"[{host}]"
    scheme = "https" if port == 443 else "http"
    return f"{scheme}://{host}:{port}"


class Gateway:
    """REST calls to one namespace of the gateway, with the caller's token."""

    def __init__(self, base: str, namespace: str, authorization: str) -> None:
        self.base = base
        self.namespace = namespace
        self.prefix = f"{base}/ns/{quote(namespace, safe='')}"
        self.headers = {"Authorization": authorization, "Accept": "application/json"}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Gateway:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=150))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use Gateway as an async context manager"
        return self._session

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> JsonDict:
        url = f"{self.prefix}{path}"
        try:
            async with self.session.request(
                method, url, params=params, json=body, headers=self.headers
            ) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            raise CliError(
                f"cannot reach the gateway at {self.base} ({error!r}); {PASS_GATEWAY}"
            ) from error
        parsed = _json(text)
        if status >= 400:
            raise self.error(status, parsed, text)
        return parsed if isinstance(parsed, dict) else {}

    def error(self, status: int, parsed: Any, text: str) -> CliError:
        code, message = "", text.strip()[:300] or f"HTTP {status}"
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            code = str(parsed["error"].get("code") or "")
            message = str(parsed["error"].get("message") or message)
        if status == 401:
            return CliError(
                f"the gateway did not accept your credentials (401 Unauthorized): {message}",
                http_status=status,
                code=code,
            )
        if status == 403:
            return CliError(
                f"forbidden in namespace {self.namespace!r} (403): {message}",
                http_status=status,
                code=code,
            )
        return CliError(message, http_status=status, code=code)

    async def events(
        self, path: str, *, params: Mapping[str, str] | None = None
    ) -> AsyncIterator[JsonDict]:
        """A Server-Sent Events stream (the sandbox log): each ``data`` of an event, parsed,
        with its ``id`` as ``"id"``; until the gateway ends it (no time limit: ``-f``)."""
        url = f"{self.prefix}{path}"
        headers = {**self.headers, "Accept": "text/event-stream"}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
        try:
            async with self.session.get(
                url, params=params, headers=headers, timeout=timeout
            ) as response:
                if response.status >= 400:
                    text = await response.text()
                    raise self.error(response.status, _json(text), text)
                fields: dict[str, str] = {}
                pending = b""
                # Split lines here: readline() refuses lines over 128 KiB, and one entry of
                # 64 KiB of output can be longer than that once escaped as JSON.
                async for chunk in response.content.iter_any():
                    *lines, pending = (pending + chunk).split(b"\n")
                    for raw in lines:
                        line = raw.decode(errors="replace").rstrip("\r")
                        if line:
                            name, _, value = line.partition(":")
                            fields[name] = value.removeprefix(" ")
                            continue
                        data = _json(fields.get("data", ""))
                        if isinstance(data, dict):
                            yield {**data, "id": fields.get("id")}
                        fields = {}
        except (aiohttp.ClientError, TimeoutError) as error:
            raise CliError(f"the log stream from {self.base} broke off ({error!r})") from error

    async def sandbox(self, name: str) -> JsonDict:
        return await self.call("GET", f"/v1/sandboxes/by-name/{quote(name, safe='')}")

    async def agent(self, sandbox: Mapping[str, Any]) -> AgentClient:
        ws = self.prefix.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        url = f"{ws}/v1/sandboxes/{quote(str(sandbox['id']), safe='')}/agent"
        try:
            return await AgentClient.connect_websocket(url, headers=self.headers)
        except AgentConnectError as error:
            if error.status == 401:
                raise self.error(401, None, "the agent connection needs a valid token") from error
            if error.status == 403:
                raise self.error(
                    403, None, f"you may not exec in sandbox {sandbox.get('name')!r}"
                ) from error
            if error.status:
                raise CliError(
                    f"the gateway refused a connection to sandbox {sandbox.get('name')!r} "
                    f"(HTTP {error.status})"
                ) from error
            raise CliError(f"cannot reach the gateway at {self.base}: {error}") from error


def _json(text: str) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None
