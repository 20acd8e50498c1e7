from datetime import UTC, datetime, timedelta
from typing import Any

from kubesandbox_api import Sandbox
from kubesandbox_api.conditions import ConditionType, Phase, Reason
from kubesandbox_operator.reconcile.pod import PodSettings, desired_pod, pod_name
from kubesandbox_operator.reconcile.podview import view
from kubesandbox_operator.reconcile.references import Problem, Resolution
from kubesandbox_operator.reconcile.sandbox import (
    NodeAgent,
    Observed,
    Plan,
    plan,
)

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
UID = "0b7e6d2c-0000-4000-8000-000000000001"


def sandbox(status: dict[str, Any] | None = None, **spec: Any) -> Sandbox:
    return Sandbox.from_body(
        {
            "metadata": {"name": "hello", "namespace": "team", "uid": UID, "generation": 3},
            "spec": {"image": {"oci": "busybox:1.36"}, **spec},
            "status": status,
        }
    )


def bound_pod(node: str | None = "node-0") -> dict[str, Any]:
    pod = desired_pod(sandbox(), PodSettings())
    pod["metadata"]["uid"] = "pod-uid"
    if node:
        pod["spec"]["nodeName"] = node
    return pod


def agent(alive: bool = True) -> NodeAgent:
    expires = NOW + timedelta(seconds=30 if alive else -30)
    return NodeAgent("node-0", "https://10.0.0.1:9443", emulation=True, expires_at=expires)


def decide(
    target: Sandbox,
    pod: dict[str, Any] | None = None,
    node_agent: NodeAgent | None = None,
    resolution: Resolution | None = None,
    allow_host_paths: bool = False,
) -> Plan:
    return plan(
        Observed(
            sandbox=target,
            pod=None if pod is None else view(pod),
            agent=node_agent,
            resolution=resolution or Resolution(),
            now=NOW,
            allow_host_paths=allow_host_paths,
        )
    )


def conditions(decided: Plan) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in decided.status["conditions"]}


def test_a_new_sandbox_gets_its_pod_and_waits_for_the_scheduler() -> None:
    decided = decide(sandbox())
    assert decided.create_pod is not None
    assert decided.create_pod["metadata"]["name"] == "hello-sandbox"
    assert decided.status["phase"] == "Pending"
    assert conditions(decided)["Scheduled"] == ("False", "PodPending")
    assert decided.send_to_agent is None


def test_an_unschedulable_pod_says_why() -> None:
    pod = bound_pod(node=None)
    pod["status"] = {
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/2 nodes are available: 2 Insufficient memory.",
            }
        ]
    }
    decided = decide(sandbox(), pod)
    assert conditions(decided)["Scheduled"] == ("False", "Unschedulable")
    assert "Insufficient memory" in decided.status["conditions"][0]["message"]
    assert [e.reason for e in decided.events] == [Reason.UNSCHEDULABLE]


def test_a_bound_pod_with_a_live_node_agent_hands_over() -> None:
    decided = decide(sandbox(), bound_pod(), agent())
    assert decided.send_to_agent == agent()
    assert decided.status["phase"] == "Scheduled"
    assert decided.status["nodeName"] == "node-0"
    assert conditions(decided)["Scheduled"] == ("True", "PodBound")
    assert conditions(decided)["Ready"][0] == "False"


def test_no_node_agent_on_the_node_is_a_condition_not_an_error() -> None:
    decided = decide(sandbox(), bound_pod(), None)
    assert conditions(decided)["Scheduled"] == ("False", "NoNodeAgent")
    assert decided.send_to_agent is None


def test_ready_follows_the_node_agents_report() -> None:
    status = {
        "phase": "Running",
        "nodeName": "node-0",
        "podName": "hello-sandbox",
        "conditions": [
            {"type": "AgentConnected", "status": "True", "reason": "AgentReady"},
        ],
    }
    decided = decide(sandbox(status), bound_pod(), agent())
    assert "phase" not in decided.status  # the node agent owns it now
    assert conditions(decided)["Ready"] == ("True", "Running")


def test_a_suspended_sandbox_stays_with_its_node_agent_and_is_not_ready() -> None:
    for phase in ("Suspending", "Suspended", "Resuming"):
        status = {"phase": phase, "nodeName": "node-0", "podName": "hello-sandbox"}
        decided = decide(sandbox(status, lifecycle={"state": "Suspended"}), bound_pod(), agent())
        assert "phase" not in decided.status  # the node agent's phase stands
        assert decided.send_to_agent is not None  # so does its Pod: the state file is there
        assert not decided.delete_pod
        assert conditions(decided)["Ready"][0] == "False"
    suspended = {"phase": "Suspended", "nodeName": "node-0", "podName": "hello-sandbox"}
    decided = decide(sandbox(suspended), bound_pod(), agent())
    assert conditions(decided)["Ready"] == ("False", "SuspendedByUser")


