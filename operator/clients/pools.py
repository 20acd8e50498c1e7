"""What the watches told about SandboxPools and their members (the operator's pool cache).

Pools come from Kopf's watch of ``sandboxpools``; members are the Sandboxes labelled
``kubesandbox.dev/pool``, taken from the Sandbox watch as it passes through the controller.
Both are few (a pool's ``replicas``), so they are kept parsed. A change to a pool, or a change
of a member that the pool's plan reads (readiness, deletion, the claimed-by label, its
generation), wakes that pool (``wake``); a member's metrics write wakes nobody, so an idle pool
costs no request. What this process itself created or deleted is
recorded at once (:meth:`PoolIndex.member_seen` with ``wake=False``), so a pass woken before
the watch reports it never creates a member twice. ``reserved`` holds the members a claim in
flight has picked, so two claims never pick the same one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kubesandbox_api import Sandbox
from kubesandbox_api.pool import SandboxPool
from kubesandbox_operator.reconcile.pool import claimed, deleting, pool_of, ready

JsonDict = dict[str, Any]
PoolKey = tuple[str, str]
"""``(namespace, name)`` of a SandboxPool."""


def _ignore(_: PoolKey) -> None:
    return None


class PoolIndex:
    def __init__(self) -> None:
        self.wake: Callable[[PoolKey], None] = _ignore
        self.pools: dict[PoolKey, SandboxPool] = {}
        self.members: dict[PoolKey, dict[str, Sandbox]] = {}
        """Pool → member name → member."""
        self.reserved: set[str] = set()
        """uids of members a claim in flight picked."""

    def pool_seen(self, body: JsonDict) -> PoolKey:
        pool = SandboxPool.from_body(body)
        key = (pool.namespace, pool.name)
        self.pools[key] = pool
        self.wake(key)
        return key

    def pool_gone(self, key: PoolKey) -> None:
        self.pools.pop(key, None)

    def in_namespace(self, namespace: str) -> list[SandboxPool]:
        return [pool for (ns, _), pool in self.pools.items() if ns == namespace]

    def members_of(self, pool: SandboxPool) -> list[Sandbox]:
        return list(self.members.get((pool.namespace, pool.name), {}).values())

    def member_seen(self, body: JsonDict, *, wake: bool = True) -> None:
        """A version of a Sandbox; kept if it is a pool's member."""
        sandbox = Sandbox.from_body(body)
        pool = pool_of(sandbox)
        if pool is None:
            return
        key = (sandbox.namespace, pool)
        known = self.members.setdefault(key, {})
        old = known.get(sandbox.name)
        if old is not None and _version(old) > _version(sandbox):
            return  # an older version than the one this process already knows
        known[sandbox.name] = sandbox
        if wake and (old is None or _planned_from(old) != _planned_from(sandbox)):
            self.wake(key)

    def member_gone(self, namespace: str, name: str) -> None:
        for key, known in list(self.members.items()):
            if key[0] == namespace and name in known:
                self.reserved.discard(known.pop(name).uid)
                if not known:
                    del self.members[key]
                self.wake(key)
                return


def _planned_from(member: Sandbox) -> tuple[object, ...]:
    """What :func:`~..reconcile.pool.plan_pool` reads of a member."""
    return (member.uid, member.generation, ready(member), deleting(member), claimed(member))


def _version(sandbox: Sandbox) -> int:
    version = str(sandbox.metadata.get("resourceVersion") or "")
    return int(version) if version.isdigit() else 0
