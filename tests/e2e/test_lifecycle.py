"""Lifecycle through the spec, with the real node agent and VMs: what a user does with kubectl."""

import json
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import System


def _apply(system: System, name: str, **spec: object) -> None:
    manifest = {
        "apiVersion": "kubesandbox.dev/v1alpha1",
        "kind": "Sandbox",
        "metadata": {"name": name},
        "spec": {"image": {"oci": "busybox:1.36"}, **spec},
    }
    system.plane.kubectl("apply", "-f", "-", input_text=json.dumps(manifest))


def _set_state(system: System, name: str, state: str) -> None:
    patch = json.dumps({"spec": {"lifecycle": {"state": state}}})
    system.plane.kubectl("patch", "sandbox", name, "--type", "merge", "-p", patch)


def _condition(body: dict[str, object], type_: str) -> dict[str, str]:
    status = body["status"]
    assert isinstance(status, dict)
    return next(c for c in status["conditions"] if c["type"] == type_)


@pytest.fixture
def sandbox(system: System, request: pytest.FixtureRequest) -> Iterator[str]:
    name = request.node.name.removeprefix("test_").replace("_", "-")[:40].strip("-")
    yield name
    system.plane.kubectl("delete", "sandbox", name, "--wait", "--timeout=120s", check=False)


def test_stop_and_start_keep_the_writable_layer(system: System, sandbox: str) -> None:
    _apply(system, sandbox)
    system.wait_for_phase(sandbox, {"Running"}, ready=True)
    assert system.run(sandbox, "echo kept > /root/marker && sync")[0] == 0
    _set_state(system, sandbox, "Stopped")
    stopped = system.wait_for_phase(sandbox, {"Stopped"})
    assert _condition(stopped, "Ready")["status"] == "False"
    assert stopped["status"]["exitStatus"]["success"] is True
    _set_state(system, sandbox, "Running")
    system.wait_for_phase(sandbox, {"Running"}, ready=True)
    assert system.run(sandbox, "cat /root/marker") == (0, "kept\n")


def test_pause_freezes_and_resume_continues(system: System, sandbox: str) -> None:
    _apply(system, sandbox)
    system.wait_for_phase(sandbox, {"Running"}, ready=True)
    assert system.run(sandbox, "echo before > /tmp/state")[0] == 0
    _set_state(system, sandbox, "Paused")
    paused = system.wait_for_phase(sandbox, {"Paused"})
    assert _condition(paused, "Paused")["status"] == "True"
    _set_state(system, sandbox, "Running")
    system.wait_for_phase(sandbox, {"Running"}, ready=True)
    # Nothing was lost: the guest's memory (a tmpfs file) survived the pause.
    assert system.run(sandbox, "cat /tmp/state") == (0, "before\n")


def test_maximum_duration_drains_to_stopped_with_a_reason(system: System, sandbox: str) -> None:
    _apply(system, sandbox, lifecycle={"maxDurationSeconds": 8})
    system.wait_for_phase(sandbox, {"Running"}, ready=True)
    stopped = system.wait_for_phase(sandbox, {"Stopped"}, timeout=120)
    assert stopped["status"]["exitStatus"]["reason"] == "MaxDurationExceeded"
