"""Sandboxes created and deleted in rounds leave nothing behind in the operator.

The operator keeps a little per Sandbox (its last version, its Pod's view, a digest of what its
node agent accepted, references; docs/operator.md) and must drop all of it when the Sandbox
goes: it says what it keeps in its ``controller.settled`` log line once work stops. Its memory
must come back too (the polling operator grew from 77 to 161 MiB with 1,000 Sandboxes and
kept it after they were deleted).
"""

import json
from pathlib import Path
from typing import Any

import pytest

from kubesandbox_api import GROUP, PLURAL, VERSION
from tests.integration.operator.test_operator import (
    Cluster,
    OperatorProcess,
    cluster,
    namespace,
    node_agent,
    operator,
)
from tests.support.waiting import eventually

pytestmark = [pytest.mark.usefixtures("installed_crds"), pytest.mark.slow]
FIXTURES = (cluster, namespace, node_agent, operator)  # test_operator.py's, shared

ROUNDS = 4
PER_ROUND = 100
NOWHERE = {"kubesandbox.dev/test": "no-such-node"}
RSS_GROWTH_MIB = 16.0


def _settled(log: Path) -> dict[str, Any] | None:
    lines = [line for line in log.read_text().splitlines() if '"controller.settled"' in line]
    return json.loads(lines[-1]) if lines else None


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _unschedulable(cluster: Cluster, namespace: str) -> int:
    listed = cluster.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    assert isinstance(listed, dict)
    reasons = [
        (cluster.condition(item, "Scheduled") or {}).get("reason") for item in listed["items"]
    ]
    return reasons.count("Unschedulable")


def test_rounds_of_sandboxes_leave_nothing_behind(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    assert operator.process is not None
    pid = operator.process.pid
    # The session's control plane is shared: Sandboxes other modules left (in their own
    # namespaces) are the operator's too. What it keeps must come back to this, not to zero.
    before = eventually(lambda: _settled(operator.log), 60, "the operator's first settled line")
    baseline = {k: before[k] for k in ("sandboxes", "pods", "nodes", "references", "handed_over")}
    rss: list[float] = []
    for round_ in range(ROUNDS):
        for index in range(PER_ROUND):
            cluster.create_sandbox(namespace, f"r{round_}-{index}", nodeSelector=NOWHERE)
        eventually(
            lambda: _unschedulable(cluster, namespace) == PER_ROUND,
            180,
            lambda: f"{_unschedulable(cluster, namespace)} of {PER_ROUND} Unschedulable",
        )
        assert len(cluster.pods(namespace)) == PER_ROUND
        cluster.custom.delete_collection_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)

        def gone() -> bool:
            listed = cluster.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
            assert isinstance(listed, dict)
            return not listed["items"] and not cluster.pods(namespace)

        eventually(gone, 180, f"round {round_}: Sandboxes and Pods to go")

        def nothing_kept() -> dict[str, Any] | None:
            kept = _settled(operator.log)
            if kept is None or {k: kept[k] for k in baseline} != baseline:
                return None
            return kept

        kept = eventually(
            nothing_kept, 60, lambda: f"back to {baseline}, found {_settled(operator.log)}"
        )
        assert {k: kept[k] for k in ("queued", "active", "deadlines", "failing")} == {
            "queued": 0,
            "active": 0,
            "deadlines": 0,
            "failing": 0,
        }
        rss.append(_rss_mib(pid))
    # From the second round on, the memory of a round comes back when its Sandboxes go.
    assert max(rss[1:]) - rss[1] < RSS_GROWTH_MIB, f"operator RSS per round (MiB): {rss}"
