from __future__ import annotations

from datetime import UTC, datetime

from kubesandbox_api.conditions import ConditionStatus, ConditionType, Phase, Reason
from kubesandbox_api.status import Condition, ExitStatus
from kubesandbox_node.runtime.model import NodeSandboxStatus
from kubesandbox_node.status.events import event_for
from kubesandbox_node.status.writer import Target

TARGET = Target("team-a", "hello", "0b6f6f7e-0000-4000-8000-000000000001")
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_a_crash_is_a_warning_with_its_reason() -> None:
    status = NodeSandboxStatus(
        phase=Phase.CRASHED,
        exit_status=ExitStatus(success=False, reason=Reason.GUEST_PANIC),
        message="the guest kernel panicked: Kernel panic - not syncing",
    )
    event = event_for(TARGET, status, "node-1", NOW)
    assert event is not None
    assert (event["type"], event["reason"]) == ("Warning", "GuestPanic")
    assert event["involvedObject"]["uid"] == TARGET.uid
    assert event["involvedObject"]["kind"] == "Sandbox"
    assert event["source"] == {"component": "kubesandbox-node-agent", "host": "node-1"}
    assert event["lastTimestamp"] == "2026-01-02T03:04:05Z"


def test_running_is_normal_and_booting_says_nothing() -> None:
    event = event_for(TARGET, NodeSandboxStatus(phase=Phase.RUNNING), "node-1", NOW)
    assert event is not None
    assert (event["type"], event["reason"]) == ("Normal", "Started")
    assert event_for(TARGET, NodeSandboxStatus(phase=Phase.BOOTING), "node-1", NOW) is None


def test_suspended_and_resumed_are_normal_events() -> None:
    status = NodeSandboxStatus(phase=Phase.SUSPENDED, message="suspended: 1 bytes saved")
    event = event_for(TARGET, status, "node-1", NOW, Phase.SUSPENDING)
    assert event is not None
    assert (event["type"], event["reason"], event["message"]) == (
        "Normal", "Suspended", "suspended: 1 bytes saved",
    )  # fmt: skip
    resumed = event_for(TARGET, NodeSandboxStatus(phase=Phase.RUNNING), "node-1", NOW,
                        Phase.RESUMING)  # fmt: skip
    assert resumed is not None
    assert resumed["reason"] == "Resumed"
    for quiet in (Phase.SUSPENDING, Phase.RESUMING):
        assert event_for(TARGET, NodeSandboxStatus(phase=quiet), "node-1", NOW) is None


def test_a_forks_start_is_a_forked_event_with_its_origin() -> None:
    why = "forked from Sandbox origin (the source paused 0.100s; 1 bytes of state)"
    forked = NodeSandboxStatus(
        phase=Phase.RUNNING,
        message=why,
        conditions=[
            Condition(type=ConditionType.AGENT_CONNECTED, status=ConditionStatus.TRUE,
                      reason=Reason.FORKED, message=why, last_transition_time=NOW)
        ],
    )  # fmt: skip
    event = event_for(TARGET, forked, "node-1", NOW, Phase.BOOTING)
    assert event is not None
    assert (event["type"], event["reason"], event["message"]) == ("Normal", "Forked", why)
    # a later resume of the fork is a resume
    resumed = event_for(TARGET, forked, "node-1", NOW, Phase.RESUMING)
    assert resumed is not None
    assert resumed["reason"] == "Resumed"
