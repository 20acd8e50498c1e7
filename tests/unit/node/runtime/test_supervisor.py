from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from kubesandbox_api.conditions import ConditionStatus, Phase, Reason
from kubesandbox_node.runtime import supervisor as supervisor_module
from kubesandbox_node.runtime.model import DesiredSandbox
from kubesandbox_node.runtime.records import SandboxRecord
from kubesandbox_node.runtime.supervisor import Supervisor
from kubesandbox_node.vm.machine import BootError
from kubesandbox_protocol import AgentClient
from kubesandbox_protocol.client import AgentError
from kubesandbox_protocol.messages import MessageType
from tests.unit.node.runtime.conftest import Env
from tests.unit.node.runtime.fakes import DIGEST, not_found


def desired(generation: int = 1, **spec: Any) -> DesiredSandbox:
    body: dict[str, Any] = {"image": {"oci": "busybox:1.36"}, **spec}
    return DesiredSandbox.model_validate(
        {"namespace": "default", "name": "s", "uid": str(uuid.uuid4()),
         "generation": generation, "spec": body}
    )  # fmt: skip


def again(d: DesiredSandbox, generation: int, **lifecycle: Any) -> DesiredSandbox:
    data = d.model_dump(by_alias=True)
    data["generation"] = generation
    data["spec"]["lifecycle"] = {**data["spec"]["lifecycle"], **lifecycle}
    return DesiredSandbox.model_validate(data)


