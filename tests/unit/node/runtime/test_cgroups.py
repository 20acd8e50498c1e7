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


def v1_root(tmp_path: Path, *, merged_cpu: bool = False) -> Path:
    """A hybrid v1 layout like this machine's (or with ``cpu,cpuacct`` merged and linked)."""
    names = ["blkio", "cpuset", "devices", "freezer", "memory", "pids", "systemd", "unified"]
    names += ["cpu,cpuacct"] if merged_cpu else ["cpu", "cpuacct"]
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "cgroup.procs").write_text("")
    if merged_cpu:
        (tmp_path / "cpu").symlink_to("cpu,cpuacct")
        (tmp_path / "cpuacct").symlink_to("cpu,cpuacct")
    (tmp_path / "cpuset" / "cpuset.cpus").write_text("0-3\n")
    (tmp_path / "cpuset" / "cpuset.mems").write_text("0\n")
    return tmp_path


def test_an_absolute_parent_spans_every_hierarchy_from_its_root(tmp_path: Path) -> None:
    root = v1_root(tmp_path)
    manager = CgroupManager(parent="/kubesandbox", root=root)
    assert manager.hierarchies() == [
        "cpu", "cpuacct", "memory",
        "blkio", "cpuset", "devices", "freezer", "pids", "systemd", "unified",
    ]  # fmt: skip
    group = manager.create("vm-a", 1, 1 << 30)
    assert group.paths == tuple(root / h / "kubesandbox" / "vm-a" for h in manager.hierarchies())
    assert group.controllers == tuple(manager.hierarchies())
    # Nothing of the node agent's own cgroup is in the path (it is not below a container's).
    assert all(p.relative_to(root).parts[1:] == ("kubesandbox", "vm-a") for p in group.paths)
    for level in (root / "cpuset" / "kubesandbox", root / "cpuset" / "kubesandbox" / "vm-a"):
        assert (level / "cpuset.cpus").read_text() == "0-3"
        assert (level / "cpuset.mems").read_text() == "0"
    assert (group.paths[0] / "cpu.cfs_quota_us").read_text() == "100000"
    assert str(root / "devices" / "kubesandbox" / "vm-a" / "cgroup.procs") in group.wrap_argv([])
    assert [o.paths for o in manager.orphans(set())] == [group.paths]


def test_a_linked_hierarchy_is_joined_once(tmp_path: Path) -> None:
    manager = CgroupManager(parent="/ksb", root=v1_root(tmp_path, merged_cpu=True))
    assert manager.hierarchies()[:3] == ["cpu", "cpuacct", "memory"]
    assert "cpu,cpuacct" not in manager.hierarchies()


def test_a_relative_parent_stays_in_the_limit_hierarchies(tmp_path: Path) -> None:
    manager = CgroupManager(parent="ksb", root=v1_root(tmp_path))
    assert manager.hierarchies() == ["cpu", "cpuacct", "memory"]


def test_an_absolute_parent_on_v2_is_below_the_root(tmp_path: Path) -> None:
    manager = CgroupManager(parent="/kubesandbox", root=v2_root(tmp_path))
    group = manager.create("vm-d", 1, 1 << 30)
    assert group.paths == (tmp_path / "kubesandbox" / "vm-d",)
