"""An in-process registry v2 (aiohttp) for unit tests: tags, manifests, blobs, token auth."""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

from kubesandbox_devenv.registry import OCI_INDEX, OCI_MANIFEST, BuiltImage, digest


@dataclass
class FakeRegistry:
    users: dict[str, str] = field(default_factory=dict)
    """Non-empty: every /v2 request needs a bearer token from /token (basic auth there)."""
    basic_only: bool = False
    public_manifests: bool = False
    """Manifests and configs need no credentials, layer blobs do."""
    manifests: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    requests: Counter[str] = field(default_factory=Counter)
    corrupt: set[str] = field(default_factory=set)
    host: str = ""
    generation: int = 1
    """Tokens of older generations are refused (``expire_tokens``)."""

    def expire_tokens(self) -> None:
        self.generation += 1

    def add(self, repo: str, tag: str, image: BuiltImage) -> None:
        self.manifests[image.digest] = (OCI_MANIFEST, image.manifest)
        self.blobs.update(image.blobs())
        self.tags[f"{repo}:{tag}"] = image.digest

    def add_index(self, repo: str, tag: str, index: bytes) -> None:
        self.manifests[digest(index)] = (OCI_INDEX, index)
        self.tags[f"{repo}:{tag}"] = digest(index)

    def _authorized(self, request: web.Request) -> bool:
        if not self.users:
            return True
        header = request.headers.get("Authorization", "")
        if self.basic_only:
            return header in {_basic(u, p) for u, p in self.users.items()}
        return header == f"Bearer token-{self.generation}"

    def _challenge(self, repo: str) -> web.Response:
        if self.basic_only:
            value = 'Basic realm="fake"'
        else:
            value = (
                f'Bearer realm="http://{self.host}/token",service="fake",'
                f'scope="repository:{repo}:pull"'
            )
        return web.Response(status=401, headers={"WWW-Authenticate": value})

    async def token(self, request: web.Request) -> web.Response:
        self.requests["token"] += 1
        header = request.headers.get("Authorization", "")
        if header not in {_basic(u, p) for u, p in self.users.items()}:
            return web.Response(status=401)
        assert request.query["scope"].startswith("repository:")
        return web.json_response({"token": f"token-{self.generation}"})

    async def manifest(self, request: web.Request) -> web.Response:
        repo, ref = request.match_info["repo"], request.match_info["ref"]
        self.requests[f"manifest {ref}"] += 1
        if not self.public_manifests and not self._authorized(request):
            return self._challenge(repo)
        wanted = self.tags.get(f"{repo}:{ref}", ref)
        if wanted not in self.manifests:
            return web.Response(status=404)
        media, body = self.manifests[wanted]
        return web.Response(body=body, headers={"Content-Type": media})

    async def blob(self, request: web.Request) -> web.Response:
        repo, ref = request.match_info["repo"], request.match_info["digest"]
        self.requests[f"blob {ref}"] += 1
        is_layer = ref in self.blobs and self.blobs[ref][:2] == b"\x1f\x8b"
        if (is_layer or not self.public_manifests) and not self._authorized(request):
            return self._challenge(repo)
        if ref not in self.blobs:
            return web.Response(status=404)
        body = self.blobs[ref]
        if ref in self.corrupt:
            body = body[:-1] + bytes([body[-1] ^ 1])
        return web.Response(body=body)

    def blob_fetches(self) -> int:
        return sum(n for key, n in self.requests.items() if key.startswith("blob "))


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@asynccontextmanager
async def serve(registry: FakeRegistry) -> AsyncIterator[FakeRegistry]:
    app = web.Application()
    app.router.add_get("/token", registry.token)
    app.router.add_get(r"/v2/{repo:.+}/manifests/{ref}", registry.manifest)
    app.router.add_get(r"/v2/{repo:.+}/blobs/{digest}", registry.blob)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    registry.host = f"127.0.0.1:{port}"
    try:
        yield registry
    finally:
        await runner.cleanup()
