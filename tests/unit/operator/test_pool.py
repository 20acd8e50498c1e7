from datetime import UTC, datetime
from itertools import count
from typing import Any

from kubesandbox_api import Sandbox, SandboxSpec
from kubesandbox_api.pool import CLAIMED_BY_LABEL, POOL_LABEL, SandboxPool
from kubesandbox_operator.clients.pools import PoolIndex
from kubesandbox_operator.control import as_reported
from kubesandbox_operator.reconcile.pool import (
    choose_member,
    member_body,
    plan_pool,
    wants_claim,
)

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
TEMPLATE: dict[str, Any] = {"image": {"oci": "busybox:1.36"}, "memory": 256}
_serial = count(1)


def pool(replicas: int = 2, name: str = "warm", **metadata: Any) -> SandboxPool:
    return SandboxPool.from_body(
        {
            "metadata": {"name": name, "namespace": "team", "uid": f"pool-{name}",
                         "generation": 4, **metadata},
            "spec": {"replicas": replicas,
                     "template": {"metadata": {"labels": {"tier": "warm"}}, "spec": TEMPLATE}},
        }
    )  # fmt: skip


RUNNING = {
    "phase": "Running",
    "nodeName": "node-0",
    "conditions": [{"type": "AgentConnected", "status": "True"}],
}


def member(
    status: dict[str, Any] | None = None,
    *,
    claimed: bool = False,
    deleting: bool = False,
    pool_name: str = "warm",
    **spec: Any,
) -> Sandbox:
    serial = next(_serial)
    labels = {POOL_LABEL: pool_name}
    if claimed:
        labels[CLAIMED_BY_LABEL] = "claimant-uid"
    metadata: dict[str, Any] = {
        "name": f"{pool_name}-{serial}",
        "namespace": "team",
        "uid": f"member-{serial}",
        "labels": labels,
        "creationTimestamp": f"2026-12-04T11:{serial:02d}:00Z",
    }
    if deleting:
        metadata["deletionTimestamp"] = "2026-12-04T12:00:00Z"
    return Sandbox.from_body({"metadata": metadata, "spec": {**TEMPLATE, **spec}, "status": status})


def claimant(status: dict[str, Any] | None = None, **spec: Any) -> Sandbox:
    return Sandbox.from_body(
        {
            "metadata": {"name": "mine", "namespace": "team", "uid": "claimant-uid"},
            "spec": {**TEMPLATE, "env": [{"name": "A", "value": "1"}], **spec},
            "status": status,
        }
    )


def names(members: list[Sandbox]) -> set[str]:
    return {m.name for m in members}


def test_an_empty_pool_creates_its_replicas() -> None:
    plan = plan_pool(pool(2), [], NOW)
    assert plan.create == 2
    assert plan.delete == []
    assert plan.status["replicas"] == 0
    assert plan.status["readyReplicas"] == 0
    assert plan.status["selector"] == "kubesandbox.dev/pool=warm"
    assert plan.status["observedGeneration"] == 4
    (ready,) = plan.status["conditions"]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "PoolFilling")


def test_booting_members_count_but_are_not_ready() -> None:
    plan = plan_pool(pool(2), [member(), member(RUNNING)], NOW)
    assert plan.create == 0
    assert plan.status["replicas"] == 2
    assert plan.status["readyReplicas"] == 1


def test_a_full_pool_is_ready_and_its_status_is_not_written_again() -> None:
    full = [member(RUNNING), member(RUNNING)]
    first = plan_pool(pool(2), full, NOW)
    assert first.status["conditions"][0]["reason"] == "PoolFilled"
    written = pool(2).model_dump(mode="json", by_alias=True)
    written["status"] = first.status
    again = plan_pool(SandboxPool.model_validate(written), full, NOW)
    assert again.create == 0
    assert again.status == {}


def test_a_claimed_member_is_deleted_and_replaced() -> None:
    taken = member(RUNNING, claimed=True)
    plan = plan_pool(pool(2), [taken, member(RUNNING)], NOW)
    assert plan.delete == [taken]
    assert plan.create == 1


def test_a_member_whose_claim_is_in_flight_is_replaced_but_not_deleted() -> None:
    taken = member(RUNNING, claimed=True)
    plan = plan_pool(pool(2), [taken, member(RUNNING)], NOW, in_flight={taken.uid})
    assert plan.delete == []
    assert plan.create == 1


def test_members_being_deleted_do_not_count() -> None:
    plan = plan_pool(pool(1), [member(RUNNING, deleting=True)], NOW)
    assert plan.create == 1
    assert plan.delete == []


def test_scaling_down_sheds_members_that_are_not_ready_first() -> None:
    booting, old, young = member(), member(RUNNING), member(RUNNING)
    plan = plan_pool(pool(1), [booting, old, young], NOW)
    assert plan.create == 0
    assert names(plan.delete) == names([booting, young])


def test_members_that_no_longer_match_the_template_are_replaced() -> None:
    outdated = member(RUNNING, cpus=2)
    plan = plan_pool(pool(1), [outdated], NOW)
    assert plan.delete == [outdated]
    assert plan.create == 1


def test_a_deleted_pool_wants_no_member() -> None:
    members = [member(RUNNING), member(RUNNING, claimed=True)]
    plan = plan_pool(pool(2, deletionTimestamp="2026-12-04T12:00:00Z"), members, NOW)
    assert plan.create == 0
    assert names(plan.delete) == names(members)