async def until(supervisor: Supervisor, *phases: Phase, within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while supervisor.phase not in phases:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def condition(supervisor: Supervisor, type: str) -> tuple[ConditionStatus, str]:
    found = next(c for c in supervisor.record.conditions if c.type == type)
    return found.status, found.reason


async def running(env: Env, **spec: Any) -> Supervisor:
    supervisor = env.runtime.put(desired(**spec))
    await until(supervisor, Phase.RUNNING)
    return supervisor


async def test_put_boots_to_running_with_conditions_and_pin(env: Env) -> None:
    supervisor = await running(env)
    assert condition(supervisor, "ImageReady") == (ConditionStatus.TRUE, Reason.PULLED)
    assert condition(supervisor, "AgentConnected") == (ConditionStatus.TRUE, Reason.AGENT_READY)
    assert condition(supervisor, "SoftwareEmulation")[0] == ConditionStatus.TRUE
    assert supervisor.record.image is not None
    assert supervisor.record.image.digest == DIGEST
    assert supervisor.status().started_at is not None


async def test_exec_through_the_relay_socket(env: Env) -> None:
    supervisor = await running(env)
    async with await AgentClient.connect(supervisor.relay_socket) as client:
        result = await client.run("echo", ["hi"])
    assert result.stdout == b"hi\n"


async def test_put_is_idempotent_per_uid(env: Env) -> None:
    d = desired()
    supervisor = env.runtime.put(d)
    assert env.runtime.put(d) is supervisor
    await until(supervisor, Phase.RUNNING)
    env.runtime.put(d)
    await asyncio.sleep(0.05)
    assert len(env.vmm.handles) == 1


async def test_graceful_stop_asks_the_guest_then_start_boots_again(env: Env) -> None:
    supervisor = await running(env)
    await supervisor.stop()
    assert supervisor.status().phase == Phase.STOPPED
    assert env.vmm.last.calls == ["shutdown"]
    assert supervisor.record.exit_status is not None
    assert supervisor.record.exit_status.reason == Reason.STOPPED_BY_USER
    assert supervisor.record.exit_status.success
    await supervisor.start()
    assert supervisor.status().phase == Phase.RUNNING
    assert len(env.vmm.handles) == 2


async def test_stop_quits_qemu_when_the_guest_ignores_shutdown(env: Env) -> None:
    env.vmm.obeys_shutdown = False
    supervisor = await running(env)
    await supervisor.stop(grace=0.1)
    assert env.vmm.last.calls == ["shutdown", "quit"]
    assert supervisor.status().phase == Phase.STOPPED


async def test_kill(env: Env) -> None:
    supervisor = await running(env)
    await supervisor.kill()
    assert env.vmm.last.calls == ["kill"]
    assert supervisor.status().phase == Phase.STOPPED


async def test_pause_and_resume(env: Env) -> None:
    supervisor = await running(env)
    await supervisor.pause()
    assert supervisor.status().phase == Phase.PAUSED
    assert condition(supervisor, "Paused") == (ConditionStatus.TRUE, Reason.PAUSED_BY_USER)
    await supervisor.resume()
    assert supervisor.status().phase == Phase.RUNNING
    assert condition(supervisor, "Paused")[0] == ConditionStatus.FALSE
    assert env.vmm.last.calls == ["pause", "resume"]


async def test_lifecycle_state_in_a_new_generation_steers_the_sandbox(env: Env) -> None:
    d = desired()
    supervisor = env.runtime.put(d)
    await until(supervisor, Phase.RUNNING)
    env.runtime.put(again(d, 2, state="Paused"))
    await until(supervisor, Phase.PAUSED)
    env.runtime.put(again(d, 3, state="Running"))
    await until(supervisor, Phase.RUNNING)
    env.runtime.put(again(d, 4, state="Stopped", stopMode="Kill"))
    await until(supervisor, Phase.STOPPED)
    assert env.vmm.last.calls[-1] == "kill"
    env.runtime.put(again(d, 5, state="Running"))
    await until(supervisor, Phase.RUNNING)


def phases_seen(env: Env, supervisor: Supervisor) -> list[Phase]:
    """Every phase the node agent reports from now on (fast transitions included)."""
    seen: list[Phase] = []

    start = supervisor.phase
    env.runtime.listeners.append(
        lambda s: None if (seen[-1] if seen else start) == s.phase else seen.append(s.phase)
    )
    return seen


async def test_running_right_after_a_kill_starts_the_sandbox_again(env: Env) -> None:
    d = desired()
    supervisor = env.runtime.put(d)
    await until(supervisor, Phase.RUNNING)
    seen = phases_seen(env, supervisor)
    env.runtime.put(again(d, 2, state="Stopped", stopMode="Kill"))
    env.runtime.put(again(d, 3, state="Running"))  # while the kill is still under way
    async with asyncio.timeout(5):
        while Phase.STOPPED not in seen or supervisor.phase != Phase.RUNNING:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert seen[0] == Phase.STOPPED
    assert len(env.vmm.handles) == 2
    assert env.vmm.handles[0].calls == ["kill"]


async def test_running_while_a_graceful_stop_finishes_starts_the_sandbox_again(env: Env) -> None:
    env.vmm.obeys_shutdown = False  # the stop waits out its grace period, then quits QEMU
    d = desired()
    supervisor = env.runtime.put(d)
    await until(supervisor, Phase.RUNNING)
    seen = phases_seen(env, supervisor)
    env.runtime.put(again(d, 2, state="Stopped", stopGracePeriodSeconds=1))
    await until(supervisor, Phase.STOPPING)
    env.runtime.put(again(d, 3, state="Running"))
    async with asyncio.timeout(5):
        while Phase.STOPPED not in seen or supervisor.phase != Phase.RUNNING:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert seen[:2] == [Phase.STOPPING, Phase.STOPPED]
    assert env.vmm.handles[0].calls == ["shutdown", "quit"]
    assert len(env.vmm.handles) == 2
    assert supervisor.record.runs == 2


async def test_a_state_moved_and_back_while_busy_does_nothing_more(env: Env) -> None:
    d = desired()
    supervisor = env.runtime.put(d)
    await until(supervisor, Phase.RUNNING)
    seen = phases_seen(env, supervisor)
    env.runtime.put(again(d, 2, state="Paused"))
    env.runtime.put(again(d, 3, state="Running"))  # while the pause is under way
    async with asyncio.timeout(5):
        while seen != [Phase.PAUSED, Phase.RUNNING]:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    assert seen == [Phase.PAUSED, Phase.RUNNING]
    assert len(env.vmm.handles) == 1
    assert env.vmm.last.calls == ["pause", "resume"]


async def test_drain_lets_running_commands_finish_and_refuses_new_ones(env: Env) -> None:
    supervisor = await running(env)
    async with await AgentClient.connect(supervisor.relay_socket) as client:
        cat = await client.exec("cat", keep_stdin_open=True)
        await cat.write_stdin(b"still here")
        await env.vmm.last.guest.wait_for(MessageType.EXEC_STDIN)
        drain = supervisor.drain()
        await until(supervisor, Phase.DRAINING)
        with pytest.raises(AgentError, match="draining"):
            await client.run("echo", ["refused"])
        with pytest.raises(AgentError, match="preamble"):
            await AgentClient.connect(supervisor.relay_socket, connect_timeout=1)
        assert supervisor.status().phase == Phase.DRAINING
        await cat.close_stdin()
        assert (await cat.wait()).stdout == b"still here"
        await drain
    assert supervisor.status().phase == Phase.STOPPED


async def test_max_duration_drains_to_stopped(env: Env) -> None:
    supervisor = await running(env, lifecycle={"maxDurationSeconds": 1})
    await until(supervisor, Phase.STOPPED, within=5)
    assert supervisor.record.exit_status is not None
    assert supervisor.record.exit_status.reason == Reason.MAX_DURATION_EXCEEDED


async def test_idle_timeout_counts_relay_activity(env: Env) -> None:
    supervisor = await running(env, lifecycle={"idleTimeoutSeconds": 1})
    async with await AgentClient.connect(supervisor.relay_socket) as client:
        for _ in range(6):
            await client.ping()
            await asyncio.sleep(0.25)
        assert supervisor.status().phase == Phase.RUNNING
    await until(supervisor, Phase.STOPPED, within=5)
    assert supervisor.record.exit_status is not None
    assert supervisor.record.exit_status.reason == Reason.IDLE_TIMEOUT


async def test_guest_panic_is_a_crash_and_wait_returns(env: Env) -> None:
    supervisor = await running(env)
    waiter = asyncio.create_task(supervisor.wait())
    env.vmm.last.end(None, "guest-reset", "[ 1.2] Kernel panic - not syncing: boom\n")
    exit_status = await asyncio.wait_for(waiter, 5)
    assert supervisor.status().phase == Phase.CRASHED
    assert exit_status is not None
    assert exit_status.reason == Reason.GUEST_PANIC
    assert "boom" in (supervisor.record.message or "")


async def test_restart_policy_on_failure_boots_again(env: Env) -> None:
    supervisor = await running(env, lifecycle={"restartPolicy": "OnFailure"})
    env.vmm.last.end(1)
    async with asyncio.timeout(5):
        while len(env.vmm.handles) < 2 or supervisor.phase != Phase.RUNNING:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_image_error_fails_with_the_reason(env: Env) -> None:
    env.preparer.image_error = not_found()
    supervisor = env.runtime.put(desired())
    await until(supervisor, Phase.FAILED)
    assert condition(supervisor, "ImageReady") == (ConditionStatus.FALSE, Reason.IMAGE_NOT_FOUND)
    assert "busybox:nope" in (supervisor.record.message or "")


async def test_boot_timeout_is_reported(env: Env) -> None:
    env.vmm.boot_error = BootError("guest agent not ready after 5s; VM killed", "last words")
    supervisor = env.runtime.put(desired())
    await until(supervisor, Phase.CRASHED)
    assert condition(supervisor, "AgentConnected") == (ConditionStatus.FALSE, Reason.BOOT_TIMEOUT)
    assert "last words" in (supervisor.record.message or "")


async def test_a_failed_boot_is_tried_again_under_on_failure_with_a_back_off(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervisor_module, "BOOT_RETRY_FIRST", 0.2)
    env.vmm.boot_error = BootError("guest agent not ready after 5s; VM killed", "")
    supervisor = env.runtime.put(desired(lifecycle={"restartPolicy": "OnFailure"}))
    await until(supervisor, Phase.CRASHED)
    await asyncio.sleep(0.3)  # the first retry (0.2 s) failed too: the next waits 0.4 s
    assert supervisor.phase == Phase.CRASHED
    env.vmm.boot_error = None
    await until(supervisor, Phase.RUNNING)
    assert supervisor._boot_failures == 0


async def test_a_failed_boot_stays_crashed_under_restart_policy_never(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervisor_module, "BOOT_RETRY_FIRST", 0.05)
    env.vmm.boot_error = BootError("guest agent not ready after 5s; VM killed", "")
    supervisor = env.runtime.put(desired())
    await until(supervisor, Phase.CRASHED)
    env.vmm.boot_error = None
    await asyncio.sleep(0.3)
    assert supervisor.phase == Phase.CRASHED
    assert env.vmm.handles == []


async def test_a_restarted_runtime_re_adopts_running_vms(env: Env) -> None:
    first, second = await running(env), await running(env)
    gone = await running(env)
    for supervisor in (first, second, gone):
        await supervisor.detach()
    env.vmm.alive.discard(gone.record.vm.pid if gone.record.vm else 0)
    runtime = env.fresh_runtime()
    adopted = await runtime.recover()
    assert adopted == {first.uid: True, second.uid: True, gone.uid: False}
    assert runtime.sandboxes[first.uid].status().phase == Phase.RUNNING
    assert runtime.sandboxes[gone.uid].status().phase == Phase.CRASHED
    async with await AgentClient.connect(runtime.sandboxes[second.uid].relay_socket) as client:
        assert (await client.run("echo", ["back"])).stdout == b"back\n"
    assert len(env.vmm.specs) == 3  # nothing booted again
    env.runtime = runtime


async def test_remove_deletes_every_per_sandbox_file(env: Env) -> None:
    supervisor = await running(env)
    folder = supervisor.dir
    assert (folder / "record.json").exists()
    await env.runtime.remove(supervisor.uid)
    assert not folder.exists()
    assert env.preparer.removed == [supervisor.uid]
    assert env.vmm.last.calls == ["kill"]
    assert supervisor.uid not in env.runtime.sandboxes


async def test_a_start_cut_short_by_a_node_agent_restart_is_done_again(env: Env) -> None:
    d = desired()
    env.runtime.store.save(d.uid, SandboxRecord(desired=d, phase=Phase.BOOTING, runs=1))
    runtime = env.fresh_runtime()
    assert await runtime.recover() == {d.uid: False}
    env.runtime = runtime
    await until(runtime.sandboxes[d.uid], Phase.RUNNING)
    assert runtime.sandboxes[d.uid].record.runs == 1


async def test_a_stop_that_finished_while_away_is_stopped_not_crashed(env: Env) -> None:
    supervisor = await running(env)
    await supervisor.detach()
    record = supervisor.record.model_copy(
        update={"phase": Phase.STOPPING, "ending": Reason.STOPPED_BY_USER.value}
    )
    env.runtime.store.save(supervisor.uid, record)
    env.vmm.alive.clear()
    runtime = env.fresh_runtime()
    await runtime.recover()
    env.runtime = runtime
    adopted = runtime.sandboxes[supervisor.uid]
    assert adopted.status().phase == Phase.STOPPED
    assert adopted.record.exit_status is not None
    assert adopted.record.exit_status.reason == Reason.STOPPED_BY_USER


async def test_timing_policies_of_a_new_generation_apply_live(env: Env) -> None:
    d = desired()
    supervisor = env.runtime.put(d)
    await until(supervisor, Phase.RUNNING)
    env.runtime.put(again(d, 2, maxDurationSeconds=1))
    await until(supervisor, Phase.STOPPED)
    assert supervisor.record.exit_status is not None
    assert supervisor.record.exit_status.reason == Reason.MAX_DURATION_EXCEEDED
    assert len(env.vmm.handles) == 1


async def test_network_changes_of_a_running_sandbox_apply_live(env: Env) -> None:
    d = desired()
    supervisor = env.runtime.put(d)
    await until(supervisor, Phase.RUNNING)
    data = d.model_dump(by_alias=True)
    data["generation"] = 2
    data["spec"]["network"] = {"policy": "All"}
    env.runtime.put(DesiredSandbox.model_validate(data))
    async with asyncio.timeout(5):
        while env.preparer.updated != [2]:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert supervisor.status().phase == Phase.RUNNING
    assert len(env.vmm.handles) == 1


async def test_a_boot_that_panics_for_lack_of_memory_is_crashed_out_of_memory(env: Env) -> None:
    console = "Kernel panic - not syncing: System is deadlocked on memory\n"
    env.vmm.boot_error = BootError(
        "QEMU exited with status None before the agent was ready", console
    )
    supervisor = env.runtime.put(desired(memory=96))
    await until(supervisor, Phase.CRASHED)
    assert condition(supervisor, "AgentConnected") == (ConditionStatus.FALSE, Reason.OUT_OF_MEMORY)
    assert supervisor.record.exit_status is not None
    assert supervisor.record.exit_status.reason == Reason.OUT_OF_MEMORY
    assert "deadlocked on memory" in (supervisor.record.message or "")
