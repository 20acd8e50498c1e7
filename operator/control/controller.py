"""Which Sandbox gets a pass, and when: the event-driven core of the operator.

Kopf watches the Sandboxes and hands every version it sees to :meth:`Controller.observe`; the
list-watches of :class:`~..clients.cluster.Cluster` follow sandbox Pods, node agent Leases and
the Secrets and ConfigMaps Sandboxes name, and wake the Sandboxes they concern. Either way
the Sandbox's key goes into one :class:`~.queue.WorkQueue`, and ``workers`` tasks take keys
from it and run :func:`~.reconcile_once`. So a pass happens when something the Sandbox depends
on changed, or at a deadline it really has (a retry after a conflict or an error, doubled
while it keeps failing); a settled Sandbox costs nothing, however many there are.

What is kept per Sandbox (all of it dropped when the Sandbox is deleted):

- its last version as compact JSON bytes, without ``managedFields`` and Kopf's copy of the
  spec (about 1 KiB; parsed again for each pass, which is cheaper than keeping the objects);
- the digest of the desired state its node agent accepted (32 characters);
- its key in the queue while it waits, and its retry deadline and failure count if any;
- in the caches: its Pod's view, its place in the node index, its references.

Passes start once every watch delivered its first list, so the first plan never mistakes
"not listed yet" for "does not exist".
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
from typing import Any

import structlog

from kubesandbox_api import Sandbox
from kubesandbox_kube import KubeError
from kubesandbox_kube.watch import run_all
from kubesandbox_operator.clients.events import EventPoster
from kubesandbox_operator.control import EmitEvent, Runtime, SandboxKey, reconcile_once
from kubesandbox_operator.control.pools import PoolController
from kubesandbox_operator.control.queue import WorkQueue
from kubesandbox_operator.reconcile.sandbox import Event

log = structlog.get_logger(__name__)
JsonDict = dict[str, Any]

FINALIZER = "kubesandbox.dev/finalizer"
KOPF_DIFFBASE = "kubesandbox.dev/last-handled-configuration"
TRANSIENT_RETRY_SECONDS = 5.0
PERMANENT_RETRY_SECONDS = 30.0
DEFAULT_WORKERS = 32
SETTLED_LOG_SECONDS = 3.0
"""Quiet for this long (longer than Kopf's 1 s per-object worker idle time) = settled."""


def key_of(body: JsonDict) -> SandboxKey:
    metadata = body.get("metadata") or {}
    return str(metadata.get("namespace") or ""), str(metadata.get("name") or "")


def _version(body: JsonDict) -> int:
    """The resourceVersion as a number (etcd's revision); 0 when it is not one."""
    version = str((body.get("metadata") or {}).get("resourceVersion") or "")
    return int(version) if version.isdigit() else 0


def compact(body: JsonDict) -> bytes:
    """The Sandbox as it is kept between passes: what a pass reads, as JSON."""
    metadata = dict(body.get("metadata") or {})
    metadata.pop("managedFields", None)
    annotations = dict(metadata.get("annotations") or {})
    if annotations.pop(KOPF_DIFFBASE, None) is not None:
        metadata["annotations"] = annotations
    return json.dumps({**body, "metadata": metadata}, separators=(",", ":")).encode()


class Controller:
    def __init__(
        self, runtime: Runtime, events: EventPoster, *, workers: int = DEFAULT_WORKERS
    ) -> None:
        self.runtime = runtime
        self.events = events
        self.workers = workers
        self.queue: WorkQueue[SandboxKey] = WorkQueue()
        self.sandboxes: dict[SandboxKey, bytes] = {}
        self.ready = asyncio.Event()
        """Set once the caches are filled and passes may start."""
        self._settled_log: asyncio.TimerHandle | None = None
        self.pools = PoolController(runtime.cluster.kube, runtime.pools)
        runtime.cluster.subscribe(self._wake, self._node_changed, self._written)

    def observe(self, body: JsonDict) -> None:
        """A version of a Sandbox (Kopf's watch): keep it, and give the Sandbox a pass."""
        key = key_of(body)
        self.sandboxes[key] = compact(body)
        self.runtime.pools.member_seen(body)
        self.queue.add(key)

    def _written(self, body: JsonDict) -> None:
        """The Sandbox as the pass's own status write left it: kept at once, so that a pass
        woken before the watch brings this version does not plan from the one before (its
        write would be refused as stale). Never over a newer version already seen."""
        key = key_of(body)
        if key in self.sandboxes and _version(body) > _version(json.loads(self.sandboxes[key])):
            self.sandboxes[key] = compact(body)

    def forget(self, key: SandboxKey) -> None:
        """The Sandbox is gone from the cluster: drop everything kept for it."""
        self.sandboxes.pop(key, None)
        self.runtime.pools.member_gone(*key)
        self.queue.forget(key)
        self.runtime.handed_over.pop(key, None)
        self.runtime.cluster.forget(key)
        self._log_when_settled()

    def forget_pool(self, key: tuple[str, str]) -> None:
        """The SandboxPool is gone from the cluster (its members went before it)."""
        self.runtime.pools.pool_gone(key)
        self._log_when_settled()

    async def hold(self, key: SandboxKey) -> None:
        """The Sandbox is being deleted: no more passes, and none in flight on return."""
        await self.queue.hold(key)

    def sizes(self) -> dict[str, int]:
        cluster = self.runtime.cluster
        return {
            "sandboxes": len(self.sandboxes),
            "pods": len(cluster.pods.pods),
            "nodes": len(cluster.pods.by_node),
            "leases": len(cluster.leases.agents),
            "references": len(cluster.references.values),
            "handed_over": len(self.runtime.handed_over),
            "pools": len(self.runtime.pools.pools),
            "pool_members": sum(len(m) for m in self.runtime.pools.members.values()),
            **self.queue.sizes(),
        }

    async def run(self) -> None:
        """Runs the list-watches and the workers until cancelled."""
        cluster = self.runtime.cluster
        async with asyncio.TaskGroup() as group:
            group.create_task(run_all(cluster.watches()), name="list-watches")
            await cluster.synced()
            log.info("controller.synced", **self.sizes())
            self.ready.set()
            for index in range(self.workers):
                group.create_task(self._work(), name=f"reconcile worker {index}")
            group.create_task(self.pools.run(), name="pools")

    async def _work(self) -> None:
        while True:
            key = await self.queue.get()
            try:
                await self._pass(key)
            except Exception:  # a bug in one pass must not take a worker away
                log.exception("sandbox.pass_crashed", namespace=key[0], sandbox=key[1])
                self.queue.retry(key, PERMANENT_RETRY_SECONDS)
            finally:
                self.queue.done(key)
                self._log_when_settled()

    async def _pass(self, key: SandboxKey) -> None:
        raw = self.sandboxes.get(key)
        if raw is None:
            return
        sandbox = Sandbox.from_body(json.loads(raw))
        metadata = sandbox.metadata
        if metadata.get("deletionTimestamp") or FINALIZER not in (metadata.get("finalizers") or []):
            # Deleting: the delete handler's. Not ours yet: Kopf adds the finalizer first, and
            # that change brings the Sandbox back here.
            return
        with structlog.contextvars.bound_contextvars(namespace=key[0], sandbox=key[1]):
            try:
                delay = await reconcile_once(self.runtime, sandbox, self._emitter(sandbox))
            except KubeError as error:
                log.warning("sandbox.pass_failed", error=str(error))
                self.events.post(
                    sandbox, warning=True, reason="ReconcileFailed", message=str(error)
                )
                base = TRANSIENT_RETRY_SECONDS if error.transient else PERMANENT_RETRY_SECONDS
                self.queue.retry(key, base)
                return
        if delay is None:
            self.queue.succeeded(key)
        else:
            self.queue.retry(key, delay)

    def _emitter(self, sandbox: Sandbox) -> EmitEvent:
        def emit(event: Event) -> None:
            self.events.post(
                sandbox, warning=event.warning, reason=str(event.reason), message=event.message
            )

        return emit

    def _wake(self, key: SandboxKey) -> None:
        if key in self.sandboxes:
            self.queue.add(key)
        else:
            self._log_when_settled()  # e.g. the Pod of a deleted Sandbox went

    def _log_when_settled(self) -> None:
        """After a burst of work, one log line with what is kept (``controller.settled``), once
        nothing happened for a moment; nothing at all while idle."""
        if self._settled_log is None and not self.queue.busy:
            loop = asyncio.get_running_loop()
            self._settled_log = loop.call_later(SETTLED_LOG_SECONDS, self._settled)

    def _settled(self) -> None:
        self._settled_log = None
        if self.queue.busy:
            return  # the last pass to finish logs it
        log.info("controller.settled", **self.sizes())
        give_back_memory()

    def _node_changed(self, node: str, keys: set[SandboxKey]) -> None:
        """A node agent came, went or was replaced: what it was given is to be given again."""
        for key in keys:
            self.runtime.handed_over.pop(key, None)
        log.info("node_agent.changed", node=node, sandboxes=len(keys))


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def give_back_memory() -> None:
    """After a burst: collect, then ask glibc to return its free pages to the system.

    Python frees the objects of a burst (thousands of watch events parsed at once), but glibc
    keeps the pages for later, so resident memory stayed at its peak. ``malloc_trim(0)`` hands
    them back; it runs once per burst (never while idle) and is a no-op without glibc."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
