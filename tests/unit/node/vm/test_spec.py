from pathlib import Path

from kubesandbox_node.vm import Drive, Share, VMSpec
from kubesandbox_node.vm.virtiofs import daemon_argv


def _spec(**kw: object) -> VMSpec:
    base: dict[str, object] = {
        "name": "sbx",
        "kernel": Path("/k/vmlinuz"),
        "initrd": Path("/k/initrd"),
        "state_dir": Path("/run/sbx"),
    }
    base.update(kw)
    return VMSpec(**base)  # type: ignore[arg-type]


def test_argv_is_a_quiet_microvm_with_the_agent_port_named_agent() -> None:
    argv = _spec().argv()
    assert argv[0] == "qemu-system-x86_64"
    for flag in ("-nodefaults", "-no-user-config", "-nographic", "-no-reboot"):
        assert flag in argv
    assert argv[argv.index("-machine") + 1].startswith("microvm,")
    assert "virtserialport,chardev=agent,name=agent" in argv
    assert "chardev=qmp,mode=control" in argv
    agent = next(a for a in argv if a.startswith("socket,id=agent,"))
    assert "path=/run/sbx/agent-port.sock" in agent
    assert "server=on" in agent


def test_tsc_hint_only_under_tcg() -> None:
    assert "tsc_early_khz=2596122" in _spec(tsc_khz=2596122).kernel_cmdline()
    assert "tsc_early_khz" not in _spec(tsc_khz=2596122, accel="kvm").kernel_cmdline()
    argv = _spec(accel="kvm").argv()
    assert argv[argv.index("-cpu") + 1] == "host"


def test_drives_carry_serials_and_writable_ones_are_not_read_only() -> None:
    argv = _spec(
        drives=(Drive("layer0", Path("/l/0.erofs")), Drive("upper", Path("/u,x.ext4"), False))
    ).argv()
    joined = " ".join(argv)
    assert "virtio-blk-device,drive=disk0,serial=layer0" in joined
    assert "file=/l/0.erofs,format=raw,if=none,readonly=on" in joined
    assert "file=/u,,x.ext4,format=raw,if=none,discard=unmap,auto-read-only=off" in joined


def test_shares_become_vhost_user_fs_devices_on_shared_memory() -> None:
    spec = _spec(shares=(Share("vol1", Path("/srv"), read_only=True),))
    argv = spec.argv()
    joined = " ".join(argv)
    assert f"socket,id=fs0,path={spec.state_dir / 'fs-vol1.sock'}" in joined
    assert "vhost-user-fs-device,chardev=fs0,tag=vol1" in joined
    # vhost-user needs the guest RAM in memory the daemon can map
    assert f"memory-backend-memfd,id=ram,size={spec.memory_mib}M,share=on" in joined
    assert argv[argv.index("-machine") + 1].endswith(",memory-backend=ram")


def test_a_vm_without_shares_keeps_private_memory() -> None:
    joined = " ".join(_spec().argv())
    assert "memory-backend" not in joined
    assert "vhost-user-fs" not in joined


def test_read_only_shares_are_read_only_on_the_host() -> None:
    spec = _spec()
    ro = daemon_argv(spec, Share("vol0", Path("/data"), read_only=True))
    rw = daemon_argv(spec, Share("vol0", Path("/data"), read_only=False))
    # a private mount namespace with the directory bind-mounted read-only, then the daemon
    assert ro[:4] == ["unshare", "--mount", "--propagation", "private"]
    assert "remount,bind,ro" in ro[6]
    assert ro[8] == "/data"
    assert ro[9:] == rw
    assert rw[0] == spec.virtiofsd
    assert "source=/data" in rw
    assert "sandbox=namespace" in rw
    assert f"--socket-path={spec.state_dir / 'fs-vol0.sock'}" in rw
