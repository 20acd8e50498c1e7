"""The operator's view of the cluster: the reads and writes its reconcile loop needs.

Reads are answered from watches (:mod:`.cache`, fed by the list-watches of
:mod:`kubesandbox_kube.watch` that :meth:`Cluster.watches` returns), never by a request per
Sandbox per pass: an idle operator with ten thousand Sandboxes sends nothing. The one read
left is a Secret or ConfigMap that a Sandbox names for the first time (a GET, then the watch
keeps it). Writes go through :class:`kubesandbox_kube.KubeClient`: the sandbox Pod, and the
operator's status fields through server-side apply as ``kubesandbox-operator``.
"""

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog

from kubesandbox_api import API_VERSION, KIND, Sandbox
from kubesandbox_api.snapshot import SandboxSnapshot
from kubesandbox_kube import KubeClient, NotFound, nodeagents
from kubesandbox_kube.paths import (
    CONFIG_MAPS,
    LEASES,
    PODS,
    SANDBOX_SNAPSHOTS,
    SANDBOXES,
    SECRETS,
)
from kubesandbox_kube.watch import ListWatch
from kubesandbox_operator.clients.cache import (
    LeaseCache,
    PodCache,
    ReferenceCache,
    SandboxKey,
    Wake,
)
from kubesandbox_operator.reconcile.pod import COMPONENT_LABEL, POD_COMPONENT, pod_name
from kubesandbox_operator.reconcile.podview import PodView
from kubesandbox_operator.reconcile.references import ObjectRef, referenced_objects
from kubesandbox_operator.reconcile.sandbox import NodeAgent

JsonDict = dict[str, Any]
FIELD_MANAGER = "kubesandbox-operator"
SANDBOX_POD_SELECTOR = f"{COMPONENT_LABEL}={POD_COMPONENT}"
log = structlog.get_logger(__name__)


