"""``kubectl-sandbox`` against the real system: the gateway, the node agent, one real VM.

The console script runs as a subprocess with a kubeconfig holding the demo ServiceAccount's
token (``default/demo``, ``edit`` in ``default``) and finds the gateway the way a user's does:
through the Service ``kubesandbox-system/kubesandbox-gateway``. One sandbox serves the whole
module (VMs are expensive); the tests run in file order and leave it running.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import System

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.registry]

NAME = "cli-e2e"
NAMESPACE = "default"
BIN = Path(sys.executable).parent
CLI = BIN / "kubectl-sandbox"


@dataclass
class Cli:
    system: System
    kubeconfig: Path

    def env(self) -> dict[str, str]:
        env = {
            k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBESANDBOX_GATEWAY")
        }
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        return env

    def __call__(
        self,
        *args: str,
        input: bytes | None = None,
        kubeconfig: Path | None = None,
        timeout: float = 240,
    ) -> subprocess.CompletedProcess[bytes]:
        argv = [str(CLI), "--kubeconfig", str(kubeconfig or self.kubeconfig), *args]
        return subprocess.run(
            argv,
            input=input,
            capture_output=True,
            env=self.env(),
            timeout=timeout,
            check=False,
            stdin=None if input is not None else subprocess.DEVNULL,
        )

    def ok(self, *args: str, input: bytes | None = None) -> bytes:
        done = self(*args, input=input)
        assert done.returncode == 0, (args, done.returncode, done.stderr.decode())
        return done.stdout


@pytest.fixture(scope="module")
def cli(system: System) -> Iterator[Cli]:
    manifest = {
        "apiVersion": "kubesandbox.dev/v1alpha1",
        "kind": "Sandbox",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {"image": {"oci": "busybox:1.36"}},
    }
    system.plane.kubectl("apply", "-f", "-", input_text=json.dumps(manifest))
    try:
        system.wait_for_phase(NAME, {"Running"}, ready=True)
        yield Cli(system, system.kubeconfig_for(system.demo_token, NAMESPACE))
    finally:
        system.plane.kubectl(
            "delete", "sandbox", NAME, "-n", NAMESPACE, "--wait", "--timeout=120s", check=False
        )


def test_exec_propagates_output_and_exit_code(cli: Cli) -> None:
    assert cli.ok("exec", NAME, "--", "echo", "hello", "from", "the", "vm") == (
        b"hello from the vm\n"
    )
    done = cli("exec", NAME, "--", "sh", "-c", "echo oops >&2; exit 7")
    assert (done.returncode, done.stdout, done.stderr) == (7, b"", b"oops\n")
    missing = cli("exec", NAME, "--", "no-such-program")
    assert missing.returncode == 127
    assert b"no-such-program" in missing.stderr


def test_exec_streams_stdin(cli: Cli) -> None:
    data = os.urandom(1024 * 1024 + 7)
    digest = cli.ok("exec", NAME, "-i", "--", "sha256sum", input=data)
    assert digest.split()[0].decode() == hashlib.sha256(data).hexdigest()
    assert cli.ok("exec", NAME, "-i", "--", "wc", "-c", input=b"abc").strip() == b"3"


def test_shell_runs_a_script(cli: Cli) -> None:
    assert cli.ok("shell", NAME, "x=6; echo $((x * 7)) | tr 4 f") == b"f2\n"


def test_cp_both_ways_keeps_every_byte(cli: Cli, tmp_path: Path) -> None:
    data = os.urandom(10 * 1024 * 1024 + 123)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    cli.ok("cp", str(src), f"{NAME}:/root/")
    remote = cli.ok("exec", NAME, "--", "sha256sum", "/root/big.bin")
    assert remote.split()[0].decode() == hashlib.sha256(data).hexdigest()
    back = tmp_path / "back.bin"
    cli.ok("cp", f"{NAME}:/root/big.bin", str(back))
    assert hashlib.sha256(back.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    listing = cli.ok("ls", NAME, "/root").decode()
    line = next(line for line in listing.splitlines() if line.endswith(" big.bin"))
    assert line.startswith("-")
    assert f" {len(data)} " in line


def test_cp_copies_a_tree_both_ways(cli: Cli, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "top.txt").write_text("top\n")
    (tree / "a" / "b" / "leaf.sh").write_text("echo leaf\n")
    (tree / "a" / "b" / "leaf.sh").chmod(0o755)
    cli.ok("cp", str(tree), f"{NAME}:/root/")
    assert cli.ok("exec", NAME, "--", "sh", "/root/tree/a/b/leaf.sh") == b"leaf\n"
    assert cli.ok("exec", NAME, "--", "test", "-x", "/root/tree/a/b/leaf.sh") == b""
    cli.ok("cp", f"{NAME}:/root/tree", str(tmp_path / "back"))
    assert (tmp_path / "back" / "top.txt").read_text() == "top\n"
    assert (tmp_path / "back" / "a" / "b" / "leaf.sh").stat().st_mode & 0o777 == 0o755


def test_cp_of_a_missing_file_names_it(cli: Cli, tmp_path: Path) -> None:
    done = cli("cp", f"{NAME}:/root/nope", str(tmp_path / "x"))
    assert done.returncode == 1
    assert done.stderr.decode().startswith(f"kubectl-sandbox: cannot read {NAME}:/root/nope")


def test_metrics_once_and_watched(cli: Cli) -> None:
    sample = json.loads(cli.ok("metrics", NAME))
    assert isinstance(sample, dict)
    assert sample
    watched = cli.ok("metrics", NAME, "--watch", "--count", "2", "--interval", "1")
    assert len([json.loads(line) for line in watched.decode().splitlines()]) == 2


def test_stop_and_start_keep_files(cli: Cli) -> None:
    cli.ok("shell", NAME, "echo kept > /root/marker && sync")
    assert cli.ok("stop", NAME) == f"sandbox {NAME} stopped\n".encode()
    refused = cli("exec", NAME, "--", "true")
    assert refused.returncode == 1
    assert f"`kubectl sandbox start {NAME}` first".encode() in refused.stderr
    assert cli.ok("wait", NAME, "--for", "stopped", "--timeout", "30").strip()
    assert cli.ok("start", NAME) == f"sandbox {NAME} running\n".encode()
    assert cli.ok("exec", NAME, "--", "cat", "/root/marker") == b"kept\n"


def test_pause_and_resume_keep_memory(cli: Cli) -> None:
    cli.ok("shell", NAME, "echo in-memory > /tmp/state")
    assert cli.ok("pause", NAME) == f"sandbox {NAME} paused\n".encode()
    assert cli.ok("resume", NAME) == f"sandbox {NAME} running\n".encode()
    assert cli.ok("wait", NAME, "--for", "running", "--timeout", "30") == (
        f"sandbox {NAME} running\n".encode()
    )
    assert cli.ok("exec", NAME, "--", "cat", "/tmp/state") == b"in-memory\n"


def test_a_token_without_rights_is_refused(cli: Cli) -> None:
    token = cli.system.token_for(NAMESPACE, "cli-nobody")
    kubeconfig = cli.system.kubeconfig_for(token, NAMESPACE)
    done = cli("exec", NAME, "--", "true", kubeconfig=kubeconfig)
    assert done.returncode == 1
    stderr = done.stderr.decode()
    assert stderr.startswith(f"kubectl-sandbox: forbidden in namespace '{NAMESPACE}' (403)")
    assert stderr.count("\n") == 1


def test_an_explicit_gateway_flag_works(cli: Cli) -> None:
    out = cli.ok("--gateway", cli.system.gateway_url, "exec", NAME, "--", "echo", "flagged")
    assert out == b"flagged\n"


def test_through_kubectls_plugin_mechanism(cli: Cli) -> None:
    kubectl = str(cli.system.plane.binaries.kubectl)
    done = subprocess.run(
        [kubectl, "sandbox", "--kubeconfig", str(cli.kubeconfig), "exec", NAME, "--", "uname"],
        capture_output=True,
        env=cli.env(),
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, b"Linux\n", b"")
    done = subprocess.run(
        [kubectl, "plugin", "list"], capture_output=True, env=cli.env(), timeout=60, check=False
    )
    assert str(CLI).encode() in done.stdout


def _read_until(fd: int, wanted: bytes, within: float = 60) -> bytes:
    """Bytes from a pty master until ``wanted`` shows up (or the deadline passes)."""
    out = b""
    deadline = time.monotonic() + within
    while wanted not in out and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            out += chunk
    return out


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def test_exec_it_gets_a_terminal_that_follows_window_changes(cli: Cli) -> None:
    master, slave = pty.openpty()
    _set_size(slave, 33, 101)
    script = "stty size; read line; stty size; exit 3"
    argv = [str(CLI), "--kubeconfig", str(cli.kubeconfig), "exec", "-it", NAME]
    process = subprocess.Popen(
        [*argv, "--", "sh", "-c", script],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=cli.env(),
    )
    os.close(slave)
    try:
        assert b"33 101" in _read_until(master, b"33 101")
        _set_size(master, 40, 120)
        process.send_signal(signal.SIGWINCH)
        time.sleep(1.0)  # the resize goes out before the line that ends the read
        os.write(master, b"go\r")
        assert b"40 120" in _read_until(master, b"40 120")
        assert process.wait(timeout=60) == 3
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)


def test_ctrl_c_reaches_the_command(cli: Cli) -> None:
    argv = [str(CLI), "--kubeconfig", str(cli.kubeconfig), "exec", NAME, "--"]
    process = subprocess.Popen(
        [*argv, "sh", "-c", "echo started; exec sleep 300"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli.env(),
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == b"started\n"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 128 + signal.SIGINT
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
