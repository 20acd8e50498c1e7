from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubesandbox_api.status import SandboxMetrics
from kubesandbox_node.kube.auth import Access, KubeAuthenticator, User
from kubesandbox_node.kube.client import ApiError
from kubesandbox_node.kube.lease import LeaseRenewer
from kubesandbox_node.metrics.prometheus import Labelled, render


@dataclass
class FakeKube:
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    allowed: bool = True
    down: bool = False

    async def request(self, method: str, path: str, *, body: Any = None) -> dict[str, Any]:
        if self.down:
            raise ApiError(0, "connection refused")
        self.requests.append((path, body))
        if path.endswith("tokenreviews"):
            ok = body["spec"]["token"] == "good"
            user = {"username": "alice", "groups": ["devs"]}
            return {"status": {"authenticated": ok, "user": user}}
        return {"status": {"allowed": self.allowed}}


async def test_token_review_is_cached() -> None:
    kube = FakeKube()
    auth = KubeAuthenticator(kube)  # type: ignore[arg-type]
    assert await auth.authenticate("good") == User("alice", groups=("devs",))
    assert await auth.authenticate("good") is not None
    assert await auth.authenticate("bad") is None
    assert len(kube.requests) == 2


async def test_access_review_carries_the_namespace_and_subresource() -> None:
    kube = FakeKube()
    auth = KubeAuthenticator(kube)  # type: ignore[arg-type]
    access = Access("create", "team-a", subresource="exec", name="hello")
    assert await auth.authorize(User("alice"), access)
    attributes = kube.requests[-1][1]["spec"]["resourceAttributes"]
    assert attributes == {
        "verb": "create",
        "group": "kubesandbox.dev",
        "resource": "sandboxes",
        "subresource": "exec",
        "name": "hello",
        "namespace": "team-a",
    }


async def test_an_unreachable_apiserver_denies() -> None:
    kube = FakeKube(down=True)
    auth = KubeAuthenticator(kube)  # type: ignore[arg-type]
    assert await auth.authenticate("good") is None
    assert not await auth.authorize(User("alice"), Access("update", "team-a"))


def test_lease_announces_endpoint_emulation_and_capabilities() -> None:
    renewer = LeaseRenewer(
        kube=None,  # type: ignore[arg-type]
        node="node-1",
        namespace="kubesandbox-system",
        endpoint="https://10.0.0.1:9443",
        emulation=True,
        capabilities=("oci", "pause"),
        instance="abc",
    )
    at = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    body = renewer.body(at, at)
    assert body["metadata"]["name"] == "node-agent-node-1"
    assert body["metadata"]["annotations"] == {
        "kubesandbox.dev/endpoint": "https://10.0.0.1:9443",
        "kubesandbox.dev/emulation": "true",
        "kubesandbox.dev/capabilities": "oci,pause",
    }
    assert body["spec"]["holderIdentity"] == "node-1/abc"
    assert body["spec"]["leaseDurationSeconds"] == 40
    assert body["spec"]["renewTime"] == "2026-01-02T03:04:05.678000Z"


def test_prometheus_text_escapes_labels_and_skips_missing_values() -> None:
    sample = SandboxMetrics(cpu_percent=12.5, memory_bytes=None)
    text = render([Labelled('we"ird', "n\\1", "u", sample)], {"Running": 1})
    assert (
        'kubesandbox_sandbox_cpu_percent{namespace="we\\"ird",name="n\\\\1",uid="u"} 12.5' in text
    )
    assert "kubesandbox_sandbox_memory_bytes{" not in text
    assert "# TYPE kubesandbox_sandbox_disk_read_bytes_total counter" in text
