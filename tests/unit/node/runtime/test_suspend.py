from __future__ import annotations

import asyncio
import stat
from pathlib import Path

from kubesandbox_api.conditions import ConditionStatus, Phase, Reason
from kubesandbox_node.runtime.model import DesiredSandbox
from kubesandbox_node.runtime.records import STATE_FILE
from kubesandbox_node.runtime.supervisor import Supervisor
from kubesandbox_node.vm.machine import BootError
from kubesandbox_node.vm.snapshot import SnapshotError
from kubesandbox_node.vm.spec import Share, VMSpec
from kubesandbox_protocol import AgentClient
from tests.unit.node.runtime.conftest import Env
from tests.unit.node.runtime.test_supervisor import again, condition, desired, until


async def suspended(env: Env) -> tuple[Supervisor, int]:
    d = desired()
    supervisor = env.runtime.put(d)
    await until(supervisor, Phase.RUNNING)
    pid = supervisor.record.vm.pid if supervisor.record.vm else 0
    env.runtime.put(again(d, 2, state="Suspended"))
    await until(supervisor, Phase.SUSPENDED)
    return supervisor, pid


async def test_suspend_saves_a_private_state_file_and_ends_the_vm(env: Env) -> None:
    supervisor, pid = await suspended(env)
    state = supervisor.dir / STATE_FILE
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert supervisor.handle is None
    assert supervisor.record.vm is None
    assert pid not in env.vmm.alive
    assert env.vmm.handles[0].calls == ["save_state", "quit"]
    status = supervisor.status()
    assert status.suspension is not None
    assert status.suspension.state_bytes == state.stat().st_size > 0
    assert status.suspension.reason == Reason.SUSPENDED_BY_USER
    assert status.suspension.resumed_at is None
    assert condition(supervisor, "Suspended") == (ConditionStatus.TRUE, Reason.SUSPENDED_BY_USER)
    assert condition(supervisor, "AgentConnected")[0] == ConditionStatus.FALSE
    assert "bytes of VM state saved" in (status.message or "")


async def test_running_restores_from_the_state_and_removes_it(env: Env) -> None:
    supervisor, pid = await suspended(env)
    saved = (supervisor.dir / STATE_FILE).read_bytes()
    env.runtime.put(again(supervisor.desired, 3, state="Running"))
    await until(supervisor, Phase.RUNNING)
    assert env.vmm.restored_from == [saved]
    assert f"memory of vm {pid}".encode() in saved
    assert not (supervisor.dir / STATE_FILE).exists()
    assert env.preparer.built == [supervisor.uid]  # restored, not built and booted again
    suspension = supervisor.status().suspension
    assert suspension is not None
    assert suspension.resumed_at is not None
    assert suspension.state_bytes == 0
    assert condition(supervisor, "Suspended") == (ConditionStatus.FALSE, Reason.RESUMED)
    assert condition(supervisor, "AgentConnected") == (ConditionStatus.TRUE, Reason.AGENT_READY)
    async with await AgentClient.connect(supervisor.relay_socket) as client:
        assert (await client.run("echo", ["awake"])).stdout == b"awake\n"


async def test_the_restored_machine_is_the_saved_one_whatever_the_spec_says_now(env: Env) -> None:
    supervisor, _ = await suspended(env)
    before = env.vmm.specs[0]
    data = again(supervisor.desired, 3, state="Running").model_dump(by_alias=True)
    data["spec"]["memory"] = 1024
    env.runtime.put(DesiredSandbox.model_validate(data))
    await until(supervisor, Phase.RUNNING)
    assert env.vmm.specs[-1] == before


async def test_a_restarted_node_agent_keeps_it_suspended_and_resumes_it_later(env: Env) -> None:
    supervisor, _ = await suspended(env)
    await supervisor.detach()
    runtime = env.fresh_runtime()
    assert await runtime.recover() == {supervisor.uid: False}
    env.runtime = runtime
    again_supervisor = runtime.sandboxes[supervisor.uid]
    assert again_supervisor.phase == Phase.SUSPENDED
    assert (again_supervisor.dir / STATE_FILE).exists()
    runtime.put(again(supervisor.desired, 3, state="Running"))
    await until(again_supervisor, Phase.RUNNING)
    assert len(env.vmm.restored_from) == 1


async def test_a_suspend_cut_short_after_the_state_was_written_is_suspended(env: Env) -> None:
    supervisor, _ = await suspended(env)
    await supervisor.detach()
    record = supervisor.record.model_copy(update={"phase": Phase.SUSPENDING})
    env.runtime.store.save(supervisor.uid, record)
    runtime = env.fresh_runtime()
    await runtime.recover()
    env.runtime = runtime
    assert runtime.sandboxes[supervisor.uid].phase == Phase.SUSPENDED


async def test_a_resume_cut_short_before_the_state_was_loaded_resumes_again(env: Env) -> None:
    supervisor, _ = await suspended(env)
    await supervisor.detach()
    record = supervisor.record.model_copy(update={"phase": Phase.RESUMING})
    record.desired = again(supervisor.desired, 3, state="Running")
    env.runtime.store.save(supervisor.uid, record)
    runtime = env.fresh_runtime()
    await runtime.recover()
    env.runtime = runtime
    await until(runtime.sandboxes[supervisor.uid], Phase.RUNNING)
    assert len(env.vmm.restored_from) == 1


async def test_stopped_with_kill_discards_the_state(env: Env) -> None:
    supervisor, _ = await suspended(env)
    env.runtime.put(again(supervisor.desired, 3, state="Stopped", stopMode="Kill"))
    await until(supervisor, Phase.STOPPED)
    assert not (supervisor.dir / STATE_FILE).exists()
    assert env.vmm.restored_from == []
    assert supervisor.record.saved is None


