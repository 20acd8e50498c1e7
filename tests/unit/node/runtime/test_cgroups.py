from __future__ import annotations

from pathlib import Path

from kubesandbox_node.runtime.cgroups import CgroupManager, vmm_overhead_mib


def v2_root(tmp_path: Path) -> Path:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    return tmp_path


def test_v2_limits_usage_and_oom_kills(tmp_path: Path) -> None:
    manager = CgroupManager(parent="ksb", root=v2_root(tmp_path))
    assert manager.version == 2
    group = manager.create("vm-a", 1.2, 768 << 20)
    folder = tmp_path / "ksb" / "vm-a"
    assert group.paths == (folder,)
    assert (folder / "cpu.max").read_text() == "120000 100000"
    assert (folder / "memory.max").read_text() == str(768 << 20)
    assert (tmp_path / "ksb" / "cgroup.subtree_control").read_text() == "+cpu +memory"
    (folder / "cpu.stat").write_text("usage_usec 2500\nuser_usec 2000\n")
    (folder / "memory.current").write_text("1048576\n")
    (folder / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    usage = group.usage()
    assert (usage.cpu_ns, usage.memory_bytes, usage.oom_kills) == (2_500_000, 1 << 20, 1)
    assert usage.memory_limit_bytes == 768 << 20


def test_v1_uses_the_cpu_cpuacct_and_memory_hierarchies(tmp_path: Path) -> None:
    for controller in ("cpu", "cpuacct", "memory"):
        (tmp_path / controller).mkdir()
    manager = CgroupManager(parent="ksb", root=tmp_path)
    assert manager.version == 1
    group = manager.create("vm-b", 2.2, 1 << 30)
    assert group.controllers == ("cpu", "cpuacct", "memory")
    cpu, cpuacct, memory = group.paths
    assert (cpu / "cpu.cfs_quota_us").read_text() == "220000"
    assert (memory / "memory.limit_in_bytes").read_text() == str(1 << 30)
    (cpuacct / "cpuacct.usage").write_text("123456789\n")
    (memory / "memory.usage_in_bytes").write_text("4096\n")
    (memory / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    usage = group.usage()
    assert (usage.cpu_ns, usage.memory_bytes, usage.oom_kills) == (123456789, 4096, 2)


def test_orphans_are_vm_groups_no_record_names(tmp_path: Path) -> None:
    manager = CgroupManager(parent="ksb", root=v2_root(tmp_path))
    manager.create("vm-known", 1, 1 << 30)
    manager.create("vm-lost", 1, 1 << 30)
    orphans = manager.orphans({"vm-known"})
    assert [o.paths[0].name for o in orphans] == ["vm-lost"]


def test_argv_enters_the_cgroup_before_exec(tmp_path: Path) -> None:
    group = CgroupManager(parent="ksb", root=v2_root(tmp_path)).create("vm-c", 1, 1 << 30)
    argv = group.wrap_argv(["qemu-system-x86_64", "-name", "x"])
    assert argv[:2] == ["/bin/sh", "-c"]
    assert argv[-4:] == ["--", "qemu-system-x86_64", "-name", "x"]
    assert str(tmp_path / "ksb" / "vm-c" / "cgroup.procs") in argv


def test_overhead_covers_the_tcg_translation_cache() -> None:
    assert vmm_overhead_mib("tcg", 64) > vmm_overhead_mib("kvm")
