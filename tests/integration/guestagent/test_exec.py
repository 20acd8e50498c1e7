"""Exec through the relay against the real guest agent, with our client and the real SDK."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest
from microsandbox.agent import AgentClient as SdkClient

from kubesandbox_protocol import AgentClient, ExecFailedError
from kubesandbox_protocol.messages import MessageType
from tests.support.sdk import sdk_exec
from tests.support.vms import BootedVM
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.vm, pytest.mark.asyncio(loop_scope="module")]


async def test_stdout_and_stderr_stay_separate(client: AgentClient) -> None:
    result = await client.run("/bin/sh", ["-c", "echo out; echo err >&2; echo out2"])
    assert (result.code, result.stdout, result.stderr) == (0, b"out\nout2\n", b"err\n")


async def test_the_sdk_runs_commands_too(sdk: SdkClient) -> None:
    code, out, err = await sdk_exec(sdk, "/bin/sh", ["-c", "echo hi; echo oops >&2; exit 4"])
    assert (code, out, err) == (4, b"hi\n", b"oops\n")


@pytest.mark.parametrize("code", [0, 1, 42, 255])
async def test_exit_codes_are_reported(client: AgentClient, code: int) -> None:
    assert (await client.run("/bin/sh", ["-c", f"exit {code}"])).code == code


async def test_signal_from_the_client_gives_128_plus_signal(client: AgentClient) -> None:
    session = await client.exec("/bin/sleep", ["1000"], keep_stdin_open=True)
    async for t, _ in session.events():
        if t == MessageType.EXEC_STARTED:
            break
    await session.signal(9)
    assert (await session.wait()).code == 137


async def test_self_inflicted_signal_gives_128_plus_signal(client: AgentClient) -> None:
    assert (await client.run("/bin/sh", ["-c", "kill -TERM $$"])).code == 143


async def test_missing_command_fails_with_not_found(client: AgentClient) -> None:
    with pytest.raises(ExecFailedError) as caught:
        await client.run("/nonexistent/tool")
    assert caught.value.kind == "not_found"


async def test_50_mb_through_stdin_arrive_intact(client: AgentClient) -> None:
    data = os.urandom(50 * 1024 * 1024)
    result = await client.run("sha256sum", stdin=data)
    assert result.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


async def test_50_mb_through_stdin_with_the_sdk(sdk: SdkClient) -> None:
    data = os.urandom(50 * 1024 * 1024)
    code, out, _ = await sdk_exec(sdk, "sha256sum", stdin=data)
    assert code == 0
    assert out.split()[0].decode() == hashlib.sha256(data).hexdigest()


async def test_tty_has_a_terminal_of_the_requested_size(client: AgentClient) -> None:
    result = await client.run(
        "/bin/sh", ["-c", "tty; stty size; echo e >&2"], tty=True, rows=40, cols=100
    )
    assert result.code == 0
    assert b"/dev/pts/" in result.stdout
    assert b"40 100" in result.stdout
    assert b"e" in result.stdout  # tty: stderr arrives on stdout
    assert result.stderr == b""


async def test_tty_resize_and_input(client: AgentClient) -> None:
    session = await client.exec(
        "/bin/sh", ["-c", "read line; stty size; echo got:$line"], tty=True, keep_stdin_open=True
    )
    await session.resize(50, 120)
    await session.write_stdin(b"hello\n")
    result = await session.wait()
    assert b"50 120" in result.stdout
    assert b"got:hello" in result.stdout


async def test_env_cwd_and_user_are_applied(client: AgentClient) -> None:
    result = await client.run(
        "/bin/sh",
        ["-c", 'echo "$FOO"; pwd; id -u; id -g; echo "$PATH"'],
        env={"FOO": "bar baz"},
        cwd="/tmp",
        user="app",
    )
    lines = result.stdout.decode().splitlines()
    assert lines[:4] == ["bar baz", "/tmp", "1000", "1000"]
    assert "/bin" in lines[4].split(":")


async def test_numeric_user_and_group(client: AgentClient) -> None:
    result = await client.run("/bin/sh", ["-c", "id -u; id -g"], user="1234:4321")
    assert result.stdout.split() == [b"1234", b"4321"]


async def test_twenty_concurrent_sessions(client: AgentClient) -> None:
    async def one(n: int) -> bytes:
        result = await client.run("/bin/sh", ["-c", f"sleep 0.2; echo session-{n}"])
        return result.stdout

    outputs = await asyncio.gather(*(one(n) for n in range(20)))
    assert outputs == [f"session-{n}\n".encode() for n in range(20)]


async def _running(client: AgentClient, pattern: str) -> bool:
    result = await client.run("/bin/sh", ["-c", f"ps -o args | grep -v grep | grep -q '{pattern}'"])
    return result.code == 0


async def test_disconnecting_client_loses_its_processes_and_others_keep_theirs(
    agent_vm: BootedVM, client: AgentClient
) -> None:
    leaver = await AgentClient.connect(agent_vm.socket)
    stayer = await AgentClient.connect(agent_vm.socket)
    await leaver.exec("/bin/sleep", ["7777"], keep_stdin_open=True)
    kept = await stayer.exec("/bin/sleep", ["8888"], keep_stdin_open=True)

    async def both_running() -> bool:
        return await _running(client, "sleep 7777") and await _running(client, "sleep 8888")

    async def leaver_gone() -> bool:
        return not await _running(client, "sleep 7777")

    await wait_until(both_running, what="both sleeps running")
    await leaver.close()
    await wait_until(leaver_gone, what="the disconnected client's process killed")
    assert await _running(client, "sleep 8888")
    await kept.signal(9)
    assert (await kept.wait()).code == 137
    await stayer.close()


async def test_a_reattached_relay_serves_and_orphans_are_ended(agent_vm: BootedVM) -> None:
    async with await AgentClient.connect(agent_vm.socket) as before:
        await before.exec("/bin/sleep", ["6666"], keep_stdin_open=True)
        await wait_until(lambda: _running(before, "sleep 6666"), what="orphan-to-be running")
        await agent_vm.vm.reattach_relay()
    async with await AgentClient.connect(agent_vm.socket) as after:
        assert (await after.run("/bin/echo", ["reattached"])).stdout == b"reattached\n"

        async def orphan_gone() -> bool:
            return not await _running(after, "sleep 6666")

        await wait_until(orphan_gone, what="the old relay's session ended")
