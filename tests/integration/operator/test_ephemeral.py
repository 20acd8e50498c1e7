"""The operator deletes an ephemeral Sandbox once it has stopped (``msb run`` relies on it),
on the real control plane; the node agent's reports are written as the node agent writes them.
"""

from datetime import UTC, datetime

import pytest

from tests.integration.operator.test_operator import (
    Cluster,
    OperatorProcess,
    _scheduled,
    cluster,
    namespace,
    node_agent,
    operator,
)
from tests.support.waiting import eventually

pytestmark = pytest.mark.usefixtures("installed_crds")
FIXTURES = (cluster, namespace, node_agent, operator)  # test_operator.py's, shared


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _run_then_stop(cluster: Cluster, namespace: str, name: str, end: str) -> None:
    eventually(lambda: _scheduled(cluster, namespace, name), what=f"{name} Scheduled")
    cluster.report_as_node_agent(namespace, name, {"phase": "Running", "startedAt": _now()})
    eventually(
        lambda: (
            (cluster.sandbox(namespace, name) or {}).get("status", {}).get("phase") == "Running"
        ),
        what=f"{name} Running",
    )
    cluster.report_as_node_agent(
        namespace, name, {"phase": end, "startedAt": _now(), "stoppedAt": _now()}
    )


def test_a_stopped_ephemeral_sandbox_is_deleted_and_others_are_kept(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    cluster.create_sandbox(namespace, "once", lifecycle={"ephemeral": True})
    cluster.create_sandbox(namespace, "kept", lifecycle={"ephemeral": False})
    cluster.create_sandbox(namespace, "crashed", lifecycle={"ephemeral": True})
    _run_then_stop(cluster, namespace, "kept", "Stopped")
    _run_then_stop(cluster, namespace, "crashed", "Crashed")
    _run_then_stop(cluster, namespace, "once", "Stopped")
    eventually(lambda: cluster.sandbox(namespace, "once") is None, what="'once' to be deleted")
    assert "EphemeralDeleted" not in cluster.events(namespace, "kept")
    for name, phase in (("kept", "Stopped"), ("crashed", "Crashed")):
        sandbox = cluster.sandbox(namespace, name)
        assert sandbox is not None, f"{name} was deleted"
        assert sandbox["status"]["phase"] == phase
