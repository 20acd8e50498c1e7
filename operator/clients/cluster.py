"""The operator's view of the cluster: the reads and writes its reconcile loop needs.

Every call goes through :class:`kubesandbox_kube.KubeClient`; this module only knows which
objects to read for an observation and how the operator writes what it owns (status through
server-side apply as ``kubesandbox-operator``).
"""

import contextlib
from typing import Any

import structlog

from kubesandbox_api import API_VERSION, KIND, Sandbox
from kubesandbox_kube import KubeClient, NotFound, nodeagents
from kubesandbox_kube.paths import CONFIG_MAPS, LEASES, PODS, SANDBOXES, SECRETS
from kubesandbox_operator.reconcile.pod import pod_name
from kubesandbox_operator.reconcile.references import ObjectRef, referenced_objects
from kubesandbox_operator.reconcile.sandbox import NodeAgent

JsonDict = dict[str, Any]
FIELD_MANAGER = "kubesandbox-operator"
log = structlog.get_logger(__name__)


class Cluster:
    def __init__(self, kube: KubeClient, agents_namespace: str) -> None:
        self.kube = kube
        self.agents_namespace = agents_namespace

    async def pod(self, sandbox: Sandbox) -> JsonDict | None:
        try:
            return await self.kube.get(
                PODS.in_namespace(sandbox.namespace).named(pod_name(sandbox.name))
            )
        except NotFound:
            return None

    async def create_pod(self, pod: JsonDict) -> None:
        await self.kube.create(PODS.in_namespace(pod["metadata"]["namespace"]), pod)

    async def delete_pod(self, pod: JsonDict) -> None:
        metadata = pod["metadata"]
        path = PODS.in_namespace(metadata["namespace"]).named(metadata["name"])
        with contextlib.suppress(NotFound):
            await self.kube.delete(path, uid=metadata["uid"], grace_seconds=0)

    async def node_agent(self, node: str) -> NodeAgent | None:
        try:
            lease = await self.kube.get(
                LEASES.in_namespace(self.agents_namespace).named(nodeagents.lease_name(node))
            )
        except NotFound:
            return None
        return parse_lease(node, lease)

    async def referenced(self, sandbox: Sandbox) -> dict[ObjectRef, JsonDict | None]:
        found: dict[ObjectRef, JsonDict | None] = {}
        for ref in referenced_objects(sandbox.spec):
            kind = SECRETS if ref.kind == "Secret" else CONFIG_MAPS
            try:
                found[ref] = await self.kube.get(
                    kind.in_namespace(sandbox.namespace).named(ref.name)
                )
            except NotFound:
                found[ref] = None
        return found

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
        await self.kube.apply(path, body, field_manager=FIELD_MANAGER)


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