async def test_a_graceful_stop_wakes_the_guest_to_shut_it_down(env: Env) -> None:
    supervisor, _ = await suspended(env)
    env.runtime.put(again(supervisor.desired, 3, state="Stopped"))
    await until(supervisor, Phase.STOPPED)
    assert len(env.vmm.restored_from) == 1
    assert env.vmm.last.calls == ["shutdown"]
    assert not (supervisor.dir / STATE_FILE).exists()


async def test_a_failed_save_leaves_the_vm_running_and_says_why(env: Env) -> None:
    env.vmm.save_error = SnapshotError("migration failed: disk full")
    d = desired()
    supervisor = env.runtime.put(d)
    await until(supervisor, Phase.RUNNING)
    task = supervisor.apply(again(d, 2, state="Suspended"))
    assert task is not None
    await task
    assert supervisor.phase == Phase.RUNNING
    assert env.vmm.last.calls == ["save_state", "resume"]
    assert condition(supervisor, "Suspended") == (ConditionStatus.FALSE, Reason.SUSPEND_FAILED)
    assert "disk full" in (supervisor.record.message or "")
    assert not (supervisor.dir / STATE_FILE).exists()


async def test_a_restore_that_fails_before_loading_stays_suspended(env: Env) -> None:
    supervisor, _ = await suspended(env)
    env.vmm.restore_error = BootError("restore failed: QEMU exited", "")
    task = supervisor.apply(again(supervisor.desired, 3, state="Running"))
    assert task is not None
    await task
    assert supervisor.phase == Phase.SUSPENDED
    assert "restore failed" in (supervisor.record.message or "")
    assert (supervisor.dir / STATE_FILE).exists()
    env.vmm.restore_error = None
    supervisor.restore()
    await until(supervisor, Phase.RUNNING)


async def test_delete_while_suspended_removes_the_state(env: Env) -> None:
    supervisor, _ = await suspended(env)
    folder = supervisor.dir
    await env.runtime.remove(supervisor.uid)
    assert not folder.exists()


async def test_a_machine_with_virtiofs_shares_is_not_suspended(env: Env) -> None:
    d = desired()
    supervisor = env.runtime.put(d)
    await until(supervisor, Phase.RUNNING)
    spec = supervisor.record.spec
    assert isinstance(spec, VMSpec)
    supervisor.record.spec = VMSpec(
        name=spec.name, kernel=spec.kernel, initrd=spec.initrd, state_dir=spec.state_dir,
        shares=(Share("root", Path("/srv")),),
    )  # fmt: skip
    await supervisor.suspend()
    assert supervisor.phase == Phase.RUNNING
    status, reason = condition(supervisor, "Suspended")
    assert (status, reason) == (ConditionStatus.FALSE, Reason.SUSPEND_FAILED)
    assert "virtio-fs" in (supervisor.record.message or "")
    assert env.vmm.last.calls == []


async def test_created_suspended_is_stopped_with_nothing_saved(env: Env) -> None:
    supervisor = env.runtime.put(desired(lifecycle={"state": "Suspended"}))
    assert supervisor.phase == Phase.STOPPED
    assert "nothing was saved" in (supervisor.record.message or "")
    assert env.vmm.handles == []


async def test_idle_suspend_sleeps_through_puts_of_the_same_state_until_woken(env: Env) -> None:
    d = desired(lifecycle={"idleTimeoutSeconds": 1, "idleAction": "Suspend"})
    supervisor = env.runtime.put(d)
    await until(supervisor, Phase.RUNNING)
    await until(supervisor, Phase.SUSPENDED, within=5)
    suspension = supervisor.status().suspension
    assert suspension is not None
    assert suspension.reason == Reason.IDLE_TIMEOUT
    assert condition(supervisor, "Suspended") == (ConditionStatus.TRUE, Reason.IDLE_TIMEOUT)
    assert supervisor.sleeping()
    env.runtime.put(again(d, 2, stopGracePeriodSeconds=5))  # still Running: keeps sleeping
    assert supervisor.phase == Phase.SUSPENDED
    assert await supervisor.wake()
    assert supervisor.status().phase == Phase.RUNNING
    assert condition(supervisor, "Suspended") == (ConditionStatus.FALSE, Reason.WOKEN_BY_USE)
    assert "woken by use" in (supervisor.record.message or "")


async def test_the_idle_time_counts_from_running_not_from_a_slow_boot(env: Env) -> None:
    env.vmm.boot_delay = 1.5  # longer than the idle timeout
    d = desired(lifecycle={"idleTimeoutSeconds": 1, "idleAction": "Suspend"})
    supervisor = env.runtime.put(d)
    await until(supervisor, Phase.RUNNING)
    await asyncio.sleep(0.5)  # ten policy ticks
    assert supervisor.phase == Phase.RUNNING
    await until(supervisor, Phase.SUSPENDED, within=5)


async def test_an_idle_suspended_sandbox_asked_paused_is_restored_paused(env: Env) -> None:
    d = desired(lifecycle={"idleTimeoutSeconds": 1, "idleAction": "Suspend"})
    supervisor = env.runtime.put(d)
    await until(supervisor, Phase.RUNNING)
    await until(supervisor, Phase.SUSPENDED, within=5)
    env.runtime.put(again(d, 2, state="Paused"))
    await until(supervisor, Phase.PAUSED)
    assert not supervisor.sleeping()


async def test_idle_drain_stays_the_default(env: Env) -> None:
    supervisor = env.runtime.put(desired(lifecycle={"idleTimeoutSeconds": 1}))
    await until(supervisor, Phase.RUNNING)
    await until(supervisor, Phase.STOPPED, within=5)
    assert supervisor.record.saved is None
