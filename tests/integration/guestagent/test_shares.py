"""Host directories in a real VM over virtio-fs: visible both ways, read-only enforced on the
host, and nothing outside the shared directory reachable from the guest."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from kubesandbox_node.vm import Share
from kubesandbox_node.vm.bootconfig import ShareVolume
from kubesandbox_protocol import AgentClient
from tests.support.vms import BootedVM, booted_vm

pytestmark = [pytest.mark.vm, pytest.mark.asyncio(loop_scope="module")]


@pytest.fixture(scope="module")
def host_dirs() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="ksb-shares-"))
    for name in ("rw", "ro"):
        (root / name).mkdir()
        (root / name / "from-host.txt").write_text(f"{name} from the host\n")
    (root / "secret.txt").write_text("outside every share\n")
    (root / "ro" / "escape").symlink_to("../secret.txt")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_vm(agent_binary: Path, host_dirs: Path) -> AsyncIterator[BootedVM]:
    async with booted_vm(
        agent_binary,
        shares=(
            Share("vol0", host_dirs / "rw", read_only=False),
            Share("vol1", host_dirs / "ro", read_only=True),
        ),
        volumes=(
            ShareVolume(mount_path="/mnt/rw", tag="vol0"),
            ShareVolume(mount_path="/mnt/ro", tag="vol1", read_only=True),
        ),
    ) as vm:
        yield vm


@pytest_asyncio.fixture(loop_scope="module")
async def guest(shared_vm: BootedVM) -> AsyncIterator[AgentClient]:
    async with await AgentClient.connect(shared_vm.socket) as connected:
        yield connected


async def test_files_cross_both_ways(guest: AgentClient, host_dirs: Path) -> None:
    assert await guest.read_file("/mnt/rw/from-host.txt") == b"rw from the host\n"
    await guest.write_file("/mnt/rw/from-guest.txt", b"written in the VM\n")
    assert (host_dirs / "rw" / "from-guest.txt").read_bytes() == b"written in the VM\n"
    (host_dirs / "rw" / "later.txt").write_text("appeared after boot\n")
    listed = await guest.run("cat", ["/mnt/rw/later.txt"])
    assert listed.stdout == b"appeared after boot\n"


async def test_read_only_holds_even_against_a_remount_by_the_guest(
    guest: AgentClient, host_dirs: Path
) -> None:
    assert await guest.read_file("/mnt/ro/from-host.txt") == b"ro from the host\n"
    plain = await guest.run("/bin/sh", ["-c", "echo x > /mnt/ro/new.txt"])
    assert plain.code != 0, "the read-only mount accepted a write"
    # the guest kernel is the tenant's: remounting read-write must not open the host directory
    forced = await guest.run(
        "/bin/sh", ["-c", "mount -o remount,rw /mnt/ro && echo x > /mnt/ro/new.txt; echo $?"]
    )
    assert not (host_dirs / "ro" / "new.txt").exists(), forced.stdout + forced.stderr
    assert sorted(p.name for p in (host_dirs / "ro").iterdir()) == ["escape", "from-host.txt"]


async def test_nothing_outside_a_share_is_reachable(guest: AgentClient) -> None:
    escaped = await guest.run(
        "/bin/sh", ["-c", "cat /mnt/ro/escape /mnt/ro/../secret.txt /mnt/rw/../secret.txt"]
    )
    assert b"outside every share" not in escaped.stdout
    assert escaped.code != 0
