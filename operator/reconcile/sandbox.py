"""What to do for one Sandbox, given what was observed: the operator's whole policy, pure.

:func:`plan` takes the Sandbox, its Pod, the Lease of the node the Pod is bound to and the
result of resolving its references, and returns a :class:`Plan`: a Pod to create or delete,
whether to hand the desired state to the node agent, the operator's status fields, the Events
to emit. The controller executes plans; it decides nothing.

A plan never asks to be looked at again after a fixed time: everything it waits for (the
scheduler binding the Pod, a node agent's Lease, a Secret being created, the node agent's
report) arrives as a watch event, and the one deadline there is (a Lease that expires) is kept
per node by the Lease cache (docs/operator.md, "Watches, not polling").

Ownership of status (docs/api.md): the operator writes ``Scheduled``, ``Ready``, ``nodeName``,
``podName`` and the phases before the node agent reports (``Pending``, ``Scheduled``), plus
``Failed`` (references or policy) and ``Crashed`` (node lost). Once the node agent has written
a phase of its own, the operator leaves ``phase`` to it.
"""

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubesandbox_api import Sandbox
from kubesandbox_api.conditions import ConditionType, Phase, Reason
from kubesandbox_api.spec import RestartPolicy
from kubesandbox_operator.reconcile import conditions
from kubesandbox_operator.reconcile.conditions import Condition
from kubesandbox_operator.reconcile.fork import ForkSource, pin_to_node
from kubesandbox_operator.reconcile.pod import PodSettings, desired_pod
from kubesandbox_operator.reconcile.podview import PodView
from kubesandbox_operator.reconcile.references import Problem, Resolution
from kubesandbox_operator.reconcile.snapshot import SnapshotSource

JsonDict = dict[str, Any]

NODE_AGENT_PHASES = frozenset(
    {
        Phase.PULLING,
        Phase.BOOTING,
        Phase.RUNNING,
        Phase.PAUSED,
        Phase.DRAINING,
        Phase.STOPPING,
        Phase.STOPPED,
        Phase.SUSPENDING,
        Phase.SUSPENDED,
        Phase.RESUMING,
    }
)


def fork_started(sandbox: Sandbox) -> bool:
    """Whether the node agent has taken a fork over: it has its own copy of the source's state
    from then on, and the source is no longer needed (``reconcile.fork``)."""
    status = sandbox.status
    if status is None:
        return False
    return status.started_at is not None or status.phase in NODE_AGENT_PHASES | {Phase.CRASHED}


@dataclass(frozen=True)
class NodeAgent:
    """A node agent as its Lease announces it."""

    node: str
    endpoint: str
    emulation: bool
    expires_at: datetime
    certificate: str | None = None
    """The certificate it serves (PEM) when it announces one: the only one trusted for it."""

    def alive(self, now: datetime) -> bool:
        return now < self.expires_at


@dataclass(frozen=True)
class Observed:
    sandbox: Sandbox
    pod: PodView | None
    """The sandbox Pod as it exists (any incarnation; checked against the owner uid)."""
    agent: NodeAgent | None
    """The Lease of the node the Pod is bound to (``None``: no Lease, or not bound)."""
    resolution: Resolution
    now: datetime
    allow_host_paths: bool = False
    pod_settings: PodSettings = field(default_factory=PodSettings)
    fork: ForkSource | SnapshotSource | Problem | None = None
    """``spec.image.sandbox``'s source checked (``fork.check_source``), or
    ``spec.image.snapshot``'s snapshot (``snapshot.check_snapshot``), while the sandbox has
    not started; ``None`` otherwise. Either pins the Pod to the node that holds the data."""


@dataclass(frozen=True)
class Event:
    reason: Reason
    message: str
    warning: bool = False


@dataclass
class Plan:
    create_pod: JsonDict | None = None
    delete_pod: bool = False
    send_to_agent: NodeAgent | None = None
    status: JsonDict = field(default_factory=dict)
    """The operator's status fields to apply; empty when nothing would change."""
    events: list[Event] = field(default_factory=list)


def host_path_uses(sandbox: Sandbox) -> list[str]:
    """The fields of the spec that name paths on the node."""
    spec, uses = sandbox.spec, []
    if spec.image.disk:
        uses.append("spec.image.disk.path")
    if spec.image.bind:
        uses.append("spec.image.bind.path")
    for i, volume in enumerate(spec.volumes):
        if volume.bind:
            uses.append(f"spec.volumes[{i}].bind.path")
    for i, patch in enumerate(spec.patches):
        if patch.copy_file and patch.copy_file.source.host_path:
            uses.append(f"spec.patches[{i}].copyFile.source.hostPath")
        if patch.copy_dir and patch.copy_dir.source.host_path:
            uses.append(f"spec.patches[{i}].copyDir.source.hostPath")
    return uses


