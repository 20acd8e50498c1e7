"""``lifecycle.state: Suspended`` on the Helm-installed system (``conftest.system``: the
chart's operator, gateway and node agent Pods on a real kubelet node, a real TCG VM): the
status and Events say what happened, no QEMU runs while suspended, a new node agent Pod
meanwhile keeps it suspended, Running restores the same boot, and deleting the Sandbox removes
the state file. Then
``idleAction: Suspend``: an idle sandbox is suspended, and the unmodified microsandbox SDK's
next shell or fs call through the gateway wakes it and succeeds."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from microsandbox import BackendKind, Sandbox, backend_scope

from kubesandbox_devenv import services
from tests.e2e.conftest import System

pytestmark = [pytest.mark.controlplane, pytest.mark.vm, pytest.mark.slow, pytest.mark.registry]

NAME = "sleeper"
CLI = Path(sys.executable).parent / "kubectl-sandbox"
MANIFEST = {
    "apiVersion": "kubesandbox.dev/v1alpha1",
    "kind": "Sandbox",
    "metadata": {"name": NAME, "namespace": "default"},
    "spec": {"image": {"oci": "busybox:1.36"}, "memory": 128, "network": {"policy": "None"}},
}


def sandbox(system: System, name: str = NAME) -> dict[str, Any]:
    got = system.plane.kubectl("get", "sandbox", name, "-o", "json")
    body: dict[str, Any] = json.loads(got.stdout)
    return body


def wait_for(
    system: System, phase: str, timeout: float = 240.0, name: str = NAME
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = sandbox(system, name).get("status") or {}
        if status.get("phase") == phase:
            return status
        if time.monotonic() > deadline:
            pytest.fail(f"{name} never reached {phase}: {json.dumps(status)}")
        time.sleep(0.25)


def set_state(system: System, state: str) -> None:
    patch = json.dumps({"spec": {"lifecycle": {"state": state}}})
    system.plane.kubectl("patch", "sandbox", NAME, "--type=merge", "-p", patch)


def sh(system: System, uid: str, script: str) -> str:
    code, out = asyncio.run(services.run_in_sandbox(system.installed.relay_socket(uid), script))
    assert code == 0, out
    return out


def events(system: System, name: str = NAME) -> list[str]:
    got = system.plane.kubectl(
        "get", "events", "--field-selector", f"involvedObject.name={name}", "-o", "json"
    )
    return [item["reason"] for item in json.loads(got.stdout)["items"]]


def vms_of(system: System, uid: str) -> list[int]:
    """QEMU processes of the Sandbox ``uid`` (the package's system is shared with other tests)."""
    found = services.qemu_processes(str(system.installed.dirs.state))
    return [pid for pid, cmdline in found.items() if uid in cmdline]


def test_suspend_resume_and_delete_through_the_operator(system: System) -> None:
    system.plane.kubectl("apply", "-f", "-", input_text=json.dumps(MANIFEST))
    wait_for(system, "Running")
    uid = sandbox(system)["metadata"]["uid"]
    sleeper = sh(system, uid, "setsid sleep 100000 </dev/null >/dev/null 2>&1 & echo $!").strip()
    boot_id = sh(system, uid, "cat /proc/sys/kernel/random/boot_id")
    assert len(vms_of(system, uid)) == 1

    set_state(system, "Suspended")
    status = wait_for(system, "Suspended")
    state_file = system.installed.dirs.state / "sandboxes" / uid / "suspended.state"
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    assert status["suspension"]["stateBytes"] == state_file.stat().st_size
    assert status["suspension"]["reason"] == "SuspendedByUser"
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions["Suspended"] == ("True", "SuspendedByUser")
    assert conditions["Ready"][0] == "False"
    assert vms_of(system, uid) == []

    system.replace_node_agent_pod()
    assert wait_for(system, "Suspended")["suspension"]["stateBytes"] > 0
    assert vms_of(system, uid) == []

    set_state(system, "Running")
    status = wait_for(system, "Running")
    assert "resumedAt" in status["suspension"]
    assert not state_file.exists()
    assert sh(system, uid, "cat /proc/sys/kernel/random/boot_id") == boot_id
    assert sh(system, uid, f"cat /proc/{sleeper}/cmdline | tr '\\0' ' '").startswith("sleep")
    deadline = time.monotonic() + 30
    while not {"Suspended", "Resumed"} <= set(events(system)):
        assert time.monotonic() < deadline, events(system)
        time.sleep(0.5)

    # kubectl sandbox suspend: through the gateway, waits until suspended
    kubeconfig = services.write_kubeconfig(
        system.plane, system.files / "cli.kubeconfig", system.demo_token, "default"
    )
    done = subprocess.run(
        [str(CLI), "--kubeconfig", str(kubeconfig), "suspend", NAME],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        stdin=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if k != "KUBESANDBOX_GATEWAY"},
    )
    assert (done.returncode, done.stdout) == (0, f"sandbox {NAME} suspended\n"), done.stderr
    assert sandbox(system)["status"]["phase"] == "Suspended"
    system.plane.kubectl("delete", "sandbox", NAME, "--wait", "--timeout=120s")
    assert not state_file.parent.exists()


DOZER = "dozer"


async def test_an_idle_sandbox_sleeps_and_the_sdk_wakes_it_by_using_it(
    system: System,
) -> None:
    manifest = json.loads(json.dumps(MANIFEST))
    manifest["metadata"]["name"] = DOZER
    manifest["spec"]["lifecycle"] = {"idleTimeoutSeconds": 2, "idleAction": "Suspend"}
    system.plane.kubectl("apply", "-f", "-", input_text=json.dumps(manifest))
    wait_for(system, "Running", name=DOZER)
    uid = sandbox(system, DOZER)["metadata"]["uid"]
    url = f"{system.gateway_url}/ns/default"
    with backend_scope(BackendKind.CLOUD, url=url, api_key=system.demo_token):
        handle = await Sandbox.get(DOZER)
        box = await handle.connect()
        started = await box.shell("setsid sleep 100000 </dev/null >/dev/null 2>&1 & echo $!")
        sleeper = started.stdout_text.strip()
        await box.fs.write("/tmp/note.txt", b"written before the nap\n")

        status = await asyncio.to_thread(wait_for, system, "Suspended", 60.0, DOZER)
        assert status["suspension"]["reason"] == "IdleTimeout"
        assert sandbox(system, DOZER)["spec"]["lifecycle"]["state"] == "Running"
        assert vms_of(system, uid) == []

        # the next shell wakes it; the caller sees only the answer
        alive = await box.shell(f"cat /proc/{sleeper}/cmdline | tr '\\0' ' '")
        assert alive.stdout_text.startswith("sleep 100000")
        status = sandbox(system, DOZER)["status"]
        assert status["phase"] == "Running"
        assert "resumedAt" in status["suspension"]
        woken = next(c for c in status["conditions"] if c["type"] == "Suspended")
        assert (woken["status"], woken["reason"]) == ("False", "WokenByUse")

        # asleep again; a filesystem call wakes it too
        await asyncio.to_thread(wait_for, system, "Suspended", 60.0, DOZER)
        assert await box.fs.read_text("/tmp/note.txt") == "written before the nap\n"
        assert sandbox(system, DOZER)["status"]["phase"] == "Running"
    assert {"Suspended", "Resumed"} <= set(events(system, DOZER))
    system.plane.kubectl("delete", "sandbox", DOZER, "--wait", "--timeout=120s")
