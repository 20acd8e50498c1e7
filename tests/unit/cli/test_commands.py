"""``kubectl-sandbox`` commands against the fake gateway (tests/unit/cli/fakegateway.py)."""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubesandbox_cli.commands import Streams, format_entry, reached, split_remote, state_of
from kubesandbox_cli.main import parse, run
from kubesandbox_protocol.messages import MessageType
from tests.unit.cli.fakegateway import NAMESPACE, TOKEN, Fake, fake_gateway

SPEC = {
    "env": [{"key": "GREETING", "value": "hi"}],
    "runtime": {"workdir": "/work", "user": "app", "shell": "/bin/bash"},
}


@dataclass
class Outcome:
    code: int
    stdout: bytes
    stderr: str


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.delenv("KUBESANDBOX_GATEWAY", raising=False)


@pytest.fixture
async def fake() -> AsyncIterator[Fake]:
    async with fake_gateway() as gateway:
        gateway.add("box", spec=SPEC)
        yield gateway


async def cli(
    fake: Fake, *argv: str, stdin: bytes = b"", token: str = TOKEN, namespace: str = NAMESPACE
) -> Outcome:
    streams = Streams(io.BytesIO(stdin), io.BytesIO(), io.BytesIO())
    flags = ["--gateway", fake.url, "--token", token, "-n", namespace]
    code = await run([*flags, *argv], streams)
    stdout, stderr = streams.stdout, streams.stderr
    assert isinstance(stdout, io.BytesIO)
    assert isinstance(stderr, io.BytesIO)
    return Outcome(code, stdout.getvalue(), stderr.getvalue().decode())


def exec_requests(fake: Fake) -> list[dict[str, object]]:
    return [p for _, t, p in fake.guest.received if t == MessageType.EXEC_REQUEST]


# --- parsing ---------------------------------------------------------------------------------


def test_exec_takes_everything_after_the_double_dash_as_the_command() -> None:
    args = parse(["-n", "ns1", "exec", "box", "-it", "--", "ls", "-l", "--", "-n"])
    assert (args.verb, args.name, args.stdin, args.tty) == ("exec", "box", True, True)
    assert args.argv == ["ls", "-l", "--", "-n"]
    assert args.namespace == "ns1"


def test_global_flags_are_accepted_after_the_command() -> None:
    args = parse(["stop", "box", "--gateway", "http://gw:8080", "-n", "x", "--no-wait"])
    assert (args.gateway, args.namespace, args.no_wait) == ("http://gw:8080", "x", True)
    assert parse(["-n", "before", "ls", "box"]).namespace == "before"


def test_wait_states_are_checked() -> None:
    with pytest.raises(SystemExit):
        parse(["wait", "box", "--for", "sleeping"])
    assert parse(["wait", "box", "--for", "paused"]).want == "paused"


def test_remote_paths_look_like_kubectl_cp() -> None:
    assert split_remote("box:/tmp/a") == ("box", "/tmp/a")
    assert split_remote("box:") == ("box", "/")
    assert split_remote("./a:b") is None
    assert split_remote("/abs/path") is None
    assert split_remote("dir/a:b") is None


def test_ls_lines_show_kind_mode_size_and_name() -> None:
    line = format_entry(
        {"path": "/tmp/d", "kind": "dir", "size": 0, "mode": 0o40750, "modified": 0}
    )
    assert line.startswith("drwxr-x---")
    assert line.endswith(" 1970-01-01 00:00 d/")


def test_paused_is_told_apart_when_the_gateway_can() -> None:
    assert state_of({"status": "stopped", "status_reason": "paused"}) == "paused"
    assert state_of({"status": "stopped", "phase": "Paused"}) == "paused"
    assert not reached({"status": "stopped", "phase": "Stopped"}, "paused")
    # the SDK's statuses alone cannot tell: a pause that shows as stopped is accepted
    assert reached({"status": "stopped", "status_reason": None}, "paused")
    assert not reached({"status": "running", "status_reason": None}, "paused")


# --- exec and shell --------------------------------------------------------------------------


async def test_exec_prints_output_and_sends_the_spec_defaults(fake: Fake) -> None:
    out = await cli(fake, "exec", "box", "--", "echo", "hello", "world")
    assert (out.code, out.stdout, out.stderr) == (0, b"hello world\n", "")
    (request,) = exec_requests(fake)
    assert request["env"] == ["GREETING=hi"]
    assert (request["cwd"], request["user"], request["tty"]) == ("/work", "app", False)


