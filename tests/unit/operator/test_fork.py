"""``spec.image.sandbox``: the operator's checks of a fork's source and the fork's placement."""

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from kubesandbox_api import Sandbox
from kubesandbox_api.conditions import ConditionType, Phase, Reason
from kubesandbox_api.pool import can_claim
from kubesandbox_operator.reconcile.fork import ForkSource, check_source, pin_to_node
from kubesandbox_operator.reconcile.references import Problem, Resolution
from kubesandbox_operator.reconcile.sandbox import Observed, fork_started, plan
from kubesandbox_operator.reconcile.snapshot import SnapshotSource

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def make(
    name: str, image: dict[str, Any], status: dict[str, Any] | None = None, **spec: Any
) -> Sandbox:
    return Sandbox.from_body(
        {
            "metadata": {"name": name, "namespace": "team", "uid": f"{name}-0000-uid"},
            "spec": {"image": image, **spec},
            "status": status,
        }
    )


def fork(**spec: Any) -> Sandbox:
    return make("copy", {"sandbox": {"name": "origin"}}, **spec)


def source(phase: str | None = "Running", node: str | None = "node-a", **spec: Any) -> Sandbox:
    status = {"phase": phase, "nodeName": node} if phase else None
    return make("origin", {"oci": "busybox:1.36"}, status, **spec)


def refusal(found: ForkSource | Problem) -> str:
    assert isinstance(found, Problem), found
    assert found.reason == Reason.FORK_SOURCE_NOT_READY
    return found.message


def test_image_sandbox_is_one_of_the_image_sources() -> None:
    assert fork().spec.image.chosen() == "sandbox"
    with pytest.raises(ValidationError, match="exactly one"):
        make("x", {"oci": "busybox", "sandbox": {"name": "origin"}})
    with pytest.raises(ValidationError):
        make("x", {"sandbox": {"name": "Not_A_Name"}})


@pytest.mark.parametrize("phase", ["Running", "Paused", "Suspended"])
def test_a_running_or_suspended_source_on_a_node_is_forked_there(phase: str) -> None:
    found = check_source(fork(), source(phase))
    assert found == ForkSource(name="origin", uid="origin-0000-uid", node="node-a")


def test_refusals_name_the_field_and_say_why() -> None:
    field = "spec.image.sandbox.name: Sandbox 'origin'"
    assert refusal(check_source(fork(), None)) == (f"{field} does not exist in namespace 'team'")
    assert "is Stopped; it must be Running, Paused or Suspended" in refusal(
        check_source(fork(), source("Stopped"))
    )
    assert "is Pending" in refusal(check_source(fork(), source(None)))
    assert refusal(check_source(fork(), source(node=None))) == f"{field} is on no node"
    itself = make("origin", {"sandbox": {"name": "origin"}})
    assert "is this Sandbox itself" in refusal(check_source(itself, source()))


def test_the_fork_has_its_sources_machine() -> None:
    assert refusal(check_source(fork(cpus=2), source())).startswith("spec.cpus:")
    assert refusal(check_source(fork(memory="1Gi"), source())).startswith("spec.memory:")
    assert check_source(fork(memory="512Mi"), source()) == check_source(fork(), source())
    no_nic = fork(network={"policy": "None"})
    assert refusal(check_source(no_nic, source())).startswith("spec.network.policy:")
    assert isinstance(check_source(no_nic, source(network={"policy": "None"})), ForkSource)


def test_a_started_fork_no_longer_needs_its_source() -> None:
    assert not fork_started(fork())
    assert not fork_started(make("copy", {"sandbox": {"name": "o"}}, {"phase": "Scheduled"}))
    assert fork_started(make("copy", {"sandbox": {"name": "o"}}, {"phase": "Booting"}))
    assert fork_started(make("copy", {"sandbox": {"name": "o"}}, {"phase": "Stopped"}))


def test_the_pod_is_pinned_to_the_sources_node_and_keeps_its_own_affinity() -> None:
    assert pin_to_node(None, "node-a") == {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchFields": [
                            {"key": "metadata.name", "operator": "In", "values": ["node-a"]}
                        ]
                    }
                ]
            }
        }
    }
    own = {"key": "zone", "operator": "In", "values": ["z1"]}
    theirs: dict[str, Any] = {
        "podAntiAffinity": {"x": 1},
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [own]}, {"matchExpressions": []}]
            }
        },
    }
    pinned = pin_to_node(theirs, "node-a")
    terms = pinned["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert pinned["podAntiAffinity"] == {"x": 1}
    assert len(terms["nodeSelectorTerms"]) == 2
    for term in terms["nodeSelectorTerms"]:  # each alternative is ANDed with the node
        assert term["matchFields"][-1]["values"] == ["node-a"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"] == [own]
    assert "matchFields" not in own  # the caller's affinity is not modified
    assert theirs["nodeAffinity"] == {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [own]}, {"matchExpressions": []}]
        }
    }


def decide(target: Sandbox, checked: ForkSource | SnapshotSource | Problem | None) -> Any:
    return plan(
        Observed(
            sandbox=target, pod=None, agent=None, resolution=Resolution(), now=NOW, fork=checked
        )
    )


def test_plan_places_a_fork_on_its_sources_node() -> None:
    decided = decide(fork(), check_source(fork(), source()))
    assert decided.create_pod is not None
    terms = decided.create_pod["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert terms == [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node-a"]}]}
    ]


def test_plan_refuses_a_fork_whose_source_is_not_ready_and_takes_it_back_later() -> None:
    decided = decide(fork(), check_source(fork(), source("Stopped")))
    assert decided.create_pod is None
    assert decided.status["phase"] == Phase.FAILED
    ready = next(c for c in decided.status["conditions"] if c["type"] == ConditionType.READY)
    assert ready["reason"] == Reason.FORK_SOURCE_NOT_READY
    assert ready["message"].startswith("spec.image.sandbox.name: ")
    assert [e.reason for e in decided.events] == [Reason.FORK_SOURCE_NOT_READY]
    failed = make("copy", {"sandbox": {"name": "origin"}}, decided.status)
    again = decide(failed, check_source(failed, source("Running")))
    assert again.create_pod is not None
    assert again.status["phase"] == Phase.PENDING


def test_the_node_agent_gets_the_sources_uid_until_the_fork_started() -> None:
    resolution = Resolution(fork_of="origin-0000-uid")
    assert resolution.payload()["forkOf"] == "origin-0000-uid"
    assert "forkOf" not in Resolution().payload()


def test_a_fork_is_never_served_from_a_warm_pool() -> None:
    assert can_claim(source().spec)
    assert not can_claim(fork().spec)  # its state is its source's at the moment it is made
