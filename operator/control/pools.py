"""Keeps every SandboxPool at ``spec.replicas`` booted members: one pass per pool at a time.

A pool gets a pass when it or one of its members changed (:class:`~..clients.pools.PoolIndex`
wakes it): :func:`~..reconcile.pool.plan_pool` decides, this module acts. Members are created
(``generateName``, owned by the pool) and deleted (claimed ones, ones that no longer match the
template, the surplus) through the apiserver, and what the answers say is recorded in the
index at once, so a pass woken before the watch reports them does not act twice. The pool's
status (``replicas``, ``readyReplicas``, ``selector`` for the scale subresource, ``Ready``) is
merge-patched when it changed. A deleted pool drains: its delete handler (Kopf) deletes every
member that still exists and waits until they are gone; a member that served a claim is
already gone, and the Sandbox it serves is not the pool's.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import structlog

from kubesandbox_api import Sandbox
from kubesandbox_api.pool import POOL_PLURAL, SandboxPool
from kubesandbox_kube import KubeClient, KubeError, NotFound
from kubesandbox_kube.paths import SANDBOXES, ResourcePath
from kubesandbox_operator.clients.pools import PoolIndex, PoolKey
from kubesandbox_operator.control.queue import WorkQueue
from kubesandbox_operator.reconcile.pool import deleting, member_body, plan_pool, selector

log = structlog.get_logger(__name__)
POOLS = ResourcePath(SANDBOXES.group, SANDBOXES.version, POOL_PLURAL)
WORKERS = 4
RETRY_SECONDS = 5.0


class PoolController:
    def __init__(self, kube: KubeClient, index: PoolIndex, *, workers: int = WORKERS) -> None:
        self.kube = kube
        self.index = index
        self.workers = workers
        self.queue: WorkQueue[PoolKey] = WorkQueue()
        index.wake = self.queue.add

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for index in range(self.workers):
                group.create_task(self._work(), name=f"pool worker {index}")

    async def _work(self) -> None:
        while True:
            key = await self.queue.get()
            try:
                await self._pass(key)
                self.queue.succeeded(key)
            except KubeError as error:
                log.warning("pool.pass_failed", namespace=key[0], pool=key[1], error=str(error))
                self.queue.retry(key, RETRY_SECONDS)
            except Exception:
                log.exception("pool.pass_crashed", namespace=key[0], pool=key[1])
                self.queue.retry(key, RETRY_SECONDS)
            finally:
                self.queue.done(key)

    async def _pass(self, key: PoolKey) -> None:
        pool = self.index.pools.get(key)
        if pool is None:
            return
        members = await self._members(pool)
        plan = plan_pool(pool, members, datetime.now(UTC), self.index.reserved)
        sandboxes = SANDBOXES.in_namespace(pool.namespace)
        for member in plan.delete:
            with contextlib.suppress(NotFound):
                gone = await self.kube.delete(sandboxes.named(member.name), uid=member.uid)
                self.index.member_seen(gone, wake=False)
            log.info("pool.member_deleted", pool=pool.name, member=member.name)
        for _ in range(plan.create):
            created = await self.kube.create(sandboxes, member_body(pool))
            self.index.member_seen(created, wake=False)
            log.info("pool.member_created", pool=pool.name, member=created["metadata"]["name"])
        if plan.status and not pool.deleting:
            path = POOLS.in_namespace(pool.namespace).named(pool.name, "status")
            with contextlib.suppress(NotFound):
                await self.kube.merge_patch(path, {"status": plan.status})

    async def _members(self, pool: SandboxPool) -> list[Sandbox]:
        """The pool's members as the apiserver has them now. Counted from a list rather than
        from the watch: after a restart, the watch may not have delivered every member yet,
        and a pool must never boot more VMs than it was asked for."""
        path = SANDBOXES.in_namespace(pool.namespace)
        listed = await self.kube.list(path, label_selector=selector(pool))
        for body in listed:
            self.index.member_seen(body, wake=False)
        return [Sandbox.from_body(body) for body in listed]

    async def drain(self, pool: SandboxPool) -> int:
        """A deleted pool: deletes its members; how many still exist (0: drained)."""
        members = await self._members(pool)
        sandboxes = SANDBOXES.in_namespace(pool.namespace)
        for member in members:
            if deleting(member):
                continue
            with contextlib.suppress(NotFound):
                gone = await self.kube.delete(sandboxes.named(member.name), uid=member.uid)
                self.index.member_seen(gone, wake=False)
        return len(members)