async def test_exec_exit_code_is_the_commands(fake: Fake) -> None:
    out = await cli(fake, "exec", "box", "--", "exit", "3")
    assert out.code == 3
    assert out.stderr == "leaving\n"


async def test_exec_of_a_missing_program_exits_127_with_the_agents_message(fake: Fake) -> None:
    out = await cli(fake, "exec", "box", "--", "missing")
    assert out.code == 127
    assert out.stderr == (
        "kubectl-sandbox: cannot run 'missing' in sandbox 'box': missing: command not found\n"
    )


async def test_exec_i_streams_stdin(fake: Fake) -> None:
    data = os.urandom(3 * 1024 * 1024 + 11)
    out = await cli(fake, "exec", "box", "-i", "--", "cat", stdin=data)
    assert out.code == 0
    assert hashlib.sha256(out.stdout).hexdigest() == hashlib.sha256(data).hexdigest()


async def test_exec_without_i_closes_stdin_at_once(fake: Fake) -> None:
    out = await cli(fake, "exec", "box", "--", "cat", stdin=b"not for the command")
    assert (out.code, out.stdout) == (0, b"")


async def test_exec_t_asks_for_a_terminal(fake: Fake) -> None:
    out = await cli(fake, "exec", "box", "-t", "--", "echo", "x")
    assert out.code == 0
    (request,) = exec_requests(fake)
    assert request["tty"] is True
    assert int(str(request["rows"])) > 0
    assert int(str(request["cols"])) > 0


async def test_exec_needs_a_command(fake: Fake) -> None:
    out = await cli(fake, "exec", "box")
    assert out.code == 1
    assert "exec needs a command" in out.stderr


async def test_shell_runs_the_script_with_the_sandboxs_shell(fake: Fake) -> None:
    out = await cli(fake, "shell", "box", "echo $GREETING && ls")
    assert (out.code, out.stdout) == (0, b"echo $GREETING && ls")
    (request,) = exec_requests(fake)
    assert (request["cmd"], request["args"]) == ("/bin/bash", ["-c", "echo $GREETING && ls"])


async def test_shell_defaults_to_sh(fake: Fake) -> None:
    fake.add("plain")
    out = await cli(fake, "shell", "plain", "true")
    assert out.code == 0
    assert exec_requests(fake)[0]["cmd"] == "/bin/sh"


async def test_exec_in_a_stopped_sandbox_says_how_to_start_it(fake: Fake) -> None:
    fake.add("off", status="stopped")
    out = await cli(fake, "exec", "off", "--", "echo")
    assert out.code == 1
    assert out.stderr == (
        "kubectl-sandbox: sandbox 'off' is stopped, not running; "
        "`kubectl sandbox start off` first\n"
    )


# --- files -----------------------------------------------------------------------------------


async def test_cp_round_trip_in_chunks(fake: Fake, tmp_path: Path) -> None:
    data = os.urandom(7 * 1024 * 1024 + 3)
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    assert (await cli(fake, "cp", str(src), "box:/tmp/")).code == 0  # into the directory
    assert bytes(fake.guest.files["/tmp/blob.bin"]) == data
    writes = [
        p
        for _, t, p in fake.guest.received
        if t == MessageType.FS_REQUEST and "Write" in str(p["op"])
    ]
    assert len(writes) == 1
    back = tmp_path / "back"
    back.mkdir()
    out = await cli(fake, "cp", "box:/tmp/blob.bin", str(back))
    assert (out.code, out.stderr) == (0, "")
    assert (back / "blob.bin").read_bytes() == data
    assert [p.name for p in back.iterdir()] == ["blob.bin"]  # no partial file left


async def test_cp_with_dash_uses_stdin_and_stdout(fake: Fake) -> None:
    assert (await cli(fake, "cp", "-", "box:/tmp/in.txt", stdin=b"piped\n")).code == 0
    out = await cli(fake, "cp", "box:/tmp/in.txt", "-")
    assert (out.code, out.stdout) == (0, b"piped\n")


