"""A small asyncio Kubernetes client: JSON in, JSON out, typed errors.

Deliberately thin: each caller works with plain object bodies (``dict``) and its own pydantic
models; this class only knows paths, verbs, content types and how to map failures. Server-side
apply (:meth:`apply`) is how every component writes the status fields it owns.
"""

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from kubesandbox_kube import config
from kubesandbox_kube.errors import KubeError, from_status
from kubesandbox_kube.paths import ResourcePath

JsonDict = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"  # JSON is valid YAML


class KubeClient:
    """One client per process; open it with :meth:`connect`."""

    def __init__(self, credentials: config.Credentials, session: aiohttp.ClientSession) -> None:
        self.credentials = credentials
        self._session = session

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, kubeconfig: Path | None = None, *, request_timeout: float = 30.0
    ) -> AsyncIterator["KubeClient"]:
        credentials = config.load(kubeconfig)
        headers = {"Accept": "application/json"}
        connector = aiohttp.TCPConnector(ssl=credentials.ssl_context)
        async with aiohttp.ClientSession(
            base_url=credentials.server,
            headers=headers,
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=request_timeout),
        ) as session:
            yield cls(credentials, session)

    @property
    def default_namespace(self) -> str:
        return self.credentials.default_namespace

    async def request(
        self,
        method: str,
        path: ResourcePath | str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> JsonDict:
        url = path.url if isinstance(path, ResourcePath) else path
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        authorization = self.credentials.current_authorization()
        if authorization:
            headers["Authorization"] = authorization
        try:
            async with self._session.request(
                method, url, data=data, params=params, headers=headers
            ) as response:
                text = await response.text()
                parsed = _json_or_none(text)
                if response.status >= 400:
                    raise from_status(response.status, parsed, text.strip()[:500])
                return parsed or {}
        except (aiohttp.ClientError, TimeoutError) as error:
            raise KubeError(0, "Unreachable", f"{method} {url}: {error!r}") from error

    async def get(self, path: ResourcePath) -> JsonDict:
        return await self.request("GET", path)

    @asynccontextmanager
    async def stream(
        self, path: ResourcePath, *, params: Mapping[str, str], read_timeout: float
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """A long GET (a watch) as its lines; only a silence of ``read_timeout`` ends it early.

        Lines are split here rather than with ``readline()``, whose limit (128 KiB) is smaller
        than a Secret or ConfigMap may be."""
        headers = {}
        authorization = self.credentials.current_authorization()
        if authorization:
            headers["Authorization"] = authorization
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=read_timeout)
        try:
            async with self._session.get(
                path.url, params=params, headers=headers, timeout=timeout
            ) as response:
                if response.status >= 400:
                    text = await response.text()
                    raise from_status(response.status, _json_or_none(text), text.strip()[:500])
                try:
                    yield _lines(response.content)
                except BaseException:
                    # A watch given up half-way (cancelled, timed out, its reader failed) is
                    # dropped at once: TLS's polite close needs the event loop to run on, and
                    # at a shutdown its socket outlived the loop (a leaked file descriptor).
                    connection = response.connection
                    if connection is not None and connection.transport is not None:
                        connection.transport.abort()
                    raise
        except (aiohttp.ClientError, TimeoutError) as error:
            raise KubeError(0, "Unreachable", f"GET {path.url} (stream): {error!r}") from error

    async def list(
        self, path: ResourcePath, *, label_selector: str | None = None
    ) -> list[JsonDict]:
        params = {"labelSelector": label_selector} if label_selector else None
        items = (await self.request("GET", path, params=params)).get("items", [])
        return [dict(item) for item in items]

    async def create(self, path: ResourcePath, body: Mapping[str, Any]) -> JsonDict:
        return await self.request("POST", path, body=body)

    async def delete(
        self, path: ResourcePath, *, uid: str | None = None, grace_seconds: int | None = None
    ) -> JsonDict:
        """Deletes; with ``uid``, only that incarnation of the object (a precondition);
        ``grace_seconds=0`` removes a Pod at once (its kubelet is gone or absent)."""
        body: JsonDict = {}
        if uid:
            body["preconditions"] = {"uid": uid}
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
        return await self.request("DELETE", path, body=body or None)

    async def merge_patch(self, path: ResourcePath, body: Mapping[str, Any]) -> JsonDict:
        return await self.request("PATCH", path, body=body, content_type=MERGE_PATCH)

    async def apply(
        self, path: ResourcePath, body: Mapping[str, Any], *, field_manager: str
    ) -> JsonDict:
        """Server-side apply as ``field_manager``: the apiserver merges what each manager owns."""
        params = {"fieldManager": field_manager, "force": "true"}
        return await self.request("PATCH", path, body=body, params=params, content_type=APPLY_PATCH)


def _json_or_none(text: str) -> JsonDict | None:
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


async def _lines(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    parts: list[bytes] = []
    async for chunk in content.iter_any():
        if b"\n" not in chunk:
            parts.append(chunk)  # a long line in pieces: joined once, when it ends
            continue
        *complete, rest = b"".join([*parts, chunk]).split(b"\n")
        parts = [rest]
        for line in complete:
            if line.strip():
                yield line
    if b"".join(parts).strip():
        yield b"".join(parts)
