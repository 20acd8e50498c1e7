"""Warm pools, pure: what a SandboxPool needs done, and which member serves a claim.

:func:`plan_pool` takes a pool and its members (Sandboxes labelled ``kubesandbox.dev/pool``)
and returns the members to create and to delete and the pool's status: members that were
claimed (labelled ``kubesandbox.dev/claimed-by``; their VM now serves another Sandbox) and
members whose boot-time fields no longer match the template are deleted, the rest is brought
to ``spec.replicas`` (surplus: not ready first, newest first). A pool being deleted wants no
member at all.

:func:`choose_member` answers a claim: a Sandbox that was never placed, whose spec matches a
pool's template on every boot-time field (:func:`kubesandbox_api.pool.matches`), gets that
pool's oldest ready member. The controller then re-points the member's VM to the Sandbox
(docs/pools.md, "How a claim works").
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubesandbox_api import API_VERSION, Sandbox
from kubesandbox_api.conditions import ConditionStatus, ConditionType, Phase, Reason
from kubesandbox_api.pool import (
    CLAIMED_BY_LABEL,
    POOL_KIND,
    POOL_LABEL,
    SandboxPool,
    boot_fields,
    matches,
)
from kubesandbox_operator.reconcile import conditions
from kubesandbox_operator.reconcile.conditions import Condition

JsonDict = dict[str, Any]


def pool_of(sandbox: Sandbox) -> str | None:
    """The pool a Sandbox is a member of (``None``: an ordinary Sandbox)."""
    labels = sandbox.metadata.get("labels") or {}
    value = labels.get(POOL_LABEL)
    return str(value) if value else None


def claimed(sandbox: Sandbox) -> bool:
    return bool((sandbox.metadata.get("labels") or {}).get(CLAIMED_BY_LABEL))


def deleting(sandbox: Sandbox) -> bool:
    return bool(sandbox.metadata.get("deletionTimestamp"))


def ready(member: Sandbox) -> bool:
    """Booted and serving: the node agent's Running and AgentConnected."""
    status = member.status
    if status is None or status.phase != Phase.RUNNING or not status.node_name:
        return False
    return any(
        c.type == ConditionType.AGENT_CONNECTED and c.status == ConditionStatus.TRUE
        for c in status.conditions
    )


def _ended(member: Sandbox) -> bool:
    """A member whose VM stopped or crashed: replaced. One that ``Failed`` (its template cannot
    run: an image that does not resolve, say) is kept, so a broken template does not boot in a
    loop; the pool stays not Ready and the member's status says why."""
    status = member.status
    return status is not None and status.phase in (Phase.STOPPED, Phase.CRASHED)


def selector(pool: SandboxPool) -> str:
    return f"{POOL_LABEL}={pool.name}"


@dataclass
class PoolPlan:
    create: int = 0
    delete: list[Sandbox] = field(default_factory=list)
    status: JsonDict = field(default_factory=dict)
    """The pool's status; empty when writing it would change nothing."""


def plan_pool(
    pool: SandboxPool, members: Iterable[Sandbox], now: datetime, in_flight: Collection[str] = ()
) -> PoolPlan:
    """``in_flight``: uids of members a claim is handing over right now (the claim deletes
    them itself once their VM serves the claimant; deleting them earlier would kill it)."""
    current = [m for m in members if not deleting(m)]
    template = boot_fields(pool.spec.template.spec)
    done = [m for m in current if claimed(m) and m.uid not in in_flight]
    stale = [
        m for m in current if not claimed(m) and (boot_fields(m.spec) != template or _ended(m))
    ]
    fresh = [m for m in current if not claimed(m) and m not in stale]
    wanted = 0 if pool.deleting else pool.spec.replicas
    # Keep the ready ones, then the oldest: a surplus sheds what is least far along.
    fresh.sort(key=lambda m: (not ready(m), str(m.metadata.get("creationTimestamp") or "")))
    surplus = fresh[wanted:]
    kept = fresh[:wanted]
    plan = PoolPlan(create=max(0, wanted - len(kept)), delete=[*done, *stale, *surplus])
    plan.status = _status(pool, kept, wanted, now)
    return plan


def _status(pool: SandboxPool, kept: list[Sandbox], wanted: int, now: datetime) -> JsonDict:
    serving = sum(1 for m in kept if ready(m))
    if serving >= wanted:
        wanted_ready = Condition.true(
            ConditionType.READY, Reason.POOL_FILLED, f"{serving} of {wanted} members Running"
        )
    else:
        wanted_ready = Condition.false(
            ConditionType.READY, Reason.POOL_FILLING, f"{serving} of {wanted} members Running"
        )
    existing = (
        [c.model_dump(mode="json", exclude_none=True) for c in pool.status.conditions]
        if pool.status
        else []
    )
    rendered = conditions.render(wanted_ready, existing, pool.generation, now)
    status: JsonDict = {
        "replicas": len(kept),
        "readyReplicas": serving,
        "selector": selector(pool),
        "observedGeneration": pool.generation,
        "conditions": [rendered],
    }
    current = pool.status.model_dump(mode="json") if pool.status else {}
    same = all(current.get(k) == v for k, v in status.items() if k != "conditions")
    if same and not conditions.changed(rendered, existing):
        return {}
    return status


def member_body(pool: SandboxPool) -> JsonDict:
    """A new member: the template, named after the pool, owned by it. Its lifecycle is the
    default one (Running, no time limits, not ephemeral): the template's lifecycle policies
    are the claimant's business, applied at claim time; an unclaimed member must neither
    drain, suspend nor delete itself while it waits."""
    template = pool.spec.template
    spec = template.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    spec["lifecycle"] = {}
    return {
        "apiVersion": API_VERSION,
        "kind": "Sandbox",
        "metadata": {
            "generateName": f"{pool.name[:52]}-",
            "namespace": pool.namespace,
            "labels": {**template.metadata.labels, POOL_LABEL: pool.name},
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": POOL_KIND,
                    "name": pool.name,
                    "uid": pool.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": spec,
    }


def wants_claim(sandbox: Sandbox, has_pod: bool) -> bool:
    """Whether a Sandbox may be served from a pool: never placed, and no member itself."""
    status = sandbox.status
    placed = status is not None and (
        status.node_name is not None or status.phase not in (None, Phase.PENDING)
    )
    return not (has_pod or placed or deleting(sandbox) or pool_of(sandbox) is not None)


@dataclass(frozen=True)
class Choice:
    pool: SandboxPool
    member: Sandbox
    node: str


def _node(member: Sandbox) -> str:
    return (member.status.node_name if member.status else None) or ""


def choose_member(
    sandbox: Sandbox,
    pools: Iterable[SandboxPool],
    members: Callable[[SandboxPool], Iterable[Sandbox]],
    reserved: Collection[str],
    usable_node: Callable[[str], bool],
) -> Choice | None:
    """The member that serves ``sandbox``: of the first matching pool (by name) that has one
    ready, unclaimed, not reserved by a claim in flight, on a node with a live node agent;
    the oldest such member."""
    for pool in sorted(pools, key=lambda p: p.name):
        if pool.deleting or pool.namespace != sandbox.namespace:
            continue
        if not matches(pool.spec.template.spec, sandbox.spec):
            continue
        candidates = [
            m
            for m in members(pool)
            if ready(m)
            and not claimed(m)
            and not deleting(m)
            and m.uid not in reserved
            and usable_node(_node(m))
        ]
        if candidates:
            oldest = min(candidates, key=lambda m: str(m.metadata.get("creationTimestamp") or ""))
            return Choice(pool, oldest, _node(oldest))
    return None