async def test_cp_copies_directory_trees_both_ways(fake: Fake, tmp_path: Path) -> None:
    tree = tmp_path / "proj"
    (tree / "src" / "deep").mkdir(parents=True)
    (tree / "README").write_bytes(b"read me\n")
    (tree / "src" / "main.py").write_bytes(b"print(1)\n")
    (tree / "src" / "run.sh").write_bytes(b"#!/bin/sh\n")
    (tree / "src" / "run.sh").chmod(0o750)
    (tree / "src" / "link").symlink_to("main.py")
    out = await cli(fake, "cp", str(tree), "box:/tmp")  # into an existing directory
    assert out.code == 0
    assert out.stderr == f"kubectl-sandbox: skipped {tree / 'src' / 'link'} " + (
        "(not a regular file or directory)\n"
    )
    assert bytes(fake.guest.files["/tmp/proj/src/main.py"]) == b"print(1)\n"
    assert fake.guest.modes["/tmp/proj/src/run.sh"] == 0o750
    assert "/tmp/proj/src/deep" in fake.guest.dirs
    out = await cli(fake, "cp", "box:/tmp/proj", str(tmp_path / "copy"))  # a new directory
    assert (out.code, out.stderr) == (0, "")
    assert (tmp_path / "copy" / "README").read_bytes() == b"read me\n"
    assert (tmp_path / "copy" / "src" / "main.py").read_bytes() == b"print(1)\n"
    assert (tmp_path / "copy" / "src" / "deep").is_dir()
    assert (tmp_path / "copy" / "src" / "run.sh").stat().st_mode & 0o777 == 0o750
    out = await cli(fake, "cp", "box:/tmp/proj", str(tmp_path / "copy"))  # now into it
    assert (tmp_path / "copy" / "proj" / "src" / "main.py").is_file()


async def test_cp_of_a_directory_onto_a_file_is_refused(fake: Fake, tmp_path: Path) -> None:
    out = await cli(fake, "cp", str(tmp_path), "box:/etc/hostname")
    assert out.code == 1
    assert out.stderr == (
        f"kubectl-sandbox: cannot copy directory {tmp_path} onto box:/etc/hostname: "
        "not a directory\n"
    )
    out = await cli(fake, "cp", "box:/etc", "-")
    assert "cannot copy directory box:/etc onto -: not a directory" in out.stderr


async def test_cp_errors_name_the_file(fake: Fake, tmp_path: Path) -> None:
    out = await cli(fake, "cp", "box:/nope", str(tmp_path / "x"))
    assert out.code == 1
    assert out.stderr.startswith("kubectl-sandbox: cannot read box:/nope: ")
    assert "No such file" in out.stderr
    out = await cli(fake, "cp", str(tmp_path / "missing"), "box:/tmp/x")
    assert (out.code, out.stderr) == (
        1,
        f"kubectl-sandbox: {tmp_path / 'missing'}: no such file or directory\n",
    )
    out = await cli(fake, "cp", "a", "b")
    assert "one side in a sandbox" in out.stderr


async def test_ls_lists_a_directory(fake: Fake) -> None:
    fake.guest.files["/tmp/notes.txt"] = bytearray(b"12345")
    out = await cli(fake, "ls", "box", "/tmp")
    assert out.code == 0
    (line,) = out.stdout.decode().splitlines()
    assert line.startswith("-rw-r--r--")
    assert line.endswith(" 5 2023-11-14 22:13 notes.txt")
    root = (await cli(fake, "ls", "box")).stdout.decode()
    assert [line.split()[-1] for line in root.splitlines()] == ["etc/", "tmp/"]


# --- lifecycle -------------------------------------------------------------------------------


async def test_stop_waits_until_stopped_and_start_brings_it_back(fake: Fake) -> None:
    out = await cli(fake, "stop", "box")
    assert (out.code, out.stdout) == (0, b"sandbox box stopped\n")
    assert fake.sandboxes["box"]["status"] == "stopped"
    out = await cli(fake, "start", "box")
    assert (out.code, out.stdout) == (0, b"sandbox box running\n")


async def test_pause_and_resume(fake: Fake) -> None:
    assert (await cli(fake, "pause", "box")).stdout == b"sandbox box paused\n"
    out = await cli(fake, "exec", "box", "--", "echo")
    assert "is paused, not running; `kubectl sandbox resume box` first" in out.stderr
    assert (await cli(fake, "resume", "box")).stdout == b"sandbox box running\n"


async def test_suspend_and_resume(fake: Fake) -> None:
    assert (await cli(fake, "suspend", "box")).stdout == b"sandbox box suspended\n"
    out = await cli(fake, "exec", "box", "--", "echo")
    assert "is suspended, not running; `kubectl sandbox resume box` first" in out.stderr
    assert (await cli(fake, "resume", "box")).stdout == b"sandbox box running\n"


async def test_kill_and_drain_are_forwarded(fake: Fake) -> None:
    assert (await cli(fake, "kill", "box")).code == 0
    assert (await cli(fake, "drain", "box")).code == 0
    assert fake.sandboxes["box"]["verbs"] == ["kill", "drain"]


