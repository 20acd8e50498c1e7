"""Who may call the node agent: bearer tokens checked with the cluster.

``Authenticator`` is the interface the server depends on (unit tests use a fake).
``KubeAuthenticator`` asks TokenReview who the token is (cached for 60 s, so a burst of
requests costs one review) and SubjectAccessReview whether that user may do the verb on
``sandboxes`` (or a subresource) in the namespace (cached for 10 s, so revoked rights take
effect quickly). Failures to reach the apiserver deny: the API is never open.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from kubesandbox_node.kube.client import ApiError, KubeClient

GROUP = "kubesandbox.dev"
TOKEN_TTL = 60.0
ACCESS_TTL = 10.0
CACHE_LIMIT = 4096
K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class User:
    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class Access:
    verb: str
    namespace: str
    resource: str = "sandboxes"
    subresource: str = ""
    name: str = ""


class Authenticator(Protocol):
    async def authenticate(self, token: str) -> User | None: ...
    async def authorize(self, user: User, access: Access) -> bool: ...


@dataclass
class _Cache(Generic[K, V]):
    ttl: float
    entries: dict[K, tuple[float, V]] = field(default_factory=dict)

    def get(self, key: K) -> V | None:
        hit = self.entries.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, key: K, value: V) -> None:
        if len(self.entries) >= CACHE_LIMIT:
            now = time.monotonic()
            self.entries = {k: v for k, v in self.entries.items() if v[0] >= now}
            if len(self.entries) >= CACHE_LIMIT:
                self.entries.clear()
        self.entries[key] = (time.monotonic() + self.ttl, value)


class KubeAuthenticator:
    def __init__(self, kube: KubeClient) -> None:
        self.kube = kube
        self._tokens: _Cache[str, User | None] = _Cache(TOKEN_TTL)
        self._access: _Cache[tuple[User, Access], bool] = _Cache(ACCESS_TTL)

    async def authenticate(self, token: str) -> User | None:
        if not token:
            return None
        cached = self._tokens.entries.get(token)
        if cached is not None and cached[0] >= time.monotonic():
            return cached[1]
        review = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
        }
        try:
            result = await self.kube.request(
                "POST", "/apis/authentication.k8s.io/v1/tokenreviews", body=review
            )
        except ApiError:
            return None
        status = result.get("status", {})
        user: User | None = None
        if status.get("authenticated"):
            info = status.get("user", {})
            user = User(
                name=info.get("username", ""),
                uid=info.get("uid", ""),
                groups=tuple(info.get("groups", [])),
                extra=tuple(sorted((k, tuple(v)) for k, v in info.get("extra", {}).items())),
            )
        self._tokens.put(token, user)
        return user

    async def authorize(self, user: User, access: Access) -> bool:
        key = (user, access)
        cached = self._access.get(key)
        if cached is not None:
            return cached
        attributes = {
            "verb": access.verb,
            "group": GROUP,
            "resource": access.resource,
            "subresource": access.subresource,
            "name": access.name,
        }
        if access.namespace:
            attributes["namespace"] = access.namespace
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": user.name,
                "uid": user.uid,
                "groups": list(user.groups),
                "extra": {k: list(v) for k, v in user.extra},
                "resourceAttributes": attributes,
            },
        }
        try:
            result = await self.kube.request(
                "POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", body=review
            )
        except ApiError:
            return False
        allowed = bool(result.get("status", {}).get("allowed"))
        self._access.put(key, allowed)
        return allowed
