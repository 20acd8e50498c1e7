from __future__ import annotations

from kubesandbox_api.conditions import Phase, Reason
from kubesandbox_node.runtime.crash import boot_failure, classify
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


# The console of a 64 MiB guest (Debian's cloud kernel 6.1), cut: the kernel panics in its own
# initialisation, before the guest agent starts.
TOO_SMALL = (
    "[    0.420461] PCI: Fatal: No config space access function found\n"
    "[    0.901255] Kernel panic - not syncing: System is deadlocked on memory\n"
    "[    0.902245]  out_of_memory.cold+0x2f/0x7e\n"
)


def test_a_boot_that_panics_for_lack_of_memory_is_out_of_memory() -> None:
    reason, message = boot_failure(
        "QEMU exited with status None before the agent was ready", TOO_SMALL
    )
    assert reason == Reason.OUT_OF_MEMORY
    assert message.endswith("Kernel panic - not syncing: System is deadlocked on memory")


def test_the_same_panic_after_boot_is_out_of_memory_too() -> None:
    assert classify(ExitInfo(0, "guest-reset", TOO_SMALL)).reason == Reason.OUT_OF_MEMORY


def test_a_boot_that_panics_otherwise_is_a_guest_panic() -> None:
    console = "Kernel panic - not syncing: VFS: Unable to mount root fs\n"
    reason, message = boot_failure(
        "QEMU exited with status None before the agent was ready", console
    )
    assert reason == Reason.GUEST_PANIC
    assert "Unable to mount root fs" in message


def test_a_boot_without_a_panic_keeps_the_watchdog_verdict() -> None:
    timeout = "guest agent not ready after 120s; VM killed"
    assert boot_failure(timeout, "booting...\n") == (Reason.BOOT_TIMEOUT, timeout)
    exited = "QEMU exited with status 1 before the agent was ready"
    assert boot_failure(exited, "") == (Reason.VMM_EXITED, exited)