class Cluster:
    def __init__(self, kube: KubeClient, agents_namespace: str) -> None:
        self.kube = kube
        self.agents_namespace = agents_namespace
        self.pods = PodCache(self._wake)
        self.leases = LeaseCache(nodeagents.LEASE_PREFIX, parse_lease, self._node_changed)
        self.references = ReferenceCache(self._wake)
        self._wake_listeners: list[Wake] = []
        self._written_listeners: list[Callable[[JsonDict], None]] = []
        self._node_listeners: list[Callable[[str, set[SandboxKey]], None]] = []
        self._watches: list[ListWatch] = []

    def subscribe(
        self,
        wake: Wake,
        node_changed: Callable[[str, set[SandboxKey]], None] | None = None,
        written: Callable[[JsonDict], None] | None = None,
    ) -> None:
        """``wake(key)`` when something a Sandbox depends on changed; ``node_changed(node,
        keys)`` when the node agent of a node came, went, or was replaced; ``written(body)``
        with the Sandbox as a status write left it (before its watch event arrives)."""
        self._wake_listeners.append(wake)
        if node_changed is not None:
            self._node_listeners.append(node_changed)
        if written is not None:
            self._written_listeners.append(written)

    def watches(self) -> list[ListWatch]:
        """The list-watches that feed the caches (made once; run them with ``watch.run_all``)."""
        if not self._watches:
            self._watches = [
                ListWatch(self.kube, PODS, self.pods, label_selector=SANDBOX_POD_SELECTOR),
                ListWatch(self.kube, LEASES.in_namespace(self.agents_namespace), self.leases),
                ListWatch(self.kube, SECRETS, self.references.sink("Secret")),
                ListWatch(self.kube, CONFIG_MAPS, self.references.sink("ConfigMap")),
            ]
        return self._watches

    async def synced(self) -> None:
        """Returns once every watch delivered its first list (at once when none was created)."""
        await asyncio.gather(*(watch.synced.wait() for watch in self._watches))

    def _wake(self, key: SandboxKey) -> None:
        for wake in self._wake_listeners:
            wake(key)

    def _node_changed(self, node: str) -> None:
        keys = self.pods.sandboxes_on(node)
        for listener in self._node_listeners:
            listener(node, keys)
        for key in keys:
            self._wake(key)

    async def pod(self, sandbox: Sandbox) -> PodView | None:
        return self.pods.get(sandbox.namespace, pod_name(sandbox.name))

    async def create_pod(self, pod: JsonDict) -> None:
        created = await self.kube.create(PODS.in_namespace(pod["metadata"]["namespace"]), pod)
        self.pods.created(created)

    async def delete_pod(self, pod: PodView, *, grace_seconds: int | None = 0) -> None:
        """Deletes that incarnation of the Pod; at once by default (its node is lost),
        ``grace_seconds=None`` lets the kubelet stop it as usual."""
        path = PODS.in_namespace(pod.namespace).named(pod.name)
        with contextlib.suppress(NotFound):
            await self.kube.delete(path, uid=pod.uid, grace_seconds=grace_seconds)

    async def node_agent(self, node: str) -> NodeAgent | None:
        announced = self.leases.get(node)
        return announced.agent if announced else None

    async def referenced(self, sandbox: Sandbox) -> dict[ObjectRef, JsonDict | None]:
        """The Secrets and ConfigMaps the spec names, from the watch; one named for the first
        time is read once here (the watch keeps it from then on)."""
        key = (sandbox.namespace, sandbox.name)
        for kind, namespace, name in self.references.want(key, referenced_objects(sandbox.spec)):
            path = (SECRETS if kind == "Secret" else CONFIG_MAPS).in_namespace(namespace)
            try:
                body: JsonDict | None = await self.kube.get(path.named(name))
            except NotFound:
                body = None
            self.references.fill((kind, namespace, name), body)
        return self.references.lookup(key)

    async def sandbox(self, namespace: str, name: str) -> Sandbox | None:
        """Another Sandbox (a fork's source), read once per call: only forks that have not
        started yet ask."""
        try:
            body: JsonDict = await self.kube.get(SANDBOXES.in_namespace(namespace).named(name))
        except NotFound:
            return None
        return Sandbox.from_body(body)

    async def snapshot(self, namespace: str, name: str) -> SandboxSnapshot | None:
        """A SandboxSnapshot (what a sandbox from it starts from), read once per call: only
        sandboxes that have not started yet ask."""
        try:
            body: JsonDict = await self.kube.get(
                SANDBOX_SNAPSHOTS.in_namespace(namespace).named(name)
            )
        except NotFound:
            return None
        return SandboxSnapshot.from_body(body)

    def forget(self, key: SandboxKey) -> None:
        """The Sandbox is gone: drop what was kept for it."""
        self.references.release(key)

    async def apply_status(self, sandbox: Sandbox, status: JsonDict) -> None:
        """Applies the operator's status fields, on the condition that the Sandbox is still
        the version the plan was made from (``Conflict`` otherwise): a plan made from a stale
        read must not take back what the node agent wrote meanwhile (``phase: Scheduled`` over
        its ``Booting``, which it does not write again until its next transition)."""
        metadata = {"name": sandbox.name, "namespace": sandbox.namespace}
        if sandbox.metadata.get("resourceVersion"):
            metadata["resourceVersion"] = str(sandbox.metadata["resourceVersion"])
        body = {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "status": status}
        path = SANDBOXES.in_namespace(sandbox.namespace).named(sandbox.name, "status")
        written = await self.kube.apply(path, body, field_manager=FIELD_MANAGER)
        for listener in self._written_listeners:
            listener(written)


def parse_lease(node: str, lease: JsonDict) -> NodeAgent | None:
    """The node agent a Lease announces (``None``, logged, when the Lease is unusable)."""
    try:
        announced = nodeagents.parse_lease(node, lease)
    except nodeagents.LeaseError as error:
        log.warning("node_agent.lease_unusable", node=node, error=str(error))
        return None
    return NodeAgent(
        node=node,
        endpoint=announced.endpoint,
        emulation=announced.emulation,
        expires_at=announced.expires_at,
        certificate=announced.certificate,
    )
