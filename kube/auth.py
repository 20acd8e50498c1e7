"""Who is calling, and may they: bearer tokens checked with the cluster itself.

Components that serve tenants (the gateway and the node agent) never keep an access
list of their own: Kubernetes RBAC is the one source of truth. :class:`KubeAuthenticator` asks
a TokenReview who a bearer token belongs to and a SubjectAccessReview whether that user may do
a verb on ``sandboxes`` (or a subresource such as ``sandboxes/exec``) in a namespace.

Both answers are cached, bounded and briefly: identities for 60 s (a burst of SDK calls costs
one review), decisions for 10 s (revoked rights take effect quickly). Tokens are cached by
their SHA-256, so the cache holds no usable credential; rejected tokens go to a negative cache
of their own, so a stream of bad tokens cannot evict the identities of good ones (the gateway
also limits how often a client may fail, :mod:`kubesandbox_gateway.ratelimit`). When the
apiserver cannot be asked the answer is :class:`ReviewUnavailable`, never "allowed": the API
is never open, and the caller can tell "you may not" (401/403) from "nobody can be checked
right now" (502). Unavailable answers are not cached.

:class:`Authenticator` is the interface servers depend on, so unit tests can use a fake.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from kubesandbox_kube.errors import KubeError
from kubesandbox_kube.paths import SUBJECT_ACCESS_REVIEWS, TOKEN_REVIEWS, ResourcePath

GROUP = "kubesandbox.dev"
TOKEN_TTL = 60.0
ACCESS_TTL = 10.0
CACHE_LIMIT = 4096
MAX_TOKEN_LENGTH = 16384
"""Longer bearer tokens are refused without asking the apiserver (real ones are ~1-2 KiB)."""

K = TypeVar("K")
V = TypeVar("V")


class ReviewUnavailable(Exception):
    """The apiserver could not be asked; the request must be denied."""


@dataclass(frozen=True)
class User:
    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def service_account_namespace(self) -> str | None:
        """The namespace of a ``system:serviceaccount:<ns>:<name>`` user, else ``None``."""
        parts = self.name.split(":")
        if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"] and parts[2]:
            return parts[2]
        return None


@dataclass(frozen=True)
class Access:
    """One SubjectAccessReview question: may the user ``verb`` this resource?"""

    verb: str
    namespace: str
    resource: str = "sandboxes"
    subresource: str = ""
    name: str = ""
    group: str = GROUP

    def describe(self) -> str:
        resource = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        return f"{self.verb} {resource} in namespace {self.namespace!r}"


class Authenticator(Protocol):
    async def authenticate(self, token: str) -> User | None:
        """The token's user, ``None`` when it is not valid; may raise ReviewUnavailable."""
        ...

    async def authorize(self, user: User, access: Access) -> bool:
        """Whether RBAC allows ``access``; may raise ReviewUnavailable."""
        ...


class ReviewPoster(Protocol):
    """What the authenticator needs of a client: :class:`~kubesandbox_kube.KubeClient` fits."""

    async def create(self, path: ResourcePath, body: Mapping[str, Any]) -> dict[str, Any]: ...


class TtlCache(Generic[K, V]):
    """A bounded LRU map whose entries expire ``ttl`` seconds after they were put."""

    def __init__(self, ttl: float, limit: int = CACHE_LIMIT) -> None:
        self.ttl = ttl
        self.limit = limit
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: K) -> tuple[bool, V | None]:
        """``(True, value)`` on a live hit, ``(False, None)`` otherwise."""
        hit = self._entries.get(key)
        if hit is None:
            return False, None
        if hit[0] < time.monotonic():
            del self._entries[key]
            return False, None
        self._entries.move_to_end(key)
        return True, hit[1]

    def put(self, key: K, value: V) -> None:
        self._entries[key] = (time.monotonic() + self.ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)


class KubeAuthenticator:
    """TokenReview and SubjectAccessReview through the process's own apiserver client."""

    def __init__(self, kube: ReviewPoster, *, token_ttl: float = TOKEN_TTL) -> None:
        self.kube = kube
        self._tokens: TtlCache[str, User] = TtlCache(token_ttl)
        self._rejected: TtlCache[str, bool] = TtlCache(token_ttl)
        """Tokens the apiserver said no to: apart, so a stream of bad tokens never evicts
        the identities of good ones."""
        self._access: TtlCache[tuple[User, Access], bool] = TtlCache(ACCESS_TTL)

    def remembers(self, token: str) -> bool:
        """Whether ``token`` was accepted within the cache's TTL (no review needed)."""
        return self._tokens.lookup(_token_key(token))[0]

    async def authenticate(self, token: str) -> User | None:
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        key = _token_key(token)
        found, user = self._tokens.lookup(key)
        if found:
            return user
        if self._rejected.lookup(key)[0]:
            return None
        review = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
        }
        try:
            result = await self.kube.create(TOKEN_REVIEWS, review)
        except KubeError as error:
            raise ReviewUnavailable(f"TokenReview failed: {error}") from error
        status = result.get("status") or {}
        user = None
        if status.get("authenticated"):
            info = status.get("user") or {}
            extra = info.get("extra") or {}
            user = User(
                name=str(info.get("username") or ""),
                uid=str(info.get("uid") or ""),
                groups=tuple(str(g) for g in info.get("groups") or ()),
                extra=tuple(sorted((str(k), tuple(str(x) for x in v)) for k, v in extra.items())),
            )
            if not user.name:
                user = None
        if user is None:
            self._rejected.put(key, True)
        else:
            self._tokens.put(key, user)
        return user

    async def authorize(self, user: User, access: Access) -> bool:
        key = (user, access)
        found, allowed = self._access.lookup(key)
        if found:
            return bool(allowed)
        attributes = {
            "verb": access.verb,
            "group": access.group,
            "resource": access.resource,
            "subresource": access.subresource,
            "name": access.name,
            "namespace": access.namespace,
        }
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": user.name,
                "uid": user.uid,
                "groups": list(user.groups),
                "extra": {k: list(v) for k, v in user.extra},
                "resourceAttributes": {k: v for k, v in attributes.items() if v},
            },
        }
        try:
            result = await self.kube.create(SUBJECT_ACCESS_REVIEWS, review)
        except KubeError as error:
            raise ReviewUnavailable(f"SubjectAccessReview failed: {error}") from error
        allowed = bool((result.get("status") or {}).get("allowed"))
        self._access.put(key, allowed)
        return allowed


def _token_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
