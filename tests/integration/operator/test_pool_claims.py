"""How the operator claims a pool member, on the real control plane with a fake node agent
(the node agent's reports are played by the test): the claim goes to the member's node before
any desired state, the claimant's Pod is bound there, the member is deleted and replaced; a
claim the node agent refuses ends in an ordinary boot on that node; a deleted pool drains its
members and leaves the Sandboxes it served. Real VMs: test_pools.py."""

from typing import Any

import pytest

from kubesandbox_api import GROUP, VERSION
from tests.integration.operator.fake_node_agent import FakeNodeAgent
from tests.integration.operator.test_operator import (
    Cluster,
    OperatorProcess,
    _scheduled,
    cluster,
    namespace,
    node_agent,
    operator,
)
from tests.integration.operator.test_rounds import _settled
from tests.support.waiting import eventually

pytestmark = pytest.mark.usefixtures("installed_crds")
FIXTURES = (cluster, namespace, node_agent, operator)  # test_operator.py's, shared
POOLS = "sandboxpools"
IMAGE = {"oci": "busybox:1.36"}
CONNECTED = [{"type": "AgentConnected", "status": "True", "reason": "AgentReady"}]


def create_pool(cluster: Cluster, namespace: str, name: str, replicas: int) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SandboxPool",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "template": {"spec": {"image": IMAGE, "memory": 128}}},
    }
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, POOLS, body)


def members(cluster: Cluster, namespace: str, pool: str) -> list[dict[str, Any]]:
    listed = cluster.custom.list_namespaced_custom_object(
        GROUP, VERSION, namespace, "sandboxes", label_selector=f"kubesandbox.dev/pool={pool}"
    )
    assert isinstance(listed, dict)
    return [m for m in listed["items"] if not m["metadata"].get("deletionTimestamp")]


def ready_pool(cluster: Cluster, namespace: str, pool: str) -> dict[str, Any]:
    """A pool of one, made ready by playing the node agent (every member that is placed
    reports Running) until the pool says so. Returns its member."""
    create_pool(cluster, namespace, pool, 1)

    def boot() -> dict[str, Any] | None:
        for member in members(cluster, namespace, pool):
            name = member["metadata"]["name"]
            if _scheduled(cluster, namespace, name) and not member["status"].get("startedAt"):
                status = {"phase": "Running", "startedAt": "2026-12-04T12:00:00Z",
                          "conditions": CONNECTED}  # fmt: skip
                cluster.report_as_node_agent(namespace, name, status)
        got = cluster.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, POOLS, pool)
        assert isinstance(got, dict)
        return got if (got.get("status") or {}).get("readyReplicas") == 1 else None

    eventually(boot, 60, f"pool {pool} ready")
    (member,) = members(cluster, namespace, pool)
    return member


def drain(cluster: Cluster, namespace: str, pool: str) -> None:
    """Deletes the pool and waits until it and its members are gone (before the namespace
    fixture deletes the Sandboxes, which a live pool would replace)."""
    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, POOLS, pool)
    eventually(lambda: not members(cluster, namespace, pool), 60, f"pool {pool} drained")

    def gone() -> bool:
        listed = cluster.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, POOLS)
        return isinstance(listed, dict) and listed["items"] == []

    eventually(gone, 60, f"pool {pool} gone")


def test_a_claim_reaches_the_members_node_agent_before_any_desired_state(
    cluster: Cluster, node_agent: FakeNodeAgent, operator: OperatorProcess, namespace: str
) -> None:
    member = ready_pool(cluster, namespace, "warm")
    member_uid, node = member["metadata"]["uid"], member["status"]["nodeName"]
    env = [{"name": "GREETING", "value": "hi"}]
    uid = cluster.create_sandbox(namespace, "mine", memory=128, env=env)["metadata"]["uid"]

    (claim,) = eventually(lambda: node_agent.claims(member_uid), 30, "the claim")
    assert claim.body is not None
    assert claim.body["pool"] == "warm"
    assert (claim.body["sandbox"]["uid"], claim.body["sandbox"]["name"]) == (uid, "mine")
    assert claim.body["sandbox"]["spec"]["env"] == env
    assert "poolMember" not in claim.body["sandbox"]
    puts = [r for r in node_agent.requests if r.method == "PUT" and r.uid == uid]
    assert all(node_agent.requests.index(p) > node_agent.requests.index(claim) for p in puts)

    pod = next(p for p in cluster.pods(namespace) if p["metadata"]["name"] == "mine-sandbox")
    assert pod["spec"]["nodeName"] == node
    mine = eventually(lambda: _scheduled(cluster, namespace, "mine"), 30, "mine Scheduled")
    assert mine["status"]["nodeName"] == node
    assert "Claimed" in eventually(lambda: cluster.events(namespace, "mine"), 30, "events")
    # the member is gone (its VM serves "mine"), a new one replaces it
    eventually(lambda: cluster.sandbox(namespace, member["metadata"]["name"]) is None, 60,
               "the claimed member deleted")  # fmt: skip
    replacement = eventually(lambda: members(cluster, namespace, "warm"), 30, "a new member")
    assert replacement[0]["metadata"]["uid"] != member_uid

    # a deleted pool drains its members and leaves the Sandbox it served
    drain(cluster, namespace, "warm")
    assert cluster.sandbox(namespace, "mine") is not None
    assert node_agent.deletes(uid) == []

    def forgotten() -> bool:
        kept = _settled(operator.log)
        return kept is not None and kept["pools"] == kept["pool_members"] == 0

    eventually(forgotten, 30, lambda: f"the pool forgotten: {_settled(operator.log)}")


def test_a_refused_claim_boots_the_sandbox_on_that_node(
    cluster: Cluster, node_agent: FakeNodeAgent, operator: OperatorProcess, namespace: str
) -> None:
    member = ready_pool(cluster, namespace, "warm")
    member_uid, node = member["metadata"]["uid"], member["status"]["nodeName"]
    node_agent.refuse_claims = True
    try:
        uid = cluster.create_sandbox(namespace, "cold", memory=128)["metadata"]["uid"]
        eventually(lambda: node_agent.claims(member_uid), 30, "the claim")
        put = eventually(lambda: node_agent.puts(uid), 30, "an ordinary hand-over")[0]
    finally:
        node_agent.refuse_claims = False
    assert put.body is not None
    assert "poolMember" not in put.body
    cold = eventually(lambda: _scheduled(cluster, namespace, "cold"), 30, "cold Scheduled")
    assert cold["status"]["nodeName"] == node
    assert "pool" not in cold["status"]
    # the member was marked claimed: it is deleted and replaced all the same
    eventually(lambda: cluster.sandbox(namespace, member["metadata"]["name"]) is None, 60,
               "the claimed member deleted")  # fmt: skip
    eventually(lambda: members(cluster, namespace, "warm"), 30, "a new member")
    drain(cluster, namespace, "warm")


def test_members_are_handed_over_as_pool_members(
    cluster: Cluster, node_agent: FakeNodeAgent, operator: OperatorProcess, namespace: str
) -> None:
    create_pool(cluster, namespace, "warm", 1)
    member = eventually(lambda: members(cluster, namespace, "warm"), 30, "a member")[0]
    assert member["metadata"]["ownerReferences"][0]["kind"] == "SandboxPool"
    put = eventually(lambda: node_agent.puts(member["metadata"]["uid"]), 30, "its hand-over")[0]
    assert put.body is not None
    assert put.body["poolMember"] is True
    drain(cluster, namespace, "warm")