def test_member_body_is_the_template_owned_by_the_pool() -> None:
    body = member_body(pool())
    assert body["metadata"]["generateName"] == "warm-"
    assert body["metadata"]["labels"] == {"tier": "warm", POOL_LABEL: "warm"}
    (owner,) = body["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("SandboxPool", "pool-warm", True)
    assert SandboxSpec.model_validate(body["spec"]) == pool().spec.template.spec
    assert body["spec"]["memory"] == 256


def choose(sandbox: Sandbox, pools: list[SandboxPool], members: list[Sandbox], **kw: Any) -> Any:
    def of(p: SandboxPool) -> list[Sandbox]:
        return [m for m in members if m.metadata["labels"][POOL_LABEL] == p.name]

    return choose_member(
        sandbox, pools, of, kw.get("reserved", set()), kw.get("usable", lambda node: True)
    )


def test_a_matching_sandbox_gets_the_oldest_ready_member() -> None:
    booting, oldest, younger = member(), member(RUNNING), member(RUNNING)
    choice = choose(claimant(), [pool()], [booting, younger, oldest])
    assert choice is not None
    assert choice.member is oldest
    assert choice.node == "node-0"
    assert choice.pool.name == "warm"


def test_no_claim_without_a_ready_unclaimed_member_on_a_live_node() -> None:
    assert choose(claimant(), [pool()], [member()]) is None
    assert choose(claimant(), [pool()], [member(RUNNING, claimed=True)]) is None
    assert choose(claimant(), [pool()], [member(RUNNING, deleting=True)]) is None
    reserved = member(RUNNING)
    assert choose(claimant(), [pool()], [reserved], reserved={reserved.uid}) is None
    assert choose(claimant(), [pool()], [member(RUNNING)], usable=lambda node: False) is None


def test_a_sandbox_that_differs_at_boot_is_not_claimed() -> None:
    assert choose(claimant(cpus=2), [pool()], [member(RUNNING)]) is None
    assert choose(claimant(lifecycle={"state": "Stopped"}), [pool()], [member(RUNNING)]) is None


def test_the_first_matching_pool_by_name_serves() -> None:
    other = pool(name="alpha")
    members = [member(RUNNING), member(RUNNING, pool_name="alpha")]
    choice = choose(claimant(), [pool(), other], members)
    assert choice is not None
    assert choice.pool.name == "alpha"


def test_a_deleted_pool_serves_no_claim() -> None:
    gone = pool(deletionTimestamp="2026-12-04T12:00:00Z")
    assert choose(claimant(), [gone], [member(RUNNING)]) is None


def test_only_never_placed_sandboxes_that_are_not_members_may_claim() -> None:
    assert wants_claim(claimant(), has_pod=False)
    assert wants_claim(claimant({"phase": "Pending"}), has_pod=False)
    assert not wants_claim(claimant(), has_pod=True)
    assert not wants_claim(claimant({"phase": "Stopped", "nodeName": "node-0"}), has_pod=False)
    assert not wants_claim(member(), has_pod=False)


def test_the_pass_after_a_claim_plans_from_the_node_agents_report() -> None:
    pending = claimant(
        {
            "phase": "Pending",
            "conditions": [{"type": "Scheduled", "status": "False", "reason": "PodPending"}],
        }
    )
    pending = Sandbox.from_body(
        {**pending.model_dump(by_alias=True), "metadata": {**pending.metadata,
                                                           "resourceVersion": "41"}}
    )  # fmt: skip
    reported = {
        "phase": "Running",
        "pool": "warm",
        "conditions": [{"type": "AgentConnected", "status": "True", "reason": "AgentReady"}],
    }
    seen = as_reported(pending, reported)
    assert "resourceVersion" not in seen.metadata
    assert seen.status is not None
    assert (seen.status.phase, seen.status.pool) == ("Running", "warm")
    assert {c.type for c in seen.status.conditions} == {"Scheduled", "AgentConnected"}
    assert seen.spec == pending.spec


def test_only_changes_the_pools_plan_reads_wake_it() -> None:
    index = PoolIndex()
    woken: list[tuple[str, str]] = []
    index.wake = woken.append
    booting = member()
    body = booting.model_dump(mode="json", by_alias=True)
    body["metadata"]["resourceVersion"] = "1"
    index.member_seen(body)
    assert woken == [("team", "warm")]
    running = {**body, "status": RUNNING, "metadata": {**body["metadata"], "resourceVersion": "2"}}
    index.member_seen(running)
    assert len(woken) == 2
    sampled = {**running, "status": {**RUNNING, "metrics": {"cpuPercent": 3.0}},
               "metadata": {**body["metadata"], "resourceVersion": "3"}}  # fmt: skip
    index.member_seen(sampled)
    assert len(woken) == 2  # a metrics write changes nothing the pool plans from
    index.member_seen({**body, "metadata": {**body["metadata"], "resourceVersion": "0"}})
    assert index.members_of(pool())[0].status is not None  # an older version is not kept
    index.member_gone("team", booting.name)
    assert index.members == {}
    assert len(woken) == 3


def test_members_wait_without_the_templates_lifecycle_policies() -> None:
    timed = pool().model_dump(mode="json", by_alias=True)
    timed["spec"]["template"]["spec"]["lifecycle"] = {"idleTimeoutSeconds": 5, "ephemeral": True}
    body = member_body(SandboxPool.model_validate(timed))
    assert body["spec"]["lifecycle"] == {}


def test_members_that_stopped_or_crashed_are_replaced_but_failed_ones_are_kept() -> None:
    stopped, crashed = member({"phase": "Stopped"}), member({"phase": "Crashed"})
    failed = member({"phase": "Failed"})
    plan = plan_pool(pool(3), [stopped, crashed, failed], NOW)
    assert names(plan.delete) == names([stopped, crashed])
    assert plan.create == 2
    assert plan.status["readyReplicas"] == 0
