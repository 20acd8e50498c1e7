"""kube/auth.py: reviews are asked, cached (bounded, by token hash) and fail closed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from kubesandbox_kube.auth import (
    Access,
    KubeAuthenticator,
    ReviewUnavailable,
    TtlCache,
    User,
)
from kubesandbox_kube.errors import KubeError
from kubesandbox_kube.paths import SUBJECT_ACCESS_REVIEWS, TOKEN_REVIEWS, ResourcePath

ALICE = User("system:serviceaccount:team-a:alice", uid="u1", groups=("system:authenticated",))


class FakeApiserver:
    """Answers TokenReview from a token table and SubjectAccessReview from a grant set."""

    def __init__(self) -> None:
        self.tokens: dict[str, dict[str, Any]] = {}
        self.grants: set[tuple[str, str, str, str]] = set()
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.down = False

    async def create(self, path: ResourcePath, body: Mapping[str, Any]) -> dict[str, Any]:
        self.calls.append((path.plural, dict(body)))
        if self.down:
            raise KubeError(0, "Unreachable", "connection refused")
        if path == TOKEN_REVIEWS:
            user = self.tokens.get(body["spec"]["token"])
            return {"status": {"authenticated": user is not None, "user": user or {}}}
        assert path == SUBJECT_ACCESS_REVIEWS
        spec = body["spec"]
        attrs = spec["resourceAttributes"]
        resource = attrs["resource"] + (
            "/" + attrs["subresource"] if "subresource" in attrs else ""
        )
        key = (spec["user"], attrs["verb"], resource, attrs["namespace"])
        return {"status": {"allowed": key in self.grants}}


@pytest.fixture
def apiserver() -> FakeApiserver:
    server = FakeApiserver()
    server.tokens["good"] = {
        "username": ALICE.name,
        "uid": "u1",
        "groups": ["system:authenticated"],
        "extra": {"scopes": ["a", "b"]},
    }
    return server


async def test_valid_token_becomes_a_user_and_is_cached(apiserver: FakeApiserver) -> None:
    auth = KubeAuthenticator(apiserver)
    user = await auth.authenticate("good")
    assert user is not None
    assert user.name == ALICE.name
    assert user.groups == ("system:authenticated",)
    assert user.extra == (("scopes", ("a", "b")),)
    assert user.service_account_namespace == "team-a"
    assert await auth.authenticate("good") == user
    assert len(apiserver.calls) == 1


async def test_invalid_empty_and_oversized_tokens(apiserver: FakeApiserver) -> None:
    auth = KubeAuthenticator(apiserver)
    assert await auth.authenticate("bad") is None
    assert await auth.authenticate("") is None
    assert await auth.authenticate("x" * 20000) is None
    assert len(apiserver.calls) == 1  # only "bad" was worth a review


async def test_rejected_tokens_are_remembered_apart_and_never_evict_good_ones(
    apiserver: FakeApiserver,
) -> None:
    auth = KubeAuthenticator(apiserver)
    await auth.authenticate("good")
    auth._rejected.limit = 4
    for n in range(10):
        assert await auth.authenticate(f"random-{n}") is None
    assert await auth.authenticate("random-9") is None
    assert len(apiserver.calls) == 11  # "good" once, each random token once
    assert auth.remembers("good")
    assert not auth.remembers("random-9")
    assert await auth.authenticate("good") is not None
    assert len(apiserver.calls) == 11
    assert all(len(k) == 64 for k in auth._rejected._entries)


async def test_cache_keys_are_hashes_not_tokens(apiserver: FakeApiserver) -> None:
    auth = KubeAuthenticator(apiserver)
    await auth.authenticate("good")
    keys = list(auth._tokens._entries)
    assert keys
    assert "good" not in keys
    assert all(len(k) == 64 for k in keys)


async def test_unreachable_apiserver_denies_and_is_not_cached(apiserver: FakeApiserver) -> None:
    auth = KubeAuthenticator(apiserver)
    apiserver.down = True
    with pytest.raises(ReviewUnavailable):
        await auth.authenticate("good")
    with pytest.raises(ReviewUnavailable):
        await auth.authorize(ALICE, Access("get", "team-a"))
    apiserver.down = False
    assert await auth.authenticate("good") is not None


async def test_authorize_asks_with_the_full_identity(apiserver: FakeApiserver) -> None:
    apiserver.grants.add((ALICE.name, "create", "sandboxes/exec", "team-a"))
    auth = KubeAuthenticator(apiserver)
    assert await auth.authorize(ALICE, Access("create", "team-a", subresource="exec", name="s1"))
    assert not await auth.authorize(ALICE, Access("create", "team-b", subresource="exec"))
    assert not await auth.authorize(ALICE, Access("delete", "team-a"))
    spec = apiserver.calls[0][1]["spec"]
    assert spec["user"] == ALICE.name
    assert spec["uid"] == "u1"
    assert spec["groups"] == ["system:authenticated"]
    assert spec["resourceAttributes"] == {
        "verb": "create",
        "group": "kubesandbox.dev",
        "resource": "sandboxes",
        "subresource": "exec",
        "name": "s1",
        "namespace": "team-a",
    }


async def test_decisions_are_cached_briefly(
    apiserver: FakeApiserver, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr("kubesandbox_kube.auth.time.monotonic", lambda: clock[0])
    auth = KubeAuthenticator(apiserver)
    access = Access("get", "team-a")
    assert not await auth.authorize(ALICE, access)
    apiserver.grants.add((ALICE.name, "get", "sandboxes", "team-a"))
    assert not await auth.authorize(ALICE, access)  # cached denial
    clock[0] += 11
    assert await auth.authorize(ALICE, access)  # expired: asked again
    assert len(apiserver.calls) == 2


def test_ttl_cache_is_bounded_lru(monkeypatch: pytest.MonkeyPatch) -> None:
    cache: TtlCache[str, int] = TtlCache(ttl=5, limit=3)
    for i, key in enumerate("abc"):
        cache.put(key, i)
    assert cache.lookup("a") == (True, 0)  # a is now most recent
    cache.put("d", 3)
    assert len(cache) == 3
    assert cache.lookup("b") == (False, None)  # least recently used went first
    assert cache.lookup("a") == (True, 0)
    clock = [1e9]
    monkeypatch.setattr("kubesandbox_kube.auth.time.monotonic", lambda: clock[0])
    assert cache.lookup("a") == (False, None)
    assert len(cache) == 2


def test_access_describe_and_sa_namespace() -> None:
    assert Access("create", "ns", subresource="exec").describe() == (
        "create sandboxes/exec in namespace 'ns'"
    )
    assert User("alice").service_account_namespace is None
    assert User("system:serviceaccount::x").service_account_namespace is None


async def test_an_authenticated_review_without_a_username_is_no_user(
    apiserver: FakeApiserver,
) -> None:
    apiserver.tokens["nameless"] = {"uid": "u2", "groups": ["system:authenticated"]}
    auth = KubeAuthenticator(apiserver)
    assert await auth.authenticate("nameless") is None
