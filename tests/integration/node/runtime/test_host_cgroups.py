"""VM cgroups on this host's real cgroup hierarchies: with an absolute parent a process leaves
every hierarchy of the cgroup it was started in (what lets VMs outlive the node agent's
container), cpuset included, and everything is removed afterwards."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from kubesandbox_node.runtime.cgroups import CGROUP_FS, CgroupManager


def writable_cgroups() -> bool:
    probe = CGROUP_FS / "memory" / f"ksb-probe-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not writable_cgroups(), reason="needs root and a writable cgroup v1 hierarchy at /sys/fs/cgroup"
)


def cgroups_of(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    return {names or "unified": path for _, names, path in (x.split(":", 2) for x in lines)}


def test_an_absolute_parent_takes_the_process_out_of_every_hierarchy() -> None:
    parent = f"/kubesandbox-test-{os.getpid()}"
    manager = CgroupManager(parent=parent)
    ours = cgroups_of(os.getpid())
    group = manager.create("vm-host-test", 0.5, 64 << 20)
    process = subprocess.Popen(group.wrap_argv(["sleep", "60"]), stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{process.pid}/comm").read_text().strip() != "sleep":
            assert process.poll() is None, "the cgroup wrapper failed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        theirs = cgroups_of(process.pid)
        assert set(theirs) == set(ours)  # every hierarchy this host has
        assert set(theirs.values()) == {f"{parent}/vm-host-test"}
        assert group.pids() == [process.pid]
        cpuset = CGROUP_FS / "cpuset" / parent.strip("/") / "vm-host-test" / "cpuset.cpus"
        assert cpuset.read_text().strip()
        assert group.usage().memory_limit_bytes == 64 << 20
    finally:
        process.kill()
        process.wait()
        group.remove()
        manager.remove_parents()
    assert not any(path.exists() for path in manager.parents())
