from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from kubesandbox_api.conditions import ConditionStatus, Phase
from kubesandbox_api.status import Condition, SandboxMetrics
from kubesandbox_kube import KubeError, NotFound
from kubesandbox_kube.paths import ResourcePath
from kubesandbox_node.runtime.model import NodeSandboxStatus
from kubesandbox_node.status.writer import StatusWriter, Target

TARGET = Target("team-a", "hello", "0b6f6f7e-0000-4000-8000-000000000001")


@dataclass
class FakeKube:
    applied: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)
    fail_with: KubeError | None = None

    async def apply(
        self, path: ResourcePath, body: dict[str, Any], *, field_manager: str
    ) -> dict[str, Any]:
        if self.fail_with is not None:
            raise self.fail_with
        self.applied.append((path.url, body, field_manager))
        return body


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def running() -> NodeSandboxStatus:
    condition = Condition(type="AgentConnected", status=ConditionStatus.TRUE, reason="AgentReady")
    return NodeSandboxStatus(phase=Phase.RUNNING, conditions=[condition])


def writer() -> tuple[StatusWriter, FakeKube, Clock]:
    kube, clock = FakeKube(), Clock()
    return StatusWriter(kube, clock=clock), kube, clock  # type: ignore[arg-type]


async def test_transition_is_applied_to_the_status_subresource_as_the_node_agent() -> None:
    w, kube, _ = writer()
    w.notify(TARGET, running())
    await w.flush()
    path, body, manager = kube.applied[0]
    assert path == "/apis/kubesandbox.dev/v1alpha1/namespaces/team-a/sandboxes/hello/status"
    assert manager == "kubesandbox-node-agent"
    assert body["metadata"]["uid"] == TARGET.uid
    assert body["status"]["phase"] == "Running"
    assert body["status"]["conditions"][0]["type"] == "AgentConnected"
    assert "observedGeneration" not in body["status"]


async def test_metrics_at_most_every_interval_and_only_when_changed() -> None:
    w, kube, clock = writer()
    w.notify(TARGET, running())
    await w.flush()
    sample = SandboxMetrics(memory_bytes=100, uptime_seconds=1)
    w.offer_metrics(TARGET.uid, sample)
    await w.flush()
    assert kube.applied[-1][1]["status"]["metrics"]["memoryBytes"] == 100
    clock.now += 5
    w.offer_metrics(TARGET.uid, SandboxMetrics(memory_bytes=200, uptime_seconds=6))
    await w.flush()
    assert len(kube.applied) == 2
    clock.now += 15
    w.offer_metrics(TARGET.uid, SandboxMetrics(memory_bytes=100, uptime_seconds=21))
    await w.flush()
    assert len(kube.applied) == 2
    w.offer_metrics(TARGET.uid, SandboxMetrics(memory_bytes=300, uptime_seconds=21))
    await w.flush()
    assert len(kube.applied) == 3


async def test_transitions_keep_the_last_metrics_so_apply_does_not_drop_them() -> None:
    w, kube, _ = writer()
    w.notify(TARGET, running())
    w.offer_metrics(TARGET.uid, SandboxMetrics(memory_bytes=100))
    await w.flush()
    w.notify(TARGET, NodeSandboxStatus(phase=Phase.PAUSED))
    await w.flush()
    assert kube.applied[-1][1]["status"]["metrics"]["memoryBytes"] == 100


async def test_a_deleted_sandbox_is_forgotten_and_other_errors_retried() -> None:
    w, kube, _ = writer()
    w.notify(TARGET, running())
    kube.fail_with = KubeError(500, "InternalError", "etcd is sad")
    with pytest.raises(KubeError):
        await w.flush()
    kube.fail_with = None
    await w.flush()
    assert len(kube.applied) == 1
    kube.fail_with = NotFound(404, "NotFound", "gone")
    w.notify(TARGET, running())
    await w.flush()
    kube.fail_with = None
    await w.flush()
    assert len(kube.applied) == 1


async def test_write_now_writes_one_sandbox_ahead_of_the_loop_and_only_once() -> None:
    w, kube, _ = writer()
    other = Target("team-a", "other", "0b6f6f7e-0000-4000-8000-000000000002")
    w.notify(other, running())
    w.notify(TARGET, running())
    await w.write_now(TARGET.uid)
    assert [body["metadata"]["name"] for _, body, _ in kube.applied] == ["hello"]
    await w.flush()
    assert [body["metadata"]["name"] for _, body, _ in kube.applied] == ["hello", "other"]
    await w.write_now(TARGET.uid)  # nothing pending: nothing written
    await w.write_now("unknown")
    assert len(kube.applied) == 2


async def test_one_sandboxs_writes_never_overlap_so_the_newest_status_lands_last() -> None:
    import asyncio

    release = asyncio.Event()
    landed: list[str] = []
    calls = 0

    class SlowKube(FakeKube):
        async def apply(
            self, path: ResourcePath, body: dict[str, Any], *, field_manager: str
        ) -> dict[str, Any]:
            nonlocal calls
            calls += 1
            if calls == 1:
                await release.wait()  # the first write is slow
            landed.append(body["status"]["phase"])
            return body

    w = StatusWriter(SlowKube())  # type: ignore[arg-type]
    w.notify(TARGET, NodeSandboxStatus(phase=Phase.BOOTING))
    looping = asyncio.create_task(w.flush())
    await asyncio.sleep(0)
    w.notify(TARGET, running())
    claiming = asyncio.create_task(w.write_now(TARGET.uid))
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.gather(looping, claiming)
    assert landed == ["Booting", "Running"]
