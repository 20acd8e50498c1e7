"""What the operator needs to know of a sandbox Pod, and nothing more.

The operator learns about sandbox Pods from a watch and keeps one :class:`PodView` per Pod:
ten short fields instead of the Pod's body (a few KiB of JSON, several times that as Python
objects), so ten thousand Sandboxes cost a few MiB of Pod state. :func:`view` is the only
place that reads a Pod body; the plan (:mod:`.sandbox`) reads only views.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from kubesandbox_api import KIND

JsonDict = dict[str, Any]


@dataclass(frozen=True, slots=True)
class PodView:
    namespace: str
    name: str
    uid: str
    sandbox: str | None
    """The name of the Sandbox that controls this Pod (its controller owner reference)."""
    sandbox_uid: str | None
    node_name: str | None
    deleting: bool
    unschedulable: str | None
    """kube-scheduler's message when it found no node (``PodScheduled=False``, reason
    ``Unschedulable``); ``None`` otherwise."""

    @property
    def bound_node(self) -> str | None:
        """The node the Pod is bound to, unless the Pod is on its way out."""
        return None if self.deleting else self.node_name

    def owned_by(self, sandbox_uid: str) -> bool:
        """Whether this is that incarnation's Pod (not a stale one of a deleted namesake)."""
        return self.sandbox_uid == sandbox_uid


def view(pod: JsonDict) -> PodView:
    metadata = pod.get("metadata") or {}
    owner: JsonDict = next(
        (
            ref
            for ref in metadata.get("ownerReferences") or []
            if ref.get("kind") == KIND and ref.get("controller")
        ),
        {},
    )
    unschedulable = None
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("reason") == "Unschedulable":
            unschedulable = str(condition.get("message") or "no node fits the sandbox Pod")
    node = (pod.get("spec") or {}).get("nodeName")
    # Interned: thousands of Pods share a few namespaces, nodes and scheduler messages.
    return PodView(
        namespace=sys.intern(str(metadata.get("namespace") or "")),
        name=str(metadata.get("name") or ""),
        uid=str(metadata.get("uid") or ""),
        sandbox=owner.get("name"),
        sandbox_uid=owner.get("uid"),
        node_name=sys.intern(str(node)) if node else None,
        deleting=bool(metadata.get("deletionTimestamp")),
        unschedulable=sys.intern(unschedulable) if unschedulable else None,
    )