async def test_wait_returns_at_once_or_times_out_clearly(fake: Fake) -> None:
    assert (await cli(fake, "wait", "box", "--for", "running")).code == 0
    out = await cli(fake, "wait", "box", "--for", "stopped", "--timeout", "0.6")
    assert out.code == 1
    assert out.stderr == (
        "kubectl-sandbox: timed out after 0.6s waiting for sandbox 'box' to be stopped "
        "(it is running)\n"
    )
    assert (await cli(fake, "wait", "gone", "--for", "deleted")).code == 0


async def test_wait_fails_fast_when_the_sandbox_fails(fake: Fake) -> None:
    fake.add("bad", status="failed", last_failure_message="image not found")
    out = await cli(fake, "wait", "bad", "--timeout", "60")
    assert out.code == 1
    assert "failed while waiting for running: image not found" in out.stderr


async def test_metrics_once_and_watched(fake: Fake) -> None:
    out = await cli(fake, "metrics", "box")
    assert json.loads(out.stdout) == {"cpu_percent": 12.5, "memory_bytes": 4096}
    out = await cli(fake, "metrics", "box", "--watch", "--count", "2", "--interval", "0")
    lines = out.stdout.decode().splitlines()
    assert [json.loads(line)["memory_bytes"] for line in lines] == [4096, 4096]


# --- errors and credentials on the wire ------------------------------------------------------


async def test_every_request_carries_the_bearer_token(fake: Fake) -> None:
    await cli(fake, "exec", "box", "--", "echo")
    assert fake.requests
    assert {auth for _, _, auth in fake.requests} == {f"Bearer {TOKEN}"}
    assert all(path.startswith(f"/ns/{NAMESPACE}/") for _, path, _ in fake.requests)


async def test_gateway_errors_are_one_line_on_stderr(fake: Fake) -> None:
    out = await cli(fake, "exec", "nope", "--", "echo")
    assert (out.code, out.stdout) == (1, b"")
    assert out.stderr == "kubectl-sandbox: sandbox nope not found\n"


async def test_a_rejected_token_says_so(fake: Fake) -> None:
    out = await cli(fake, "ls", "box", token="expired")
    assert out.code == 1
    assert out.stderr == (
        "kubectl-sandbox: the gateway did not accept your credentials (401 Unauthorized): "
        "the token was not accepted\n"
    )


async def test_a_forbidden_namespace_is_named(fake: Fake) -> None:
    out = await cli(fake, "stop", "box", namespace="other")
    assert out.code == 1
    assert out.stderr == (
        "kubectl-sandbox: forbidden in namespace 'other' (403): "
        "cannot get sandboxes in namespace other\n"
    )


async def test_an_unreachable_gateway_says_how_to_pass_one(tmp_path: Path) -> None:
    streams = Streams(io.BytesIO(), io.BytesIO(), io.BytesIO())
    code = await run(["--gateway", "http://127.0.0.1:9", "--token", "t", "ls", "box"], streams)
    assert code == 1
    stderr = streams.stderr
    assert isinstance(stderr, io.BytesIO)
    message = stderr.getvalue().decode()
    assert message.startswith("kubectl-sandbox: cannot reach the gateway at http://127.0.0.1:9")
    assert "--gateway URL" in message


# --- logs ------------------------------------------------------------------------------------


async def test_logs_print_output_and_errors_to_their_streams(fake: Fake) -> None:
    fake.sandboxes["box"]["log"] = [
        ("stdout", "hello\n"),
        ("stderr", "oops\n"),
        ("system", "session 1: exited with code 0\n"),
        ("output", "on a tty " * 20000 + "\n"),
    ]
    out = await cli(fake, "logs", "box")
    assert out.code == 0
    assert out.stdout.startswith(b"hello\n[system] session 1: exited with code 0\non a tty ")
    assert out.stderr == "oops\n"
    assert fake.log_queries == [{"follow": "false"}]


async def test_logs_follow_tail_system_and_timestamps(fake: Fake) -> None:
    fake.sandboxes["box"]["log"] = [("stdout", "x\n")]
    out = await cli(fake, "logs", "box", "-f", "--tail", "10", "--system", "--timestamps")
    assert out.stdout == b"2026-12-04T06:00:00.000Z x\n"
    assert fake.log_queries == [
        {"follow": "true", "tail": "10", "sources": "stdout,stderr,output,system"}
    ]
    await cli(fake, "logs", "box", "--sources", "all")
    assert fake.log_queries[-1] == {"follow": "false", "sources": "all"}


async def test_logs_of_a_missing_sandbox_fail_clearly(fake: Fake) -> None:
    out = await cli(fake, "logs", "ghost")
    assert out.code == 1
    assert "ghost" in out.stderr
