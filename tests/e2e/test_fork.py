"""``spec.image.sandbox`` on the Helm-installed system (``conftest.system``: the chart's operator
and node agent Pods on the real kubelet node, real TCG VMs): a fork of a missing source fails
with a reason naming the field; a fork of a running source is placed on its node, carries its
background process and files, has its own hostname and machine-id, diverges from it, the source
keeps its QEMU process, and deleting the source leaves the fork running."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kubesandbox_devenv import services
from tests.e2e.conftest import System

pytestmark = [pytest.mark.controlplane, pytest.mark.vm, pytest.mark.slow, pytest.mark.registry]

Kubectl = Callable[..., Any]


def manifest(name: str, image: dict[str, Any]) -> str:
    return json.dumps(
        {
            "apiVersion": "kubesandbox.dev/v1alpha1",
            "kind": "Sandbox",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"image": image, "memory": 128},
        }
    )


def get(kubectl: Kubectl, name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(kubectl("get", "sandbox", name, "-o", "json").stdout)
    return body


def wait_for(kubectl: Kubectl, name: str, phase: str, timeout: float = 240.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = get(kubectl, name)
        if (body.get("status") or {}).get("phase") == phase:
            return body
        if time.monotonic() > deadline:
            pytest.fail(f"{name} never reached {phase}: {json.dumps(body.get('status'))}")
        time.sleep(0.25)


def sh(relay: Callable[[str], Path], uid: str, script: str) -> str:
    code, out = asyncio.run(services.run_in_sandbox(relay(uid), script))
    assert code == 0, out
    return out


def test_fork_through_the_operator(system: System) -> None:
    kubectl, relay = system.plane.kubectl, system.installed.relay_socket
    marker = str(system.installed.dirs.state)
    others = set(services.qemu_processes(marker))  # the package's system is shared

    def ours() -> set[int]:
        return set(services.qemu_processes(marker)) - others

    # a fork of a sandbox that does not exist: refused, naming the field
    kubectl("apply", "-f", "-", input_text=manifest("orphan", {"sandbox": {"name": "nope"}}))
    status = wait_for(kubectl, "orphan", "Failed")["status"]
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert ready["reason"] == "ForkSourceNotReady"
    assert ready["message"] == (
        "spec.image.sandbox.name: Sandbox 'nope' does not exist in namespace 'default'"
    )
    kubectl("delete", "sandbox", "orphan", "--wait=true")

    kubectl("apply", "-f", "-", input_text=manifest("origin", {"oci": "busybox:1.36"}))
    source = wait_for(kubectl, "origin", "Running")
    source_uid = source["metadata"]["uid"]
    sleeper = sh(relay, source_uid, "setsid sleep 100000 </dev/null >/dev/null 2>&1 & echo $!")
    sh(relay, source_uid, "echo in-layer > /layer-marker; echo in-tmp > /tmp/marker; sync")
    (source_qemu,) = ours()

    kubectl("apply", "-f", "-", input_text=manifest("copy", {"sandbox": {"name": "origin"}}))
    fork = wait_for(kubectl, "copy", "Running")
    fork_uid = fork["metadata"]["uid"]
    assert fork["status"]["nodeName"] == source["status"]["nodeName"]
    conditions = {c["type"]: c for c in fork["status"]["conditions"]}
    assert conditions["AgentConnected"]["reason"] == "Forked"
    assert conditions["AgentConnected"]["message"].startswith("forked from Sandbox origin")
    pod = json.loads(kubectl("get", "pod", "-l", f"kubesandbox.dev/sandbox-uid={fork_uid}",
                             "-o", "json").stdout)["items"][0]  # fmt: skip
    terms = pod["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert terms[0]["matchFields"][0]["values"] == [source["status"]["nodeName"]]

    # the source ran on in the same QEMU process; the fork is a second one
    qemus = ours()
    assert source_qemu in qemus
    assert len(qemus) == 2
    assert sh(relay, source_uid, "hostname") == "origin\n"

    # the fork carries the live state, under its own identity
    assert sh(relay, fork_uid, f"cat /proc/{sleeper.strip()}/cmdline").startswith("sleep")
    assert sh(relay, fork_uid, "cat /layer-marker /tmp/marker") == "in-layer\nin-tmp\n"
    assert sh(relay, fork_uid, "hostname") == "copy\n"
    assert sh(relay, fork_uid, "cat /etc/machine-id") == fork_uid.replace("-", "") + "\n"

    # they diverge
    sh(relay, fork_uid, "echo fork > /layer-marker; sync")
    assert sh(relay, source_uid, "cat /layer-marker") == "in-layer\n"

    # the fork's Event says what it was made from
    deadline = time.monotonic() + 30
    while True:
        listed = kubectl("get", "events", "--field-selector", "involvedObject.name=copy",
                         "-o", "json").stdout  # fmt: skip
        reasons = {e["reason"]: e["message"] for e in json.loads(listed)["items"]}
        if "Forked" in reasons or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert reasons["Forked"].startswith("forked from Sandbox origin"), reasons

    # deleting the source leaves the fork running
    kubectl("delete", "sandbox", "origin", "--wait=true")
    assert source_qemu not in ours()
    assert sh(relay, fork_uid, "cat /layer-marker; echo ok > /after; cat /after") == "fork\nok\n"
    assert get(kubectl, "copy")["status"]["phase"] == "Running"
    kubectl("delete", "sandbox", "copy", "--wait=true")  # the package's system is shared
    assert ours() == set()
