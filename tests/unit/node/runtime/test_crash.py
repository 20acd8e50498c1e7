from __future__ import annotations

from kubesandbox_api.conditions import Phase, Reason
from kubesandbox_node.runtime.crash import classify
from kubesandbox_node.runtime.vmm import ExitInfo


def test_guest_power_off_is_a_clean_stop() -> None:
    ending = classify(ExitInfo(0, "guest-shutdown", ""))
    assert (ending.phase, ending.reason, ending.success) == (
        Phase.STOPPED,
        Reason.GUEST_POWER_OFF,
        True,
    )


def test_kernel_panic_is_a_guest_panic_with_the_line() -> None:
    ending = classify(ExitInfo(0, "guest-reset", "x\nKernel panic - not syncing: VFS\ny\n"))
    assert ending.reason == Reason.GUEST_PANIC
    assert "not syncing: VFS" in ending.message


def test_guest_oom_panic_is_out_of_memory() -> None:
    console = (
        "Out of memory: Killed process 1 (init)\n"
        "Kernel panic - not syncing: Attempted to kill init!\n"
    )
    assert classify(ExitInfo(0, "guest-reset", console)).reason == Reason.OUT_OF_MEMORY


def test_host_oom_kill_counts_from_the_cgroup() -> None:
    ending = classify(ExitInfo(137, None, "", oom_kills=2), oom_kills_before=1)
    assert (ending.phase, ending.reason) == (Phase.CRASHED, Reason.OUT_OF_MEMORY)


def test_any_other_exit_is_vmm_exited() -> None:
    ending = classify(ExitInfo(1, None, ""))
    assert (ending.phase, ending.reason, ending.code) == (Phase.CRASHED, Reason.VMM_EXITED, 1)
