from pathlib import Path

from kubesandbox_node.vm import Drive, Share, VMSpec


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
    assert "file=/u,,x.ext4,format=raw,if=none,discard=unmap" in joined


def test_shares_become_9p_devices_with_their_tag() -> None:
    joined = " ".join(_spec(shares=(Share("vol1", Path("/srv"), read_only=True),)).argv())
    assert "local,id=fs0,path=/srv,security_model=none,readonly=on" in joined
    assert "virtio-9p-device,fsdev=fs0,mount_tag=vol1" in joined