def test_nothing_is_written_when_nothing_changed() -> None:
    first = decide(sandbox(), bound_pod(), agent())
    settled = sandbox(first.status)
    assert decide(settled, bound_pod(), agent()).status == {}


def test_the_transition_time_moves_only_when_the_status_changes() -> None:
    first = decide(sandbox(), bound_pod(), None)
    later = plan(
        Observed(
            sandbox=sandbox(first.status),
            pod=view(bound_pod()),
            agent=None,
            resolution=Resolution(),
            now=NOW + timedelta(minutes=5),
        )
    )
    assert later.status == {}
    bound = plan(
        Observed(
            sandbox=sandbox(first.status),
            pod=view(bound_pod()),
            agent=NodeAgent("node-0", "https://x", False, NOW + timedelta(hours=1)),
            resolution=Resolution(),
            now=NOW + timedelta(minutes=5),
        )
    )
    scheduled = next(c for c in bound.status["conditions"] if c["type"] == "Scheduled")
    assert scheduled["lastTransitionTime"] == "2026-11-22T12:05:00Z"
    assert scheduled["observedGeneration"] == 3


def test_a_lost_node_crashes_the_sandbox_and_restarts_it_when_asked() -> None:
    running = {"phase": "Running", "nodeName": "node-0", "podName": "hello-sandbox"}
    never = decide(sandbox(running), bound_pod(), agent(alive=False))
    assert never.status["phase"] == Phase.CRASHED
    assert conditions(never)["Ready"] == ("False", "NodeLost")
    assert not never.delete_pod
    again = decide(
        sandbox(running, lifecycle={"restartPolicy": "Always"}), bound_pod(), agent(False)
    )
    assert again.delete_pod
    assert [e.reason for e in again.events] == [Reason.NODE_LOST]


def test_a_crashed_sandbox_that_must_not_restart_gets_no_new_pod() -> None:
    crashed = {"phase": "Crashed", "nodeName": "node-0"}
    assert decide(sandbox(crashed)).create_pod is None
    restarting = decide(sandbox(crashed, lifecycle={"restartPolicy": "OnFailure"}))
    assert restarting.create_pod is not None


def test_missing_references_fail_with_their_reason_and_no_pod() -> None:
    missing = Resolution(
        problems=[Problem(Reason.SECRET_NOT_FOUND, "spec.env[0].valueFrom: Secret 'x' …")]
    )
    decided = decide(sandbox(), resolution=missing)
    assert decided.create_pod is None
    assert decided.status["phase"] == "Failed"
    assert conditions(decided)[ConditionType.READY] == ("False", "SecretNotFound")
    assert decided.events[0].warning


def test_host_paths_need_the_cluster_policy() -> None:
    bind_root = sandbox(image={"bind": {"path": "/srv/root"}})
    refused = decide(bind_root)
    assert conditions(refused)["Ready"] == ("False", "PolicyViolation")
    assert "spec.image.bind.path" in refused.status["conditions"][0]["message"]
    assert decide(bind_root, allow_host_paths=True).create_pod is not None


def test_long_names_still_make_valid_pod_names() -> None:
    name = pod_name("a" * 253)
    assert len(name) <= 63
    assert name.endswith("-sandbox")
    assert pod_name("a" * 253) != pod_name("a" * 252 + "b")


def test_a_crash_the_node_agent_reports_is_not_overwritten() -> None:
    crashed = {
        "phase": "Crashed",
        "nodeName": "node-0",
        "podName": "hello-sandbox",
        "exitStatus": {"success": False, "reason": "VMMExited"},
        "conditions": [{"type": "Scheduled", "status": "True", "reason": "PodBound"}],
    }
    decided = decide(sandbox(crashed), bound_pod(), agent())
    assert "phase" not in decided.status
    assert conditions(decided)["Ready"] == ("False", "VMMExited")


def test_the_operators_own_failure_is_taken_back_once_the_problem_is_gone() -> None:
    failed = {
        "phase": "Failed",
        "conditions": [{"type": "Ready", "status": "False", "reason": "SecretNotFound"}],
    }
    assert decide(sandbox(failed), bound_pod(), agent()).status["phase"] == "Scheduled"
    image_failed = {
        "phase": "Failed",
        "conditions": [{"type": "Ready", "status": "False", "reason": "ImageNotFound"}],
    }
    assert "phase" not in decide(sandbox(image_failed), bound_pod(), agent()).status