def plan(observed: Observed) -> Plan:
    """The operator's decision for one Sandbox."""
    sandbox = observed.sandbox
    pod = observed.pod if observed.pod and observed.pod.owned_by(sandbox.uid) else None
    problems = list(observed.resolution.problems)
    if not observed.allow_host_paths:
        problems += [
            Problem(Reason.POLICY_VIOLATION, f"{use}: host paths are not allowed here")
            for use in host_path_uses(sandbox)
        ]
    fork = observed.fork
    if isinstance(fork, Problem):
        problems.append(fork)
    if problems:
        step = _refuse(problems)
    elif pod is None:
        node = fork.node if isinstance(fork, ForkSource | SnapshotSource) else None
        step = _place(sandbox, observed.pod_settings, node)
    elif (node := pod.bound_node) is None:
        step = _wait_for_scheduler(pod)
    elif observed.agent is None or not observed.agent.alive(observed.now):
        step = _without_agent(sandbox, node, observed.agent)
    else:
        step = _hand_over(sandbox, node, observed.agent)
    step.plan.status = _status_patch(sandbox, step, pod, observed.now)
    step.plan.events += _transition_events(sandbox, step.conditions)
    return step.plan


@dataclass
class _Step:
    """One branch's decision: the plan, the phase to write (or None) and the conditions."""

    plan: Plan
    phase: Phase | None
    conditions: list[Condition]
    node: str | None = None


def _refuse(problems: list[Problem]) -> _Step:
    message = "; ".join(p.message for p in problems)
    events = [Event(p.reason, p.message, warning=True) for p in problems]
    ready = Condition.false(ConditionType.READY, problems[0].reason, message)
    return _Step(Plan(events=events), Phase.FAILED, [ready])


def _place(sandbox: Sandbox, settings: PodSettings, node: str | None) -> _Step:
    """The sandbox Pod; ``node``: a fork's (its source's node) or a sandbox's from a
    snapshot (the snapshot's node), to which it is pinned."""
    status = sandbox.status
    crashed = status is not None and status.phase == Phase.CRASHED
    if crashed and sandbox.spec.lifecycle.restart_policy is RestartPolicy.NEVER:
        return _Step(Plan(), None, [])  # crashed, and not to be restarted
    pending = "sandbox Pod created; waiting for kube-scheduler"
    pod = desired_pod(sandbox, settings)
    if node is not None:
        pod["spec"]["affinity"] = pin_to_node(pod["spec"].get("affinity"), node)
    return _Step(
        Plan(create_pod=pod),
        Phase.PENDING,
        [
            Condition.false(ConditionType.SCHEDULED, Reason.POD_PENDING, pending),
            Condition.false(ConditionType.READY, Reason.POD_PENDING, pending),
        ],
    )


def _wait_for_scheduler(pod: PodView) -> _Step:
    if pod.unschedulable is not None:
        reason, message = Reason.UNSCHEDULABLE, pod.unschedulable
    else:
        reason, message = Reason.POD_PENDING, "waiting for kube-scheduler"
    return _Step(
        Plan(),
        Phase.PENDING,
        [
            Condition.false(ConditionType.SCHEDULED, reason, message),
            Condition.false(ConditionType.READY, reason, message),
        ],
    )


def _without_agent(sandbox: Sandbox, node: str, agent: NodeAgent | None) -> _Step:
    status = sandbox.status
    restart = sandbox.spec.lifecycle.restart_policy is not RestartPolicy.NEVER
    phase = status.phase if status else None
    if status is not None and phase == Phase.CRASHED and status.node_name == node:
        # Already reported lost; replace the Pod if the restart policy says so.
        return _Step(Plan(delete_pod=restart), None, [], node)
    ran_there = status is not None and status.node_name == node
    if agent is not None and ran_there and phase not in (None, Phase.PENDING, Phase.SCHEDULED):
        # The node agent that ran this sandbox stopped renewing its Lease: the node is lost.
        message = f"node {node} lost: its node agent's Lease expired"
        return _Step(
            Plan(delete_pod=restart, events=[Event(Reason.NODE_LOST, message, warning=True)]),
            Phase.CRASHED,
            [
                Condition.false(ConditionType.SCHEDULED, Reason.NODE_LOST, message),
                Condition.false(ConditionType.READY, Reason.NODE_LOST, message),
            ],
            node,
        )
    message = f"bound to {node}, but no node agent holds a live Lease there"
    return _Step(
        Plan(),
        Phase.PENDING,
        [
            Condition.false(ConditionType.SCHEDULED, Reason.NO_NODE_AGENT, message),
            Condition.false(ConditionType.READY, Reason.NO_NODE_AGENT, message),
        ],
        node,
    )


