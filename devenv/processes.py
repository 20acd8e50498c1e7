"""One control-plane child process: started in its own process group, stopped within a bound.

Each process is described by a pid file holding ``<pid> <start time>`` (the start time in clock
ticks from ``/proc/<pid>/stat``), so a later command (``kubesandbox-devenv down``) can find and
stop what an earlier one started without ever signalling a recycled pid.

Two ways to run:

* *tied* (the pytest fixtures): the child gets ``PR_SET_PDEATHSIG=SIGKILL``, so when the
  process that started it dies, even by SIGKILL, the kernel kills the child too. The signal
  fires when the *thread* that forked the child exits, so start tied processes from a thread
  that lives as long as they should (pytest's main thread does).
* *detached* (``make up``): the child gets a session of its own and outlives the command.

Either way the child leads its own process group, and ``stop`` sends SIGTERM to the group,
waits up to a bound, then SIGKILLs the group.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1
DEFAULT_STOP_TIMEOUT = 10.0


def _read_start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat``, or None when the pid is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    state, start_time = fields[0], int(fields[19])
    if state in ("Z", "X"):
        return None
    return start_time


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), or None when it is gone or a zombie: with
    the pid, what identifies a process across pid reuse."""
    return _read_start_time(pid)


def _die_with_parent_preexec() -> Callable[[], None]:
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died between fork and prctl: then nobody would ever kill us.
        if os.getppid() != parent:
            os._exit(1)

    return preexec


class ManagedProcess:
    """A named child process with its log file and pid file."""

    def __init__(self, name: str, log_dir: Path, run_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.pid_path = run_dir / f"{name}.pid"
        self._popen: subprocess.Popen[bytes] | None = None

    def start(
        self,
        argv: Sequence[str],
        *,
        tied: bool,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> int:
        """Start ``argv``; its stdout and stderr append to the log file. Returns the pid."""
        self._reap_previous()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.pid_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
            log.write(f"=== {stamp} starting: {' '.join(argv)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                close_fds=True,
                start_new_session=not tied,
                process_group=0 if tied else None,
                preexec_fn=_die_with_parent_preexec() if tied else None,
            )
        pid = self._popen.pid
        start_time = _read_start_time(pid)
        self.pid_path.write_text(f"{pid} {start_time if start_time is not None else 0}\n")
        return pid

    def _reap_previous(self) -> None:
        """Collect the exit status of the process we started before, which is dead.

        A killed multi-threaded (Go) process shows as a zombie in ``/proc`` a moment before
        ``waitpid`` can reap it, so "dead" may still need a short wait here.
        """
        if self._popen is not None:
            self._popen.wait(timeout=DEFAULT_STOP_TIMEOUT)
            self._popen = None

    def pid(self) -> int | None:
        """The pid of the running process this pid file names, or None."""
        try:
            pid_text, start_text = self.pid_path.read_text().split()
            pid, start_time = int(pid_text), int(start_text)
        except (FileNotFoundError, ValueError):
            return None
        if self._popen is not None and self._popen.pid == pid and self._popen.poll() is not None:
            return None
        current = _read_start_time(pid)
        if current is None or (start_time and current != start_time):
            return None
        return pid

    def is_alive(self) -> bool:
        return self.pid() is not None

    def exit_code(self) -> int | None:
        """The exit status when we started the process and it has exited, else None."""
        return self._popen.poll() if self._popen is not None else None

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """SIGTERM the process group, SIGKILL it after ``timeout`` seconds; forget the pid."""
        pid = self.pid()
        if pid is None and self._popen is not None and self._popen.poll() is None:
            pid = self._popen.pid  # our own child, even if its pid file is gone
        if pid is not None:
            self._signal_group(pid, signal.SIGTERM)
            if not self._wait_gone(pid, timeout):
                self._signal_group(pid, signal.SIGKILL)
                self._wait_gone(pid, timeout)
        if self._popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(timeout=1)
            self._popen = None
        self.pid_path.unlink(missing_ok=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - 64 * 1024))
                text = log.read().decode(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    @staticmethod
    def _signal_group(pid: int, signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signum)

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if self._popen is not None and self._popen.pid == pid:
            try:
                self._popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        while time.monotonic() < deadline:
            if _read_start_time(pid) is None:
                return True
            time.sleep(0.05)
        return False
