import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from kubesandbox_api import Sandbox
from kubesandbox_operator.clients.cache import LeaseCache, PodCache, ReferenceCache, SandboxKey
from kubesandbox_operator.clients.cluster import parse_lease
from kubesandbox_operator.reconcile.pod import PodSettings, desired_pod
from kubesandbox_operator.reconcile.references import ObjectRef

PREFIX = "node-agent-"


def sandbox(name: str, uid: str) -> Sandbox:
    return Sandbox.from_body(
        {
            "metadata": {"name": name, "namespace": "team", "uid": uid, "generation": 1},
            "spec": {"image": {"oci": "busybox:1.36"}},
        }
    )


def pod(name: str, uid: str, node: str | None = None, **status: Any) -> dict[str, Any]:
    body = desired_pod(sandbox(name, f"sbx-{uid}"), PodSettings())
    body["metadata"]["uid"] = uid
    body["metadata"]["managedFields"] = [{"manager": "x"}]
    if node:
        body["spec"]["nodeName"] = node
    body["status"] = status
    return body


def lease(node: str, renewed: datetime, holder: str = "a", duration: int = 40) -> dict[str, Any]:
    return {
        "metadata": {
            "name": PREFIX + node,
            "namespace": "kubesandbox-system",
            "annotations": {"kubesandbox.dev/endpoint": "http://10.0.0.1:9443"},
        },
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration,
            "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        },
    }


def test_a_pod_wakes_its_sandbox_only_when_what_the_plan_reads_changed() -> None:
    woken: list[SandboxKey] = []
    cache = PodCache(woken.append)
    cache.upsert(pod("a", "p1"))
    assert woken == [("team", "a")]
    cache.upsert(pod("a", "p1"))  # a new resourceVersion, nothing the plan reads
    assert woken == [("team", "a")]
    cache.upsert(pod("a", "p1", node="node-0"))
    assert woken == [("team", "a")] * 2
    seen = cache.get("team", "a-sandbox")
    assert seen is not None
    assert (seen.node_name, seen.sandbox, seen.sandbox_uid) == ("node-0", "a", "sbx-p1")
    assert cache.sandboxes_on("node-0") == {("team", "a")}
    cache.remove(pod("a", "p1", node="node-0"))
    assert woken == [("team", "a")] * 3
    assert cache.pods == {}
    assert cache.by_node == {}


def test_the_unschedulable_message_is_kept() -> None:
    cache = PodCache()
    scheduled = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.",
    }
    cache.upsert(pod("a", "p1", conditions=[scheduled]))
    seen = cache.get("team", "a-sandbox")
    assert seen is not None
    assert seen.unschedulable == scheduled["message"]


def test_a_relist_forgets_pods_whose_deletion_was_missed() -> None:
    woken: list[SandboxKey] = []
    cache = PodCache(woken.append)
    cache.upsert(pod("a", "p1", node="node-0"))
    cache.upsert(pod("b", "p2", node="node-0"))
    woken.clear()
    cache.retain({("team", "b-sandbox")})
    assert set(cache.pods) == {("team", "b-sandbox")}
    assert woken == [("team", "a")]
    assert cache.sandboxes_on("node-0") == {("team", "b")}


def test_a_created_pod_is_known_at_once_but_never_resurrected() -> None:
    cache = PodCache()
    cache.created(pod("a", "p1"))
    assert cache.get("team", "a-sandbox") is not None
    cache.remove(pod("a", "p1"))
    cache.created(pod("a", "p1"))  # the create's answer arrived after the watch's DELETED
    assert cache.get("team", "a-sandbox") is None
    cache.upsert(pod("b", "p2", node="node-0"))
    cache.created(pod("b", "p2"))  # the watch was first, with a newer version
    seen = cache.get("team", "b-sandbox")
    assert seen is not None
    assert seen.node_name == "node-0"


async def test_a_renewal_wakes_nobody_but_an_expiry_wakes_the_node_at_its_deadline() -> None:
    woken: list[str] = []
    cache = LeaseCache(PREFIX, parse_lease, woken.append)
    now = datetime.now(UTC)
    cache.upsert(lease("node-0", now - timedelta(seconds=39.7)))  # expires in 0.3 s
    assert woken == ["node-0"]
    cache.upsert(lease("node-0", now - timedelta(seconds=39.8)))  # renewed (older clock)
    assert woken == ["node-0"]
    await asyncio.sleep(0.6)
    assert woken == ["node-0", "node-0"]  # the timer: nobody renewed it
    announced = cache.get("node-0")
    assert announced is not None
    assert not announced.alive(datetime.now(UTC))


async def test_a_renewed_lease_disarms_the_expiry_and_a_new_holder_wakes() -> None:
    woken: list[str] = []
    cache = LeaseCache(PREFIX, parse_lease, woken.append)
    cache.upsert(lease("node-0", datetime.now(UTC) - timedelta(seconds=39.8)))
    cache.upsert(lease("node-0", datetime.now(UTC)))
    await asyncio.sleep(0.4)
    assert woken == ["node-0"]
    cache.upsert(lease("node-0", datetime.now(UTC), holder="b"))  # a restarted node agent
    assert woken == ["node-0", "node-0"]
    cache.upsert(lease("other", datetime.now(UTC)) | {"metadata": {"name": "operator"}})
    cache.retain({("kubesandbox-system", PREFIX + "other")})
    assert cache.agents == {}
    assert woken[-1] == "node-0"


def test_only_referenced_objects_are_kept_and_a_change_wakes_their_sandboxes() -> None:
    woken: list[SandboxKey] = []
    cache = ReferenceCache(woken.append)
    secrets = cache.sink("Secret")
    secret = {"metadata": {"namespace": "team", "name": "token"}, "data": {"t": "eA=="}}
    secrets.upsert(secret)
    secrets.upsert({"metadata": {"namespace": "team", "name": "unrelated"}, "data": {"k": "v"}})
    assert cache.values == {}
    missing = cache.want(("team", "a"), {ObjectRef("Secret", "token")})
    assert missing == [("Secret", "team", "token")]
    cache.fill(("Secret", "team", "token"), None)  # the GET: not there yet
    assert cache.lookup(("team", "a")) == {ObjectRef("Secret", "token"): None}
    secrets.upsert(secret)  # created
    assert woken == [("team", "a")]
    assert cache.lookup(("team", "a"))[ObjectRef("Secret", "token")] == {
        "kind": "Secret",
        "data": {"t": "eA=="},
    }
    secrets.upsert(secret)  # same values, new resourceVersion: nothing to do
    assert woken == [("team", "a")]
    secrets.remove(secret)
    assert woken == [("team", "a")] * 2
    cache.release(("team", "a"))
    assert (cache.wanted, cache.values) == ({}, {})


def test_a_gets_answer_never_overrides_the_watch() -> None:
    cache = ReferenceCache()
    cache.want(("team", "a"), {ObjectRef("ConfigMap", "cfg")})
    cache.sink("ConfigMap").upsert({"metadata": {"namespace": "team", "name": "cfg"}, "data": {}})
    cache.fill(("ConfigMap", "team", "cfg"), None)
    assert cache.lookup(("team", "a"))[ObjectRef("ConfigMap", "cfg")] is not None