_OPERATOR_REFUSALS = {
    Reason.SECRET_NOT_FOUND,
    Reason.CONFIG_MAP_NOT_FOUND,
    Reason.POLICY_VIOLATION,
    Reason.FORK_SOURCE_NOT_READY,
}


def _node_agent_owns_phase(sandbox: Sandbox) -> bool:
    """Whether the current phase is the node agent's report, which the operator must keep.

    ``Crashed`` and ``Failed`` are written by both: the node agent's (a VM that crashed, an
    image that does not resolve) stand; the operator's own (a lost node, a missing Secret) are
    taken back once the sandbox is placed again or the problem is gone."""
    status = sandbox.status
    if status is None or status.phase is None:
        return False
    if status.phase in NODE_AGENT_PHASES:
        return True
    reasons = {c.type: c.reason for c in status.conditions}
    if status.phase == Phase.CRASHED:
        return reasons.get(ConditionType.SCHEDULED) != Reason.NODE_LOST
    if status.phase == Phase.FAILED:
        return reasons.get(ConditionType.READY) not in _OPERATOR_REFUSALS
    return False


def _hand_over(sandbox: Sandbox, node: str, agent: NodeAgent) -> _Step:
    current = sandbox.status.phase if sandbox.status else None
    running = current == Phase.RUNNING and _status_of(sandbox, ConditionType.AGENT_CONNECTED)
    ready = (
        Condition.true(ConditionType.READY, Reason.RUNNING, "serving commands")
        if running
        else Condition.false(
            ConditionType.READY, _not_ready_reason(current), f"phase {current or 'Scheduled'}"
        )
    )
    return _Step(
        Plan(send_to_agent=agent),
        None if _node_agent_owns_phase(sandbox) else Phase.SCHEDULED,
        [
            Condition.true(ConditionType.SCHEDULED, Reason.POD_BOUND, f"bound to node {node}"),
            ready,
        ],
        node,
    )


def _existing(sandbox: Sandbox) -> list[JsonDict]:
    if sandbox.status is None:
        return []
    return [c.model_dump(mode="json", exclude_none=True) for c in sandbox.status.conditions]


def _status_of(sandbox: Sandbox, type_: ConditionType) -> bool:
    return any(c["type"] == type_ and c["status"] == "True" for c in _existing(sandbox))


def _not_ready_reason(phase: Phase | None) -> Reason:
    return {
        Phase.CRASHED: Reason.VMM_EXITED,
        Phase.PAUSED: Reason.PAUSED_BY_USER,
        Phase.STOPPED: Reason.STOPPED_BY_USER,
        Phase.SUSPENDING: Reason.SUSPENDED_BY_USER,
        Phase.SUSPENDED: Reason.SUSPENDED_BY_USER,
        Phase.RESUMING: Reason.RESUMED,
        Phase.PULLING: Reason.PULLING,
        Phase.BOOTING: Reason.BOOTING,
    }.get(phase or Phase.PENDING, Reason.POD_BOUND)


def _status_patch(sandbox: Sandbox, step: _Step, pod: PodView | None, now: datetime) -> JsonDict:
    """The operator's status fields, or ``{}`` when writing them would change nothing."""
    existing = _existing(sandbox)
    rendered = [conditions.render(c, existing, sandbox.generation, now) for c in step.conditions]
    fields: JsonDict = {}
    if step.phase is not None:
        fields["phase"] = str(step.phase)
    if pod is not None:
        fields["podName"] = pod.name
    if step.node is not None:
        fields["nodeName"] = step.node
    if rendered:
        fields["conditions"] = rendered
    current = sandbox.status.model_dump(mode="json") if sandbox.status else {}
    same = all(current.get(k) == v for k, v in fields.items() if k != "conditions")
    if same and not any(conditions.changed(c, existing) for c in rendered):
        return {}
    return fields


_ANNOUNCED = (Reason.POD_BOUND, Reason.UNSCHEDULABLE, Reason.NO_NODE_AGENT)


def _transition_events(sandbox: Sandbox, wanted: list[Condition]) -> list[Event]:
    """An Event for each scheduling transition (failures carry their own Events)."""
    existing = {c["type"]: c for c in _existing(sandbox)}
    return [
        Event(c.reason, c.message, warning=c.reason is not Reason.POD_BOUND)
        for c in wanted
        if c.type is ConditionType.SCHEDULED
        and c.reason in _ANNOUNCED
        and existing.get(c.type, {}).get("reason") != c.reason
    ]
