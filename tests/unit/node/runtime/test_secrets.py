"""The node agent's side of secrets without a VM: values kept in memory only, rotated into
the running proxy, violations turned into Events and, for BlockAndTerminate, a kill."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from kubesandbox_api.conditions import Phase, Reason
from kubesandbox_api.spec import ViolationAction
from kubesandbox_kube.paths import ResourcePath
from kubesandbox_node.egress.substitute import Violation
from kubesandbox_node.runtime.model import DesiredSandbox
from kubesandbox_node.runtime.records import RECORD
from kubesandbox_node.server.services import Services
from kubesandbox_node.status.events import EventRecorder
from tests.unit.node.runtime.conftest import Env
from tests.unit.node.runtime.test_supervisor import desired, until

VALUE = "v-9c8b7a6f5e4d"
SECRET = {"env": "KEY", "secretKeyRef": {"name": "s", "key": "k"}, "allowHosts": ["a.example"]}


def with_values(d: DesiredSandbox, **values: str) -> DesiredSandbox:
    data = d.model_dump(by_alias=True)
    data["resolved"]["secrets"] = values
    return DesiredSandbox.model_validate(data)


@dataclass
class FakeKube:
    created: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def create(self, path: ResourcePath, body: dict[str, Any]) -> dict[str, Any]:
        self.created.append((path.url, body))
        return body


class FakeAuth:
    async def authenticate(self, token: str) -> None:
        return None

    async def authorize(self, user: object, access: object) -> bool:
        return False


async def test_values_never_reach_the_record_on_disk(env: Env) -> None:
    supervisor = env.runtime.put(with_values(desired(secrets=[SECRET]), KEY=VALUE))
    await until(supervisor, Phase.RUNNING)
    assert supervisor.desired.resolved.secrets == {"KEY": VALUE}
    record = (env.runtime.store.dir(supervisor.uid) / RECORD).read_text()
    assert VALUE not in record
    assert '"env":"KEY"' in record  # the spec entry itself is kept


async def test_new_values_are_rotated_into_the_running_sandbox_without_a_restart(
    env: Env,
) -> None:
    first = with_values(desired(secrets=[SECRET]), KEY=VALUE)
    supervisor = env.runtime.put(first)
    await until(supervisor, Phase.RUNNING)
    boots = len(env.preparer.built)
    assert env.runtime.put(with_values(first, KEY="rotated")) is supervisor
    assert env.preparer.rotated == [{"KEY": "rotated"}]
    assert supervisor.desired.resolved.secrets == {"KEY": "rotated"}
    env.runtime.put(with_values(first, KEY="rotated"))  # the same again: nothing to do
    assert env.preparer.rotated == [{"KEY": "rotated"}]
    assert len(env.preparer.built) == boots
    assert supervisor.phase == Phase.RUNNING


async def test_a_restarted_node_agent_gets_the_values_again_from_the_operator(env: Env) -> None:
    first = with_values(desired(secrets=[SECRET]), KEY=VALUE)
    supervisor = env.runtime.put(first)
    await until(supervisor, Phase.RUNNING)
    await env.runtime.close()
    restarted = env.fresh_runtime()
    await restarted.recover()
    adopted = restarted.get(first.uid)
    assert adopted is not None
    assert adopted.desired.resolved.secrets == {}
    restarted.put(first)
    assert adopted.desired.resolved.secrets == {"KEY": VALUE}
    assert env.preparer.rotated[-1] == {"KEY": VALUE}
    env.runtime = restarted


def violation(action: ViolationAction) -> Violation:
    return Violation(("KEY",), "X-Key header", "evil.example (198.51.100.1:443)", action)


async def test_a_violation_is_a_warning_event_and_terminate_kills(env: Env) -> None:
    supervisor = env.runtime.put(with_values(desired(secrets=[SECRET]), KEY=VALUE))
    await until(supervisor, Phase.RUNNING)
    kube = FakeKube()
    services = Services(
        env.runtime,
        FakeAuth(),
        events=EventRecorder(kube, "node-1"),  # type: ignore[arg-type]
    )
    services.secret_violation(supervisor.uid, violation(ViolationAction.BLOCK))
    services.secret_violation(supervisor.uid, violation(ViolationAction.BLOCK_AND_LOG))
    await asyncio.sleep(0)
    assert [body["reason"] for _, body in kube.created] == ["SecretViolation"]
    event = kube.created[0][1]
    assert event["type"] == "Warning"
    assert "KEY" in event["message"]
    assert "evil.example" in event["message"]
    assert supervisor.phase == Phase.RUNNING
    services.secret_violation(supervisor.uid, violation(ViolationAction.BLOCK_AND_TERMINATE))
    await until(supervisor, Phase.STOPPED, Phase.CRASHED)
    assert supervisor.record.exit_status is not None
    assert supervisor.record.exit_status.reason == Reason.SECRET_VIOLATION
    await asyncio.sleep(0)
    reasons = sorted(body["reason"] for _, body in kube.created)
    assert reasons == ["SecretViolation", "SecretViolation", "Stopped"]
