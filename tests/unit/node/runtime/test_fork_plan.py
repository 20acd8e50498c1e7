"""The node agent's fork planning (``runtime.fork``): which machines can be forked, the fork's
machine from its source's, and the identity it is told."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubesandbox_node.runtime.fork import (
    ForkError,
    copy_file,
    fork_machine,
    fork_refusal,
    forked_message,
    source_mac,
)
from kubesandbox_node.vm import bootconfig as bc
from kubesandbox_node.vm.spec import Drive, Share, VMSpec

NIC = ["-netdev", "tap,id=net0,ifname=tap0,script=no,downscript=no",
       "-device", "virtio-net-device,netdev=net0,mac=02:00:00:00:00:01"]  # fmt: skip


def source(*drives: Drive, shares: tuple[Share, ...] = ()) -> VMSpec:
    return VMSpec(
        name="src-uid", kernel=Path("/boot/k"), initrd=Path("/s/src/vm/initrd.cpio"),
        state_dir=Path("/s/src/vm"), memory_mib=128, drives=drives, shares=shares,
        extra_args=tuple(NIC),
    )  # fmt: skip


LAYER = Drive("layer0", Path("/cache/layer0.erofs"))
UPPER = Drive("upper", Path("/rootfs/src/upper.ext4"), read_only=False)


def test_what_can_be_forked() -> None:
    assert fork_refusal(source(LAYER, UPPER)) is None
    disk = Drive("root", Path("/rootfs/src/overlay.qcow2"), read_only=False, format="qcow2")
    assert fork_refusal(source(disk)) is None
    assert fork_refusal(source(LAYER, Drive("vol-data", Path("/v/data.ext4")))) is None
    shared = fork_refusal(source(LAYER, UPPER, Drive("vol-data", Path("/v"), read_only=False)))
    assert shared is not None
    assert "writable volumes (vol-data)" in shared
    virtiofs = fork_refusal(source(shares=(Share("root", Path("/srv/root")),)))
    assert virtiofs is not None
    assert "virtio-fs" in virtiofs
    assert fork_refusal(None) is not None


def test_the_fork_runs_the_sources_machine_with_its_own_files_and_network() -> None:
    nic = [
        "-netdev",
        "tap,id=net0",
        "-device",
        "virtio-net-device,netdev=net0,mac=02:00:00:00:00:02",
    ]
    forked = fork_machine(
        source(LAYER, UPPER), name="fork-uid", state_dir=Path("/s/fork/vm"),
        initrd=Path("/s/fork/vm/initrd.cpio"), disks={"upper": Path("/s/fork/fork/upper.raw")},
        nic_args=nic,
    )  # fmt: skip
    assert forked.name == "fork-uid"
    assert forked.state_dir == Path("/s/fork/vm")
    assert forked.qmp_socket == Path("/s/fork/vm/qmp.sock")
    assert forked.initrd == Path("/s/fork/vm/initrd.cpio")
    assert forked.drives == (LAYER, Drive("upper", Path("/s/fork/fork/upper.raw"), read_only=False))
    assert forked.extra_args == tuple(nic)
    # the devices QEMU migrates are the source's
    assert (forked.cpus, forked.memory_mib, forked.kernel) == (1, 128, Path("/boot/k"))
    with pytest.raises(ForkError, match="upper"):
        fork_machine(source(LAYER, UPPER), name="f", state_dir=Path("/f"), initrd=Path("/f/i"),
                     disks={}, nic_args=[])  # fmt: skip


def test_the_sources_mac_is_read_from_its_nic() -> None:
    assert source_mac(source()) == "02:00:00:00:00:01"
    no_nic = VMSpec(name="n", kernel=Path("k"), initrd=Path("i"), state_dir=Path("d"))
    assert source_mac(no_nic) is None


def test_the_forked_message_carries_a_new_identity() -> None:
    network = bc.Network(
        interfaces=[bc.Interface(mac="02:00:00:00:00:02", addresses=["10.0.2.15/24"],
                                 gateway="10.0.2.1")],
    )  # fmt: skip
    uid = "0b7e6d2c-0000-4000-8000-00000000000A"
    one = forked_message(hostname="copy", uid=uid, old_mac="02:00:00:00:00:01", network=network)
    two = forked_message(hostname="copy", uid=uid, old_mac="02:00:00:00:00:01", network=network)
    assert one["hostname"] == "copy"
    assert one["machine_id"] == "0b7e6d2c00004000800000000000000a"
    assert len(one["machine_id"]) == 32
    assert isinstance(one["seed"], bytes)
    assert len(one["seed"]) == 64
    assert one["seed"] != two["seed"]  # fresh entropy every time
    assert one["interfaces"] == [
        {"old_mac": "02:00:00:00:00:01", "mac": "02:00:00:00:00:02",
         "addresses": ["10.0.2.15/24"], "gateway": "10.0.2.1"}
    ]  # fmt: skip
    assert forked_message(hostname="h", uid=uid, old_mac=None, network=None)["interfaces"] == []


async def test_copies_are_sparse_private_and_fail_with_the_reason(tmp_path: Path) -> None:
    original = tmp_path / "upper.ext4"
    with original.open("wb") as out:
        out.truncate(64 << 20)
        out.seek(1 << 20)
        out.write(b"data")
    copy = tmp_path / "copy.raw"
    await copy_file(original, copy)
    assert copy.read_bytes()[(1 << 20) : (1 << 20) + 4] == b"data"
    assert copy.stat().st_size == 64 << 20
    assert copy.stat().st_blocks * 512 < 1 << 20  # the hole stays a hole
    assert copy.stat().st_mode & 0o777 == 0o600
    with pytest.raises(ForkError, match="copying missing failed"):
        await copy_file(tmp_path / "missing", tmp_path / "x")
