"""The commands: each takes the gateway, its parsed arguments and the streams; returns the
process exit code (``exec`` and ``shell``: the command's own)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import posixpath
import signal
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

from kubesandbox_cli.connection import Gateway, JsonDict
from kubesandbox_cli.errors import CliError
from kubesandbox_cli.terminal import raw_mode, read_chunks, window_size
from kubesandbox_protocol.client import AgentClient, ExecSession, FsError
from kubesandbox_protocol.messages import MAX_FS_CHUNK, MessageType

POLL_INTERVAL = 0.5
DEFAULT_SHELL = "/bin/sh"
WAIT_STATES = ("running", "stopped", "paused", "suspended", "failed", "created", "deleted")
EXIT_NOT_FOUND = 127
EXIT_CANNOT_EXECUTE = 126


@dataclass
class Streams:
    stdin: BinaryIO
    stdout: BinaryIO
    stderr: BinaryIO
    interactive_process: bool = False
    """True in the real process: forward signals, follow the window size, use raw mode."""

    def out(self, text: str) -> None:
        self.stdout.write(text.encode())
        self.stdout.flush()

    def err(self, text: str) -> None:
        self.stderr.write(text.encode())
        self.stderr.flush()


Command = Callable[[Gateway, argparse.Namespace, Streams], Awaitable[int]]


# --- sandbox lookups -------------------------------------------------------------------------


def _id_path(sandbox: Mapping[str, Any], verb: str = "") -> str:
    path = f"/v1/sandboxes/{quote(str(sandbox['id']), safe='')}"
    return f"{path}/{verb}" if verb else path


def state_of(sandbox: Mapping[str, Any]) -> str:
    """The msb status, with ``paused`` told apart from ``stopped`` when the gateway says so
    (``status_reason: paused`` or a Sandbox ``phase``; the SDK's statuses have no paused)."""
    status = str(sandbox.get("status") or "unknown")
    if status == "stopped" and sandbox.get("phase") == "Suspended":
        return "suspended"
    if status == "stopped" and (
        sandbox.get("status_reason") == "paused" or sandbox.get("phase") == "Paused"
    ):
        return "paused"
    return status


def reached(sandbox: Mapping[str, Any], want: str) -> bool:
    state = state_of(sandbox)
    if state == want:
        return True
    # A gateway that only speaks the SDK's statuses shows a paused sandbox as stopped.
    undistinguished = sandbox.get("status_reason") is None and "phase" not in sandbox
    return want == "paused" and state == "stopped" and undistinguished


async def running_sandbox(gw: Gateway, name: str) -> JsonDict:
    sandbox = await gw.sandbox(name)
    state = state_of(sandbox)
    if state != "running":
        hint = "resume" if state in ("paused", "suspended") else "start"
        why = sandbox.get("last_failure_message")
        raise CliError(
            f"sandbox {name!r} is {state}, not running; `kubectl sandbox {hint} {name}` first"
            + (f" ({why})" if why else "")
        )
    return sandbox


@dataclass
class ExecDefaults:
    env: list[str] = field(default_factory=list)
    cwd: str | None = None
    user: str | None = None
    shell: str = DEFAULT_SHELL


def exec_defaults(spec: Mapping[str, Any] | None) -> ExecDefaults:
    """env, workdir, user and shell from a sandbox's ``spec``, as the SDK rebuilds them."""
    spec = spec or {}
    runtime = spec.get("runtime") or {}
    env: list[str] = []
    raw_env = spec.get("env") or []
    if isinstance(raw_env, Mapping):
        env = [f"{k}={v}" for k, v in raw_env.items()]
    else:
        for item in raw_env:
            if isinstance(item, Mapping):
                key = item.get("key") or item.get("name")
                if key:
                    env.append(f"{key}={item.get('value') or ''}")
            elif isinstance(item, str):
                env.append(item)
    return ExecDefaults(
        env=env,
        cwd=runtime.get("workdir") or spec.get("workdir") or None,
        user=runtime.get("user") or spec.get("user") or None,
        shell=runtime.get("shell") or spec.get("shell") or DEFAULT_SHELL,
    )


# --- exec and shell --------------------------------------------------------------------------


async def cmd_exec(gw: Gateway, args: argparse.Namespace, io: Streams) -> int:
    command: list[str] = list(args.argv)
    if not command:
        raise CliError("exec needs a command: kubectl sandbox exec NAME -- CMD [ARGS...]")
    return await run_command(gw, args.name, command, io, stdin=args.stdin, tty=args.tty)


async def cmd_shell(gw: Gateway, args: argparse.Namespace, io: Streams) -> int:
    sandbox = await running_sandbox(gw, args.name)
    shell = exec_defaults(sandbox.get("spec")).shell
    return await run_command(
        gw, args.name, [shell, "-c", args.script], io, stdin=args.stdin, sandbox=sandbox
    )


async def run_command(
    gw: Gateway,
    name: str,
    command: Sequence[str],
    io: Streams,
    *,
    stdin: bool,
    tty: bool = False,
    sandbox: JsonDict | None = None,
) -> int:
    sandbox = sandbox or await running_sandbox(gw, name)
    defaults = exec_defaults(sandbox.get("spec"))
    rows, cols = window_size(_fileno(io.stdout)) if tty else (24, 80)
    async with await gw.agent(sandbox) as agent:
        session = await agent.exec(
            command[0],
            list(command[1:]),
            env=defaults.env,
            cwd=defaults.cwd,
            user=defaults.user,
            tty=tty,
            rows=rows,
            cols=cols,
            keep_stdin_open=stdin,
        )
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        installed: list[signal.Signals] = []

        def spawn(coro: Awaitable[None]) -> None:
            task = asyncio.ensure_future(coro)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        if io.interactive_process:
            if tty:
                fd = _fileno(io.stdout)

                def resize() -> None:
                    spawn(session.resize(*window_size(fd)))

                loop.add_signal_handler(signal.SIGWINCH, resize)
                installed.append(signal.SIGWINCH)
            else:

                def forward(number: int) -> None:
                    spawn(session.signal(number))

                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    loop.add_signal_handler(sig, forward, int(sig))
                    installed.append(sig)
        pump = asyncio.create_task(_pump_stdin(session, io.stdin)) if stdin else None
        raw = raw_mode(_fileno(io.stdin)) if (tty and stdin and io.interactive_process) else None
        try:
            with raw if raw is not None else contextlib.nullcontext():
                return await _output(session, io, name, command[0])
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            if pump is not None:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pump
            for task in list(tasks):
                task.cancel()


def _fileno(stream: BinaryIO) -> int:
    try:
        return stream.fileno()
    except (OSError, ValueError, AttributeError):
        return -1


async def _pump_stdin(session: ExecSession, stdin: BinaryIO) -> None:
    async for data in read_chunks(stdin):
        if data:
            await session.write_stdin(data)
        else:
            await session.close_stdin()


async def _output(session: ExecSession, io: Streams, name: str, program: str) -> int:
    async for t, payload in session.events():
        if t == MessageType.EXEC_STDOUT:
            io.stdout.write(payload.get("data") or b"")
            io.stdout.flush()
        elif t == MessageType.EXEC_STDERR:
            io.stderr.write(payload.get("data") or b"")
            io.stderr.flush()
        elif t == MessageType.EXEC_STDIN_ERROR:
            io.err(f"kubectl-sandbox: stdin of {program}: {payload.get('message')}\n")
        elif t == MessageType.EXEC_EXITED:
            return int(payload["code"])
        elif t == MessageType.EXEC_FAILED:
            kind = str(payload.get("kind") or "")
            code = {"not_found": EXIT_NOT_FOUND, "permission_denied": EXIT_CANNOT_EXECUTE}.get(
                kind, EXIT_CANNOT_EXECUTE if kind == "not_executable" else 1
            )
            raise CliError(
                f"cannot run {program!r} in sandbox {name!r}: {payload.get('message') or kind}",
                exit_code=code,
            )
        elif t == MessageType.ERROR:
            raise CliError(f"sandbox {name!r} agent error: {payload.get('message')}")
    raise CliError(f"the connection to sandbox {name!r} ended before {program!r} exited")


# --- files -----------------------------------------------------------------------------------


def split_remote(spec: str) -> tuple[str, str] | None:
    """``NAME:/path`` → (NAME, /path); None for a local path (``./a:b`` stays local)."""
    if ":" not in spec:
        return None
    name, _, path = spec.partition(":")
    if not name or "/" in name or name.startswith("."):
        return None
    return name, path or "/"


async def cmd_cp(gw: Gateway, args: argparse.Namespace, io: Streams) -> int:
    src, dst = split_remote(args.src), split_remote(args.dst)
    if src is not None and dst is not None:
        raise CliError("cp copies between this machine and a sandbox, not between two sandboxes")
    if src is None and dst is None:
        raise CliError("cp needs one side in a sandbox: NAME:/path (e.g. cp file.txt box:/tmp/)")
    if dst is not None:
        return await _upload(gw, args.src, dst[0], dst[1], io)
    assert src is not None
    return await _download(gw, src[0], src[1], args.dst, io)


async def _remote_kind(agent: AgentClient, path: str) -> str:
    try:
        return str((await agent.stat(path)).get("kind") or "other")
    except FsError:
        return "missing"


async def _upload(gw: Gateway, local: str, name: str, remote: str, io: Streams) -> int:
    kind = "stdin" if local == "-" else _local_kind(local)
    if kind == "missing":
        raise CliError(f"{local}: no such file or directory")
    sandbox = await running_sandbox(gw, name)
    async with await gw.agent(sandbox) as agent:
        remote_kind = await _remote_kind(agent, remote)
        into = remote_kind == "dir" or (remote.endswith("/") and remote_kind == "missing")
        if kind == "stdin":
            if into:
                raise CliError(f"{name}:{remote} is a directory; name the file to write")
            await _upload_file(agent, name, None, remote, io)
        elif kind == "file":
            target = posixpath.join(remote, Path(local).name) if into else remote
            await _upload_file(agent, name, local, target, io)
        else:  # a directory: into an existing one, else it becomes the target (as kubectl cp)
            if remote_kind not in ("dir", "missing"):
                raise CliError(
                    f"cannot copy directory {local} onto {name}:{remote}: not a directory"
                )
            base = _base_name(local)
            target = posixpath.join(remote, base) if remote_kind == "dir" else remote
            await _upload_tree(agent, name, local, target.rstrip("/") or "/", io)
    return 0


async def _upload_file(
    agent: AgentClient, name: str, local: str | None, target: str, io: Streams
) -> None:
    """Streams ``local`` (None: stdin) to ``target``, keeping a file's permission bits."""
    mode = None if local is None else stat.S_IMODE(os.stat(local).st_mode)
    with contextlib.ExitStack() as stack:
        chunks = (
            _nonempty(read_chunks(io.stdin))
            if local is None
            else _file_chunks(stack.enter_context(_open_read(local)))
        )
        try:
            await agent.write_file(target, chunks, mode=mode)
        except FsError as error:
            raise CliError(f"cannot write {name}:{target}: {error}") from error


async def _upload_tree(agent: AgentClient, name: str, root: str, target: str, io: Streams) -> None:
    for relative, mode, files, skipped in _local_tree(root):
        directory = posixpath.normpath(posixpath.join(target, relative))
        try:
            await agent.mkdir(directory, mode=mode)
        except FsError as error:
            raise CliError(f"cannot create {name}:{directory}: {error}") from error
        for file in files:
            local = os.path.join(root, relative, file)
            await _upload_file(agent, name, local, posixpath.join(directory, file), io)
        for entry in skipped:
            io.err(
                f"kubectl-sandbox: skipped {os.path.join(root, relative, entry)} "
                "(not a regular file or directory)\n"
            )


def _local_tree(root: str) -> list[tuple[str, int, list[str], list[str]]]:
    """(directory relative to ``root`` in posix form, its mode, regular files, skipped)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        relative = os.path.relpath(dirpath, root).replace(os.sep, "/")
        files: list[str] = []
        skipped: list[str] = []
        for entry in sorted(filenames):
            full = os.path.join(dirpath, entry)
            (files if os.path.isfile(full) and not os.path.islink(full) else skipped).append(entry)
        skipped += sorted(d for d in dirnames if os.path.islink(os.path.join(dirpath, d)))
        dirnames.sort()
        out.append((relative, stat.S_IMODE(os.stat(dirpath).st_mode), files, skipped))
    return out


def _base_name(path: str) -> str:
    """The name a local directory keeps when copied into another (``.`` is its real name)."""
    return os.path.basename(os.path.abspath(path))


def _local_kind(path: str) -> str:
    return "dir" if os.path.isdir(path) else "file" if os.path.isfile(path) else "missing"


def _open_read(path: str) -> BinaryIO:
    return open(path, "rb")  # the caller's ExitStack closes it


async def _nonempty(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for data in chunks:
        if data:
            yield data


async def _file_chunks(stream: BinaryIO) -> AsyncIterator[bytes]:
    while data := await asyncio.to_thread(stream.read, MAX_FS_CHUNK):
        yield data


async def _download(gw: Gateway, name: str, remote: str, local: str, io: Streams) -> int:
    sandbox = await running_sandbox(gw, name)
    async with await gw.agent(sandbox) as agent:
        try:
            entry = await agent.stat(remote)
        except FsError as error:
            raise CliError(f"cannot read {name}:{remote}: {error}") from error
        local_kind = "stdout" if local == "-" else _local_kind(local)
        if entry.get("kind") == "dir":
            if local_kind in ("stdout", "file"):
                raise CliError(
                    f"cannot copy directory {name}:{remote} onto {local}: not a directory"
                )
            base = posixpath.basename(posixpath.normpath(remote))
            target = os.path.join(local, base) if local_kind == "dir" else local
            await _download_tree(agent, name, remote, target, io)
        elif local_kind == "stdout":
            await _read_into(agent, name, remote, io.stdout)
        else:
            target = local
            if local_kind == "dir":
                target = os.path.join(local, posixpath.basename(remote.rstrip("/")))
            await _download_file(agent, name, remote, target, entry)
    return 0


async def _download_tree(
    agent: AgentClient, name: str, remote: str, target: str, io: Streams
) -> None:
    try:
        entries = await agent.list_dir(remote)
    except FsError as error:
        raise CliError(f"cannot list {name}:{remote}: {error}") from error
    _make_dir(target)
    for entry in entries:
        path = str(entry.get("path") or "")
        base = posixpath.basename(path.rstrip("/"))
        if entry.get("kind") == "dir":
            await _download_tree(agent, name, path, os.path.join(target, base), io)
        elif entry.get("kind") == "file":
            await _download_file(agent, name, path, os.path.join(target, base), entry)
        else:
            io.err(f"kubectl-sandbox: skipped {name}:{path} (not a regular file or directory)\n")


def _make_dir(path: str) -> None:
    os.makedirs(path, exist_ok=True)


async def _download_file(
    agent: AgentClient, name: str, remote: str, target: str, entry: Mapping[str, Any]
) -> None:
    """Into a temporary file beside ``target``, renamed into place once complete."""
    directory = os.path.dirname(target) or "."
    fd, part = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            await _read_into(agent, name, remote, out)
        os.chmod(part, stat.S_IMODE(int(entry.get("mode") or 0o644)) or 0o644)
        os.replace(part, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part)


async def _read_into(agent: AgentClient, name: str, remote: str, out: BinaryIO) -> None:
    try:
        async for chunk in agent.read_file_chunks(remote):
            out.write(chunk)
    except FsError as error:
        raise CliError(f"cannot read {name}:{remote}: {error}") from error
    out.flush()


async def cmd_ls(gw: Gateway, args: argparse.Namespace, io: Streams) -> int:
    sandbox = await running_sandbox(gw, args.name)
    async with await gw.agent(sandbox) as agent:
        try:
            entry = await agent.stat(args.path)
            entries = await agent.list_dir(args.path) if entry.get("kind") == "dir" else [entry]
        except FsError as error:
            raise CliError(f"cannot list {args.name}:{args.path}: {error}") from error
    for e in sorted(entries, key=lambda e: str(e.get("path"))):
        io.out(format_entry(e) + "\n")
    return 0


_KIND_CHAR = {"dir": "d", "symlink": "l", "file": "-"}


def format_entry(entry: Mapping[str, Any]) -> str:
    mode = int(entry.get("mode") or 0)
    kind = str(entry.get("kind") or "other")
    perms = "".join(ch if mode & (1 << (8 - i)) else "-" for i, ch in enumerate("rwxrwxrwx"))
    when = entry.get("modified")
    if when is None:
        when = entry.get("mtime")
    stamp = (
        datetime.fromtimestamp(int(when), UTC).strftime("%Y-%m-%d %H:%M")
        if isinstance(when, int)
        else "-"
    )
    name = posixpath.basename(str(entry.get("path") or "").rstrip("/")) or "/"
    suffix = "/" if kind == "dir" else ""
    size = int(entry.get("size") or 0)
    return f"{_KIND_CHAR.get(kind, '?')}{perms} {size:>12} {stamp} {name}{suffix}"


# --- lifecycle -------------------------------------------------------------------------------


async def wait_for(gw: Gateway, name: str, want: str, within: float) -> JsonDict:
    """Polls until sandbox ``name`` is in state ``want``; fails fast on ``failed``."""
    deadline = time.monotonic() + within
    state = "unknown"
    while True:
        try:
            sandbox = await gw.sandbox(name)
        except CliError as error:
            if want == "deleted" and error.http_status == 404:
                return {}
            raise
        state = state_of(sandbox)
        if reached(sandbox, want):
            return sandbox
        if state == "failed" and want != "failed":
            reason = sandbox.get("last_failure_message") or sandbox.get("status_reason") or ""
            raise CliError(f"sandbox {name!r} failed while waiting for {want}: {reason}")
        if time.monotonic() >= deadline:
            raise CliError(
                f"timed out after {within:g}s waiting for sandbox {name!r} to be {want} "
                f"(it is {state})"
            )
        await asyncio.sleep(POLL_INTERVAL)


async def cmd_wait(gw: Gateway, args: argparse.Namespace, io: Streams) -> int:
    await wait_for(gw, args.name, args.want, args.timeout)
    io.out(f"sandbox {args.name} {args.want}\n")
    return 0


async def _verb(
    gw: Gateway, args: argparse.Namespace, io: Streams, verb: str, then: str | None
) -> int:
    sandbox = await gw.sandbox(args.name)
    params = {"wait_for": "running", "wait_timeout": "90"} if verb == "start" else None
    await gw.call("POST", _id_path(sandbox, verb), params=params)
    if then is not None and not args.no_wait:
        await wait_for(gw, args.name, then, args.timeout)
        io.out(f"sandbox {args.name} {then}\n")
    else:
        io.out(f"sandbox {args.name}: {verb} requested\n")
    return 0


async def cmd_start(gw: Gateway, args: argparse.Namespace, io: Streams) -> int:
    return await _verb(gw, args, io, "start", "running")


async def cmd_stop(gw: Gateway, args: argparse.Namespace, io: Streams) -> int:
    return await _verb(gw, args, io, "stop", "stopped")


async def cmd_pause(gw: Gateway, args: argparse.Namespace, io: Streams) -> int:
    return await _verb(gw, args, io, "pause", "paused")


async def cmd_suspend(gw: Gateway, args: argparse.Namespace, io: Streams) -> int:
    return await _verb(gw, args, io, "suspend", "suspended")


async def cmd_resume(gw: Gateway, args: argparse.Namespace, io: Streams) -> int:
    return await _verb(gw, args, io, "resume", "running")


async def cmd_kill(gw: Gateway, args: argparse.Namespace, io: Streams) -> int:
    return await _verb(gw, args, io, "kill", None)


async def cmd_drain(gw: Gateway, args: argparse.Namespace, io: Streams) -> int:
    return await _verb(gw, args, io, "drain", None)


async def cmd_metrics(gw: Gateway, args: argparse.Namespace, io: Streams) -> int:
    sandbox = await gw.sandbox(args.name)
    path = _id_path(sandbox, "metrics")
    if not args.watch:
        io.out(json.dumps(await gw.call("GET", path), indent=2, sort_keys=True) + "\n")
        return 0
    count = 0
    while args.count is None or count < args.count:
        if count:
            await asyncio.sleep(args.interval)
        sample = await gw.call("GET", path)
        io.out(json.dumps(sample, sort_keys=True) + "\n")
        count += 1
    return 0


LOG_SOURCES = ("stdout", "stderr", "output", "system", "all")


async def cmd_logs(gw: Gateway, args: argparse.Namespace, io: Streams) -> int:
    """The sandbox log: exec output as it was written (stderr to stderr), ``system`` lines
    with ``--system`` or ``--sources``; ``-f`` follows until the sandbox is gone or ^C."""
    sandbox = await gw.sandbox(args.name)
    sources = args.sources or ("stdout,stderr,output,system" if args.system else "")
    params = {"follow": "true" if args.follow else "false"}
    if sources:
        params["sources"] = sources
    if args.tail is not None:
        params["tail"] = str(args.tail)
    async for entry in gw.events(_id_path(sandbox, "logs"), params=params):
        text = str(entry.get("text") or "")
        if entry.get("source") == "system":
            text = f"[system] {text}"
        if args.timestamps:
            text = f"{entry.get('ts')} {text}"
        (io.err if entry.get("source") == "stderr" else io.out)(text)
    return 0


COMMANDS: dict[str, Command] = {
    "exec": cmd_exec,
    "shell": cmd_shell,
    "cp": cmd_cp,
    "ls": cmd_ls,
    "start": cmd_start,
    "stop": cmd_stop,
    "pause": cmd_pause,
    "resume": cmd_resume,
    "suspend": cmd_suspend,
    "kill": cmd_kill,
    "drain": cmd_drain,
    "wait": cmd_wait,
    "metrics": cmd_metrics,
    "logs": cmd_logs,
}
