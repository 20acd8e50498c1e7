"""The operator's picture of what Sandboxes depend on, kept current by watches.

Three caches, each the :class:`~kubesandbox_kube.watch.Sink` of a list-watch; each tells the
controller which Sandboxes to look at again when something they depend on changes ("wake"):

- :class:`PodCache`: every sandbox Pod (label ``app.kubernetes.io/component=sandbox-pod``,
  selected by the apiserver) as a :class:`PodView` of ten short fields; a change wakes the
  Sandbox that controls the Pod. An index node → Sandboxes serves the Lease cache.
- :class:`LeaseCache`: node agent Leases in the system namespace. A renewal that changes
  nothing but the renew time wakes nobody; a new endpoint, a new holder (a restarted node
  agent) or a change of liveness wakes the Sandboxes on that node. The one real deadline, a
  Lease that runs out, is a timer per node (not per Sandbox): if no renewal came by the
  expiry, the Sandboxes on that node are woken and see the node lost.
- :class:`ReferenceCache`: Secrets and ConfigMaps, but only those some Sandbox refers to
  (their ``data`` and ``binaryData``); events for every other object are dropped on arrival.
  A reference seen for the first time is read once (a GET); from then on the watch keeps it.

Per Sandbox that is: one PodView (~0.5 KiB), one entry in the node index, and its references.
Everything is dropped when the Sandbox or the Pod goes (the leak test deletes in rounds).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from kubesandbox_operator.reconcile.podview import PodView, view
from kubesandbox_operator.reconcile.references import Kind, ObjectRef
from kubesandbox_operator.reconcile.sandbox import NodeAgent

JsonDict = dict[str, Any]
SandboxKey = tuple[str, str]
"""``(namespace, name)`` of a Sandbox."""
Wake = Callable[[SandboxKey], None]
ParseLease = Callable[[str, JsonDict], NodeAgent | None]

TOMBSTONE_SECONDS = 300.0
EXPIRY_MARGIN_SECONDS = 0.05


def _key(body: JsonDict) -> tuple[str, str]:
    metadata = body.get("metadata") or {}
    return str(metadata.get("namespace") or ""), str(metadata.get("name") or "")


def _ignore(_: SandboxKey) -> None:
    return None


class PodCache:
    def __init__(self, wake: Wake = _ignore) -> None:
        self.wake = wake
        self.pods: dict[tuple[str, str], PodView] = {}
        self.by_node: dict[str, set[SandboxKey]] = {}
        self._gone: collections.deque[tuple[float, str]] = collections.deque()
        self._gone_uids: set[str] = set()

    def get(self, namespace: str, name: str) -> PodView | None:
        return self.pods.get((namespace, name))

    def sandboxes_on(self, node: str) -> set[SandboxKey]:
        return set(self.by_node.get(node, ()))

    def upsert(self, body: JsonDict) -> None:
        self._put(view(body))

    def created(self, body: JsonDict) -> None:
        """A Pod this process just created: known at once, before its watch event arrives
        (a pass in between would otherwise try to create it again). Never over a newer
        version, and never a Pod whose deletion the watch already reported. The Sandbox is
        not woken: the pass that created the Pod planned with it."""
        pod = view(body)
        key = (pod.namespace, pod.name)
        if key not in self.pods and pod.uid not in self._gone_uids:
            self._put(pod, wake=False)

    def remove(self, body: JsonDict) -> None:
        pod = self.pods.pop(_key(body), None)
        if pod is None:
            return
        self._unindex(pod)
        self._bury(pod.uid)
        if pod.sandbox:
            self.wake((pod.namespace, pod.sandbox))

    def retain(self, keys: set[tuple[str, str]]) -> None:
        for key in [k for k in self.pods if k not in keys]:
            self.remove({"metadata": {"namespace": key[0], "name": key[1]}})

    def _put(self, pod: PodView, wake: bool = True) -> None:
        key = (pod.namespace, pod.name)
        old = self.pods.get(key)
        if old == pod:
            return
        if old is not None:
            self._unindex(old)
        self.pods[key] = pod
        if pod.sandbox and pod.node_name:
            self.by_node.setdefault(pod.node_name, set()).add((pod.namespace, pod.sandbox))
        if pod.sandbox and wake:
            self.wake((pod.namespace, pod.sandbox))

    def _unindex(self, pod: PodView) -> None:
        if pod.sandbox and pod.node_name and pod.node_name in self.by_node:
            keys = self.by_node[pod.node_name]
            keys.discard((pod.namespace, pod.sandbox))
            if not keys:
                del self.by_node[pod.node_name]

    def _bury(self, uid: str) -> None:
        now = time.monotonic()
        self._gone.append((now, uid))
        self._gone_uids.add(uid)
        while self._gone and self._gone[0][0] < now - TOMBSTONE_SECONDS:
            self._gone_uids.discard(self._gone.popleft()[1])


@dataclass(frozen=True)
class Announced:
    """A node agent's Lease as the operator keeps it."""

    agent: NodeAgent | None
    """``None`` when the Lease announces no usable endpoint."""
    holder: str
    """``holderIdentity``: a new one means a restarted node agent."""

    def alive(self, now: datetime) -> bool:
        return self.agent is not None and self.agent.alive(now)

    def identity(self) -> Announced:
        """Everything but the expiry, which every renewal moves."""
        if self.agent is None:
            return self
        return replace(self, agent=replace(self.agent, expires_at=datetime.min.replace(tzinfo=UTC)))


