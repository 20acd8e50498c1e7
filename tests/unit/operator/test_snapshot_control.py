"""control/snapshots.py: a snapshot's capture and removal through the node agent, with the
cluster and the node agents faked behind their interfaces."""

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from kubesandbox_api import Sandbox
from kubesandbox_operator.clients.cluster import Cluster
from kubesandbox_operator.clients.nodeagent import NodeAgentError, NodeAgents
from kubesandbox_operator.control import Runtime, snapshots
from kubesandbox_operator.reconcile.sandbox import NodeAgent
from tests.unit.operator.test_fork import make
from tests.unit.operator.test_snapshot import IMAGE, snapshot

AGENT = NodeAgent("node-a", "https://node-a:9443", True, datetime(2100, 1, 1, tzinfo=UTC))


@dataclass
class FakeCluster:
    source: Sandbox | None
    agents: dict[str, NodeAgent] = field(default_factory=lambda: {"node-a": AGENT})

    async def sandbox(self, namespace: str, name: str) -> Sandbox | None:
        return self.source

    async def node_agent(self, node: str) -> NodeAgent | None:
        return self.agents.get(node)


@dataclass
class FakeAgents:
    refuse: NodeAgentError | None = None
    taken: list[tuple[str, str, str, str]] = field(default_factory=list)
    deleted: list[tuple[str, str]] = field(default_factory=list)

    async def snapshot(
        self, agent: NodeAgent, uid: str, namespace: str, name: str, source_uid: str
    ) -> dict[str, Any]:
        if self.refuse is not None:
            raise self.refuse
        self.taken.append((agent.node, uid, name, source_uid))
        return {"image": IMAGE, "sizeBytes": 8192, "apparentBytes": 1 << 20,
                "capturedAt": "2026-12-04T16:00:00Z"}  # fmt: skip

    async def delete_snapshot(self, agent: NodeAgent, uid: str, namespace: str) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.deleted.append((agent.node, uid))


def runtime(cluster: FakeCluster, agents: FakeAgents) -> Runtime:
    return Runtime(cast(Cluster, cluster), cast(NodeAgents, agents))


def stopped() -> Sandbox:
    return make("origin", {"oci": "busybox:1.36"}, {"phase": "Stopped", "nodeName": "node-a"})


async def test_a_stopped_source_is_captured_by_its_node_agent() -> None:
    agents = FakeAgents()
    status, again = await snapshots.take(runtime(FakeCluster(stopped()), agents), snapshot())
    assert again is None
    assert status is not None
    assert status["phase"] == "Ready"
    assert status["nodeName"] == "node-a"
    assert status["sizeBytes"] == 8192
    assert agents.taken == [("node-a", "snap-0000-uid", "snap", "origin-0000-uid")]
    done = snapshot(status)
    assert await snapshots.take(runtime(FakeCluster(stopped()), agents), done) == (None, None)


async def test_a_running_source_waits_and_a_refusal_fails() -> None:
    running = make("origin", {"oci": "busybox:1.36"}, {"phase": "Running", "nodeName": "node-a"})
    status, again = await snapshots.take(runtime(FakeCluster(running), FakeAgents()), snapshot())
    why = "spec.source.name: Sandbox 'origin' is Running; it must be Stopped"
    assert status == {"phase": "Pending", "message": why}
    assert again is not None
    pending = snapshot(status)
    same = await snapshots.take(runtime(FakeCluster(running), FakeAgents()), pending)
    assert same[0] is None  # nothing to write again
    for code in (404, 409):
        refused = FakeAgents(refuse=NodeAgentError("PUT ...: refused", code))
        status, again = await snapshots.take(runtime(FakeCluster(stopped()), refused), snapshot())
        assert status is not None
        assert status["phase"] == "Failed"
        assert again is None
    unreachable = FakeAgents(refuse=NodeAgentError("PUT ...: connection refused"))
    status, again = await snapshots.take(runtime(FakeCluster(stopped()), unreachable), snapshot())
    assert status is not None
    assert status["phase"] == "Pending"
    assert again is not None


async def test_removal_asks_the_node_that_holds_the_copy() -> None:
    agents = FakeAgents()
    ready = snapshot({"phase": "Ready", "nodeName": "node-a", "image": IMAGE})
    assert await snapshots.remove(runtime(FakeCluster(None), agents), ready)
    assert agents.deleted == [("node-a", "snap-0000-uid")]
    assert await snapshots.remove(runtime(FakeCluster(None), agents), snapshot())  # none made
    gone = FakeCluster(None, agents={})
    assert await snapshots.remove(runtime(gone, agents), ready)  # its node agent is gone
    failing = FakeAgents(refuse=NodeAgentError("DELETE ...: 500", 500))
    assert not await snapshots.remove(runtime(FakeCluster(None), failing), ready)
