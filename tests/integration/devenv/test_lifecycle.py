from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from kubesandbox_devenv.binaries import ensure_binaries
from kubesandbox_devenv.components import Ports
from kubesandbox_devenv.controlplane import ControlPlane

pytestmark = [pytest.mark.controlplane, pytest.mark.slow]

GONE_TIMEOUT = 15.0


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def processes_under(state_dir: Path) -> list[int]:
    """Pids whose command line mentions ``state_dir`` (what a leak would look like)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if str(state_dir).encode() in cmdline and running(int(entry.name)):
            found.append(int(entry.name))
    return found


def wait_all_gone(pids: list[int]) -> list[int]:
    deadline = time.monotonic() + GONE_TIMEOUT
    while (alive := [pid for pid in pids if running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def test_stop_leaves_no_process(tmp_path: Path) -> None:
    plane = ControlPlane(tmp_path, binaries=ensure_binaries())
    with plane:
        pids = [pid for pid in plane.status().values() if pid is not None]
        assert len(pids) == 4
    assert [pid for pid in pids if running(pid)] == []
    assert processes_under(tmp_path) == []
    assert plane.status() == dict.fromkeys(plane.status())


def test_start_again_restarts_only_dead_components(tmp_path: Path) -> None:
    with ControlPlane(tmp_path, binaries=ensure_binaries()) as plane:
        before = plane.status()
        scheduler = before["kube-scheduler"]
        assert scheduler is not None
        os.kill(scheduler, signal.SIGKILL)
        assert wait_all_gone([scheduler]) == []

        report = plane.start()

        after = plane.status()
        assert list(report.components) == ["kube-scheduler"]
        assert after["kube-scheduler"] not in (None, scheduler)
        assert {k: v for k, v in after.items() if k != "kube-scheduler"} == {
            k: v for k, v in before.items() if k != "kube-scheduler"
        }


OWNER_SCRIPT = """
import pathlib, sys, time
from kubesandbox_devenv.controlplane import ControlPlane
plane = ControlPlane(pathlib.Path(sys.argv[1]))
plane.start()
print(" ".join(str(pid) for pid in plane.status().values()), flush=True)
time.sleep(600)
"""


def test_control_plane_dies_with_a_killed_owner(tmp_path: Path) -> None:
    ensure_binaries()
    owner = subprocess.Popen(
        # -P: no current directory on sys.path (the repository's `operator/` folder would
        # shadow the standard library's `operator`).
        [sys.executable, "-P", "-c", OWNER_SCRIPT, str(tmp_path)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        pids = [int(pid) for pid in owner.stdout.readline().split()]
        assert len(pids) == 4
        assert all(running(pid) for pid in pids)
    finally:
        owner.kill()
        owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()

    assert wait_all_gone(pids) == []
    assert processes_under(tmp_path) == []


def test_fresh_start_moves_to_new_ports_when_one_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original_pick = Ports.pick
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        picks: list[Ports] = []

        def pick_taken_first() -> Ports:
            ports = original_pick()
            picks.append(replace(ports, apiserver=taken) if not picks else ports)
            return picks[-1]

        monkeypatch.setattr(Ports, "pick", staticmethod(pick_taken_first))

        with ControlPlane(tmp_path, binaries=ensure_binaries()) as plane:
            assert plane.ports.apiserver != taken
            assert len(picks) == 2