class LeaseCache:
    def __init__(
        self,
        prefix: str,
        parse: ParseLease,
        wake_node: Callable[[str], None],
    ) -> None:
        self.prefix = prefix
        self.parse = parse
        self.wake_node = wake_node
        self.agents: dict[str, Announced] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def get(self, node: str) -> Announced | None:
        return self.agents.get(node)

    def upsert(self, body: JsonDict) -> None:
        name = _key(body)[1]
        if not name.startswith(self.prefix):
            return  # the operator's own Lease, or someone else's
        node = name[len(self.prefix) :]
        try:
            agent = self.parse(node, body)
        except ValueError:
            agent = None  # a Lease that announces nothing usable is no live node agent
        holder = str((body.get("spec") or {}).get("holderIdentity") or "")
        new, old = Announced(agent, holder), self.agents.get(node)
        self.agents[node] = new
        now = datetime.now(UTC)
        self._arm(node, new, now)
        if old is None or old.identity() != new.identity() or old.alive(now) != new.alive(now):
            self.wake_node(node)

    def remove(self, body: JsonDict) -> None:
        name = _key(body)[1]
        node = name[len(self.prefix) :]
        if name.startswith(self.prefix) and self.agents.pop(node, None) is not None:
            self._disarm(node)
            self.wake_node(node)

    def retain(self, keys: set[tuple[str, str]]) -> None:
        names = {name for _, name in keys}
        for node in [n for n in self.agents if self.prefix + n not in names]:
            self.remove({"metadata": {"name": self.prefix + node}})

    def _arm(self, node: str, announced: Announced, now: datetime) -> None:
        """A timer at the Lease's expiry; a renewal replaces it before it fires."""
        self._disarm(node)
        if announced.agent is None or not announced.alive(now):
            return
        loop = asyncio.get_running_loop()
        delay = (announced.agent.expires_at - now).total_seconds() + EXPIRY_MARGIN_SECONDS
        self._timers[node] = loop.call_later(delay, self._expired, node)

    def _disarm(self, node: str) -> None:
        timer = self._timers.pop(node, None)
        if timer is not None:
            timer.cancel()

    def _expired(self, node: str) -> None:
        self._timers.pop(node, None)
        announced = self.agents.get(node)
        if announced is not None and not announced.alive(datetime.now(UTC)):
            self.wake_node(node)


RefKey = tuple[Kind, str, str]
"""``(kind, namespace, name)`` of a Secret or ConfigMap."""


class ReferenceCache:
    def __init__(self, wake: Wake = _ignore) -> None:
        self.wake = wake
        self.wanted: dict[RefKey, set[SandboxKey]] = {}
        self.values: dict[RefKey, JsonDict | None] = {}
        """Only wanted keys; ``None``: known not to exist."""
        self._refs: dict[SandboxKey, frozenset[RefKey]] = {}

    def sink(self, kind: Kind) -> _KindSink:
        return _KindSink(self, kind)

    def want(self, sandbox: SandboxKey, refs: set[ObjectRef]) -> list[RefKey]:
        """Records what ``sandbox`` refers to now; returns the keys not known yet."""
        keys = frozenset((ref.kind, sandbox[0], ref.name) for ref in refs)
        old = self._refs.get(sandbox, frozenset())
        if old != keys:
            for key in old - keys:
                self._unwant(sandbox, key)
            for key in keys - old:
                self.wanted.setdefault(key, set()).add(sandbox)
            if keys:
                self._refs[sandbox] = keys
            else:
                self._refs.pop(sandbox, None)
        return [key for key in keys if key not in self.values]

    def release(self, sandbox: SandboxKey) -> None:
        for key in self._refs.pop(sandbox, frozenset()):
            self._unwant(sandbox, key)

    def _unwant(self, sandbox: SandboxKey, key: RefKey) -> None:
        dependents = self.wanted.get(key)
        if dependents is None:
            return
        dependents.discard(sandbox)
        if not dependents:
            del self.wanted[key]
            self.values.pop(key, None)

    def fill(self, key: RefKey, body: JsonDict | None) -> None:
        """The answer of a GET: kept unless a watch event was first (it is at least as new)."""
        if key in self.wanted and key not in self.values:
            self.values[key] = None if body is None else _slim(key[0], body)

    def lookup(self, sandbox: SandboxKey) -> dict[ObjectRef, JsonDict | None]:
        return {
            ObjectRef(kind, name): self.values.get((kind, namespace, name))
            for kind, namespace, name in self._refs.get(sandbox, frozenset())
        }

    def observe(self, key: RefKey, value: JsonDict | None) -> None:
        """What the watch says of ``key``; wakes its Sandboxes when it changed."""
        if key not in self.wanted or (key in self.values and self.values[key] == value):
            return
        self.values[key] = value
        for sandbox in list(self.wanted[key]):
            self.wake(sandbox)


class _KindSink:
    def __init__(self, cache: ReferenceCache, kind: Kind) -> None:
        self.cache = cache
        self.kind = kind

    def upsert(self, body: JsonDict) -> None:
        key = (self.kind, *_key(body))
        if key in self.cache.wanted:
            self.cache.observe(key, _slim(self.kind, body))

    def remove(self, body: JsonDict) -> None:
        self.cache.observe((self.kind, *_key(body)), None)

    def retain(self, keys: set[tuple[str, str]]) -> None:
        for key in [k for k in self.cache.wanted if k[0] == self.kind and k[1:] not in keys]:
            self.cache.observe(key, None)


def _slim(kind: Kind, body: JsonDict) -> JsonDict:
    """What :func:`..reconcile.references.resolve` reads: the kind and the values."""
    slim: JsonDict = {"kind": kind, "data": body.get("data") or {}}
    if body.get("binaryData"):
        slim["binaryData"] = body["binaryData"]
    return slim
