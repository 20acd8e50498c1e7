"""Filesystem operations through the relay against the real guest agent."""

from __future__ import annotations

import hashlib
import os

import pytest
from microsandbox.agent import AgentClient as SdkClient

from kubesandbox_protocol import AgentClient, FsError
from tests.support.sdk import sdk_fs, sdk_read_file, sdk_write_file

pytestmark = [pytest.mark.vm, pytest.mark.asyncio(loop_scope="module")]

FIFTY_MB = 50 * 1024 * 1024


async def test_write_and_read_back_50_mb(client: AgentClient) -> None:
    data = os.urandom(FIFTY_MB)
    assert await client.write_file("/root/big.bin", data) == FIFTY_MB
    digest = hashlib.sha256(data).hexdigest()
    assert hashlib.sha256(await client.read_file("/root/big.bin")).hexdigest() == digest
    in_guest = await client.run("sha256sum", ["/root/big.bin"])
    assert in_guest.stdout.split()[0].decode() == digest
    await client.remove("/root/big.bin")


async def test_sdk_write_and_read_use_the_transcript_sequence(sdk: SdkClient) -> None:
    data = os.urandom(7 * 1024 * 1024 + 3)  # three chunks, the last one short
    await sdk_write_file(sdk, "/tmp/sdk.bin", data)
    assert await sdk_read_file(sdk, "/tmp/sdk.bin") == data
    entry = await sdk_fs(sdk, "Stat", path="/tmp/sdk.bin", follow_symlink=True)
    assert entry["Stat"]["size"] == len(data)


async def test_stat_reports_kind_size_and_mode(client: AgentClient) -> None:
    await client.write_file("/tmp/stat.txt", b"12345", mode=0o640)
    entry = await client.stat("/tmp/stat.txt")
    assert (entry["kind"], entry["size"], entry["mode"] & 0o777) == ("file", 5, 0o640)
    assert (await client.stat("/tmp"))["kind"] == "dir"
    assert (await client.stat("/bin/sh", follow_symlink=False))["kind"] == "symlink"


async def test_mkdir_list_copy_rename_remove(client: AgentClient) -> None:
    await client.mkdir("/tmp/d")
    await client.write_file("/tmp/d/a.txt", b"alpha")
    await client.copy("/tmp/d/a.txt", "/tmp/d/b.txt")
    await client.rename("/tmp/d/b.txt", "/tmp/d/c.txt")
    names = sorted(e["path"].rsplit("/", 1)[-1] for e in await client.list_dir("/tmp/d"))
    assert names == ["a.txt", "c.txt"]
    assert await client.read_file("/tmp/d/c.txt") == b"alpha"
    await client.remove("/tmp/d/a.txt")
    with pytest.raises(FsError):
        await client.stat("/tmp/d/a.txt")
    await client.remove_dir("/tmp/d", recursive=True)
    with pytest.raises(FsError):
        await client.stat("/tmp/d")


async def test_errors_name_the_path(client: AgentClient) -> None:
    with pytest.raises(FsError, match="/no/such/file"):
        await client.read_file("/no/such/file")
    with pytest.raises(FsError):
        await client.remove_dir("/tmp", recursive=False)


async def test_root_is_the_overlay_and_writable(client: AgentClient) -> None:
    await client.write_file("/etc/written-by-test", b"x")
    mounts = (await client.run("/bin/cat", ["/proc/mounts"])).stdout.decode()
    assert any(
        line.split()[1] == "/" and line.split()[2] == "overlay" for line in mounts.splitlines()
    )
    assert (await client.run("/bin/hostname")).stdout.strip() == b"guest"
