"""``spec.image.sandbox``: whether a fork can start from its source, and where. Pure.

A fork starts from the live state of another Sandbox of the same namespace: its memory and
device state and a copy of its writable layer, taken by the node agent that runs the source.
So the source must be there, running (``Running`` or ``Paused``) or ``Suspended`` (its state
is already on disk), on a node; the fork's Pod is pinned to that node (a required node
affinity on ``metadata.name``, ANDed with the fork's own affinity); and the fork has the
source's machine: the same ``cpus`` and ``memory`` (the saved state is of that machine) and a
network interface exactly when the source has one (``network.policy: None`` on both or on
neither).

The source is needed only until the fork has started: once the node agent reports a phase
for the fork, it has its own copy, and deleting or changing the source changes nothing.
"""

from dataclasses import dataclass
from typing import Any

from kubesandbox_api import Sandbox
from kubesandbox_api.conditions import Phase, Reason
from kubesandbox_api.spec import NetworkPolicy
from kubesandbox_operator.reconcile.references import Problem

JsonDict = dict[str, Any]
FIELD = "spec.image.sandbox.name"
FORKABLE_PHASES = frozenset({Phase.RUNNING, Phase.PAUSED, Phase.SUSPENDED})
RETRY_SECONDS = 3.0
"""How soon a fork whose source is not ready yet is looked at again (the source's changes do
not wake the fork)."""


@dataclass(frozen=True)
class ForkSource:
    """The source as the fork needs it: its uid (the node agent finds it by uid) and node."""

    name: str
    uid: str
    node: str


def check_source(fork: Sandbox, source: Sandbox | None) -> ForkSource | Problem:
    """The source of ``fork`` (which has ``spec.image.sandbox``), or why it cannot start."""
    ref = fork.spec.image.sandbox
    assert ref is not None
    name = ref.name

    def refuse(why: str) -> Problem:
        return Problem(Reason.FORK_SOURCE_NOT_READY, f"{FIELD}: Sandbox {name!r} {why}")

    if name == fork.name:
        return refuse("is this Sandbox itself")
    if source is None or source.metadata.get("deletionTimestamp"):
        return refuse(f"does not exist in namespace {fork.namespace!r}")
    status = source.status
    phase = status.phase if status else None
    if phase not in FORKABLE_PHASES:
        return refuse(f"is {phase or 'Pending'}; it must be Running, Paused or Suspended")
    node = status.node_name if status else None
    if not node:
        return refuse("is on no node")
    if fork.spec.cpus != source.spec.cpus:
        return Problem(
            Reason.FORK_SOURCE_NOT_READY,
            f"spec.cpus: a fork has its source's machine: {source.spec.cpus} (Sandbox {name!r})",
        )
    if fork.spec.memory_mib != source.spec.memory_mib:
        return Problem(
            Reason.FORK_SOURCE_NOT_READY,
            f"spec.memory: a fork has its source's machine: {source.spec.memory_mib} MiB "
            f"(Sandbox {name!r})",
        )
    none = NetworkPolicy.NONE
    if (fork.spec.network.policy == none) != (source.spec.network.policy == none):
        return Problem(
            Reason.FORK_SOURCE_NOT_READY,
            f"spec.network.policy: None on a fork exactly when on its source (Sandbox {name!r} "
            f"has {source.spec.network.policy}): the source's network device is part of its "
            "state",
        )
    return ForkSource(name=name, uid=source.uid, node=node)


def pin_to_node(affinity: JsonDict | None, node: str) -> JsonDict:
    """``affinity`` with the Pod required on ``node`` (ANDed with each required term)."""
    pinned: JsonDict = dict(affinity or {})
    node_affinity: JsonDict = dict(pinned.get("nodeAffinity") or {})
    required: JsonDict = dict(
        node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    )
    on_node = {"key": "metadata.name", "operator": "In", "values": [node]}
    terms = [dict(t) for t in required.get("nodeSelectorTerms") or []] or [{}]
    for term in terms:
        term["matchFields"] = [*(term.get("matchFields") or []), on_node]
    required["nodeSelectorTerms"] = terms
    node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = required
    pinned["nodeAffinity"] = node_affinity
    return pinned
