"""A small OCI distribution (registry v2) client on aiohttp: manifests, blobs, auth.

Why our own client rather than shelling out to skopeo for every pull (see docs/storage.md): we
need per-layer single-flight into a shared cache, byte progress for status and Events, blob
verification as bytes arrive, credentials handed in from Secrets without writing them to disk,
and cancellation — all of which are one process boundary away with skopeo. The protocol subset
is small: ``GET /v2/<name>/manifests/<ref>``, ``GET /v2/<name>/blobs/<digest>`` and the
``WWW-Authenticate`` dance (Basic, or the Bearer token flow).

TLS uses the system roots plus the CA files the node agent is configured with; plain HTTP is
used only for registries listed in ``RegistryConfig.plain_http``.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from kubesandbox_node.images.auth import Challenge, Credentials, parse_challenge
from kubesandbox_node.images.digests import Digest, DigestVerifier, digest_of
from kubesandbox_node.images.errors import (
    AuthError,
    DigestMismatchError,
    ImageError,
    ImageNotFoundError,
)
from kubesandbox_node.images.manifest import ACCEPT, MAX_MANIFEST_BYTES, detect_media_type
from kubesandbox_node.images.reference import ImageReference

log = structlog.get_logger(__name__)

ProgressCallback = Callable[[int], None]
"""Called with the number of bytes just received (a delta, not a total)."""

_CHUNK = 256 * 1024


@dataclass(frozen=True)
class RegistryConfig:
    plain_http: frozenset[str] = frozenset()
    """Registry hosts (``host:port``) that may be reached over plain HTTP; nothing else is."""
    ca_files: tuple[Path, ...] = ()
    """Extra CA bundles trusted beside the system roots."""
    connect_timeout: float = 15.0
    read_timeout: float = 120.0
    max_blob_bytes: int = 32 * 1024**3


@dataclass(frozen=True)
class FetchedManifest:
    media_type: str
    data: bytes
    digest: Digest


@dataclass
class _TokenCache:
    tokens: dict[tuple[str, str, str], str] = field(default_factory=dict)
    """Bearer tokens by (registry, scope, user)."""
    hints: dict[tuple[str, str, str], str] = field(default_factory=dict)
    """The Authorization header that last worked, by (registry, repository, user): sent
    up front, so a pull of many blobs does not pay a 401 round trip for each."""


class RegistryClient:
    """One per node agent; ``close()`` it (or use ``async with``)."""

    def __init__(self, config: RegistryConfig | None = None):
        self.config = config or RegistryConfig()
        self._session: aiohttp.ClientSession | None = None
        self._tokens = _TokenCache()
        self._ssl = ssl.create_default_context()
        for ca_file in self.config.ca_files:
            self._ssl.load_verify_locations(cafile=str(ca_file))

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(
                sock_connect=self.config.connect_timeout, sock_read=self.config.read_timeout
            )
            connector = aiohttp.TCPConnector(ssl=self._ssl, limit_per_host=8)
            self._session = aiohttp.ClientSession(timeout=timeout, connector=connector)
        return self._session

    def base_url(self, ref: ImageReference) -> str:
        scheme = "http" if ref.registry in self.config.plain_http else "https"
        return f"{scheme}://{ref.api_host}/v2/{ref.repository}"

    async def get_manifest(
        self, ref: ImageReference, credentials: Credentials | None, *, target: str | None = None
    ) -> FetchedManifest:
        """The manifest (or index) for ``target`` (default: the reference's digest or tag)."""
        wanted = target or ref.pinnable
        url = f"{self.base_url(ref)}/manifests/{wanted}"
        async with self._request(ref, url, credentials, {"Accept": ACCEPT}) as response:
            declared = response.content_length
            if declared is not None and declared > MAX_MANIFEST_BYTES:
                raise ImageError(f"{ref}: manifest of {declared} bytes is too large")
            data = await _read_bounded(response, MAX_MANIFEST_BYTES, what=f"{ref}: manifest")
            content_type = response.headers.get("Content-Type")
        digest = digest_of(data)
        if wanted.startswith("sha256:") and digest != wanted:
            raise DigestMismatchError(f"{ref}: manifest {wanted} hashes to {digest}")
        return FetchedManifest(detect_media_type(content_type, data), data, digest)

    async def get_blob_bytes(
        self, ref: ImageReference, digest: Digest, credentials: Credentials | None, *, limit: int
    ) -> bytes:
        """A small blob (an image config) in memory, verified."""
        url = f"{self.base_url(ref)}/blobs/{digest}"
        async with self._request(ref, url, credentials, {}) as response:
            data = await _read_bounded(response, limit, what=f"{ref}: blob {digest}")
        if digest_of(data) != digest:
            raise DigestMismatchError(f"{ref}: blob {digest} hashes to {digest_of(data)}")
        return data

    async def fetch_blob(
        self,
        ref: ImageReference,
        digest: Digest,
        size: int,
        credentials: Credentials | None,
        dest: Path,
        progress: ProgressCallback | None = None,
    ) -> None:
        """Stream a blob into ``dest`` (created or truncated), verifying size and digest."""
        if size > self.config.max_blob_bytes:
            raise ImageError(
                f"{ref}: blob {digest} is {size} bytes; the limit is {self.config.max_blob_bytes}"
            )
        verifier = DigestVerifier(digest, expected_size=size)
        url = f"{self.base_url(ref)}/blobs/{digest}"
        async with self._request(ref, url, credentials, {}) as response:
            with dest.open("wb") as out:
                async for chunk in response.content.iter_chunked(_CHUNK):
                    verifier.update(chunk)
                    if verifier.size > size:
                        raise DigestMismatchError(f"{ref}: blob {digest} is longer than {size}")
                    out.write(chunk)
                    if progress is not None:
                        progress(len(chunk))
        verifier.verify(what=f"{ref}: blob")

    def _request(
        self,
        ref: ImageReference,
        url: str,
        credentials: Credentials | None,
        headers: Mapping[str, str],
    ) -> _AuthorizedRequest:
        return _AuthorizedRequest(self, ref, url, credentials, dict(headers))

    async def _authorize(
        self,
        ref: ImageReference,
        challenge: Challenge,
        credentials: Credentials | None,
        *,
        refresh: bool = False,
    ) -> str:
        if challenge.scheme == "basic":
            if credentials is None:
                raise AuthError(f"{ref.registry} asks for credentials and no pull secret has any")
            return credentials.basic_header()
        if challenge.scheme != "bearer" or "realm" not in challenge.params:
            raise AuthError(f"{ref.registry}: unsupported auth challenge {challenge.scheme!r}")
        scope = challenge.params.get("scope") or f"repository:{ref.repository}:pull"
        key = (ref.registry, scope, credentials.username if credentials else "")
        if refresh:  # the token we had was refused: expired, or revoked
            self._tokens.tokens.pop(key, None)
        cached = self._tokens.tokens.get(key)
        if cached:
            return f"Bearer {cached}"
        realm = challenge.params["realm"]
        if not realm.startswith("https://") and not _is_plain_allowed(realm, self.config):
            raise AuthError(f"{ref.registry}: token realm {realm!r} is not https")
        query = {"scope": scope}
        if "service" in challenge.params:
            query["service"] = challenge.params["service"]
        token_headers = {"Authorization": credentials.basic_header()} if credentials else {}
        try:
            async with self._http().get(realm, params=query, headers=token_headers) as response:
                if response.status in (401, 403):
                    raise AuthError(f"{ref.registry}: token service refused the credentials")
                if response.status != 200:
                    raise ImageError(
                        f"{ref.registry}: token service answered {response.status}", temporary=True
                    )
                body: Any = await response.json(content_type=None)
        except aiohttp.ClientError as exc:
            raise ImageError(f"{ref.registry}: token service: {exc}", temporary=True) from None
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise AuthError(f"{ref.registry}: token service returned no token")
        self._tokens.tokens[key] = token
        return f"Bearer {token}"


def _is_plain_allowed(url: str, config: RegistryConfig) -> bool:
    host = url.split("://", 1)[-1].split("/", 1)[0]
    return url.startswith("http://") and host in config.plain_http


class _AuthorizedRequest:
    """``async with`` a GET that answers a 401 challenge once, then maps failures to errors."""

    def __init__(
        self,
        client: RegistryClient,
        ref: ImageReference,
        url: str,
        credentials: Credentials | None,
        headers: dict[str, str],
    ):
        self.client, self.ref, self.url = client, ref, url
        self.credentials, self.headers = credentials, headers
        self._response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        tokens = self.client._tokens
        user = self.credentials.username if self.credentials else ""
        key = (self.ref.registry, self.ref.repository, user)
        hint = tokens.hints.get(key)
        response = await self._get({**self.headers, **({"Authorization": hint} if hint else {})})
        if response.status == 401:
            header = response.headers.get("WWW-Authenticate", "")
            response.release()
            authorization = await self.client._authorize(
                self.ref, parse_challenge(header), self.credentials, refresh=hint is not None
            )
            response = await self._get({**self.headers, "Authorization": authorization})
            if response.status == 401:
                response.release()
                tokens.hints.pop(key, None)
                raise AuthError(f"{self.ref.registry} refused the credentials for {self.ref}")
            tokens.hints[key] = authorization
        self._response = response
        if response.status == 200:
            return response
        response.release()
        if response.status == 404:
            raise ImageNotFoundError(f"{self.ref}: not found in {self.ref.registry} ({self.url})")
        if response.status == 403:
            raise AuthError(f"{self.ref.registry}: access to {self.ref} denied")
        raise ImageError(
            f"{self.ref.registry} answered {response.status} for {self.url}",
            temporary=response.status >= 500 or response.status == 429,
        )

    async def __aexit__(self, *exc: object) -> None:
        if self._response is not None:
            self._response.release()

    async def _get(self, headers: dict[str, str]) -> aiohttp.ClientResponse:
        try:
            return await self.client._http().get(self.url, headers=headers)
        except aiohttp.ClientSSLError as exc:
            raise ImageError(f"{self.ref.registry}: TLS: {exc}") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ImageError(f"{self.ref.registry}: {exc}", temporary=True) from None


async def _read_bounded(response: aiohttp.ClientResponse, limit: int, *, what: str) -> bytes:
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.content.iter_chunked(_CHUNK):
        total += len(chunk)
        if total > limit:
            raise ImageError(f"{what} is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
