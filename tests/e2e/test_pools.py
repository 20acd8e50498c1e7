"""Warm pools on the Helm-installed system (``conftest.system``) with real VMs (docs/pools.md): a
pool of two boots, a matching Sandbox applied with kubectl is served by one of its VMs with its
own environment, hostname and a fresh machine-id, the pool refills, ``kubectl scale`` resizes
it, a Sandbox that differs at boot boots cold, and deleting the pool removes its unclaimed
members only."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from microsandbox import BackendKind, Sandbox, backend_scope

from kubesandbox_devenv import services
from kubesandbox_protocol import AgentClient
from tests.e2e.conftest import System
from tests.support.waiting import eventually

pytestmark = [pytest.mark.controlplane, pytest.mark.vm, pytest.mark.slow, pytest.mark.registry]

TEMPLATE: dict[str, Any] = {"image": {"oci": "busybox:1.36"}, "memory": 128}
BOOT = 240.0


def apply(system: System, body: dict[str, Any]) -> None:
    system.plane.kubectl("apply", "-f", "-", input_text=json.dumps(body))


def get(system: System, kind: str, name: str) -> dict[str, Any] | None:
    got = system.plane.kubectl("get", kind, name, "-o", "json", check=False)
    return json.loads(got.stdout) if got.returncode == 0 else None


def members(system: System, pool: str) -> list[dict[str, Any]]:
    listed = system.plane.kubectl(
        "get", "sandboxes", "-l", f"kubesandbox.dev/pool={pool}", "-o", "json"
    )
    items: list[dict[str, Any]] = json.loads(listed.stdout)["items"]
    return items


def ready_replicas(system: System, pool: str, wanted: int) -> bool:
    body = get(system, "sandboxpool", pool) or {}
    status = body.get("status") or {}
    return bool(status.get("readyReplicas") == wanted and status.get("replicas") == wanted)


def running(system: System, name: str) -> dict[str, Any] | None:
    body = get(system, "sandbox", name)
    if body is None:
        return None
    conditions = (body.get("status") or {}).get("conditions") or []
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
    return body if ready and body["status"].get("phase") == "Running" else None


def sandbox(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubesandbox.dev/v1alpha1",
        "kind": "Sandbox",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {**TEMPLATE, **spec},
    }


async def run_in(socket: Path, script: str) -> str:
    async with await AgentClient.connect(socket) as client:
        result = await client.run("sh", ["-c", script])
    assert result.code == 0, result.stderr
    return result.stdout.decode()


def test_a_pool_serves_a_matching_sandbox_and_refills(system: System) -> None:
    pool = {
        "apiVersion": "kubesandbox.dev/v1alpha1",
        "kind": "SandboxPool",
        "metadata": {"name": "warm", "namespace": "default"},
        "spec": {"replicas": 2, "template": {"spec": TEMPLATE}},
    }
    apply(system, pool)
    eventually(lambda: ready_replicas(system, "warm", 2), BOOT, "pool warm: 2 ready members")
    listed = system.plane.kubectl("get", "sbxpool", "warm").stdout
    assert listed.split()[:5] == ["NAME", "DESIRED", "CURRENT", "READY", "IMAGE"], listed
    booted = {m["metadata"]["uid"] for m in members(system, "warm")}
    template_id = asyncio.run(
        run_in(system.installed.relay_socket(next(iter(booted))), "cat /etc/machine-id || true")
    )

    claimant = sandbox(
        "claimant",
        hostname="mine",
        env=[{"name": "GREETING", "value": "hello from a warm VM"}],
        scripts={"greet": "#!/bin/sh\necho greeted\n"},
        lifecycle={"idleTimeoutSeconds": 3600},
    )
    apply(system, claimant)
    served = eventually(lambda: running(system, "claimant"), 60, "claimant Running")
    assert served["status"]["pool"] == "warm"
    uid = served["metadata"]["uid"]
    socket = system.installed.relay_socket(uid)  # a link to the member's folder
    inside = asyncio.run(
        run_in(socket, 'echo "$GREETING"; hostname; greet; cat /etc/machine-id || true')
    ).splitlines()
    assert inside[:3] == ["hello from a warm VM", "mine", "greeted"]
    assert re.fullmatch("[0-9a-f]{32}", inside[3]), inside  # a fresh machine-id
    assert inside[3] not in template_id
    # the claimed member is gone (its VM serves the claimant), the pool boots a replacement
    eventually(
        lambda: len(booted & {m["metadata"]["uid"] for m in members(system, "warm")}) == 1,
        60,
        "the claimed member deleted",
    )
    eventually(lambda: ready_replicas(system, "warm", 2), BOOT, "pool warm refilled")

    # kubectl scale goes through the scale subresource
    system.plane.kubectl("scale", "sbxpool/warm", "--replicas=1")
    eventually(lambda: ready_replicas(system, "warm", 1), 60, "pool warm scaled to 1")
    eventually(lambda: len(members(system, "warm")) == 1, 60, "one member left")

    # a Sandbox that differs on a boot-time field boots cold
    apply(system, sandbox("cold", memory=160))
    cold = eventually(lambda: running(system, "cold"), BOOT, "cold Running")
    assert "pool" not in cold["status"]
    assert ready_replicas(system, "warm", 1)
    system.plane.kubectl("delete", "sandbox", "cold", "--timeout=120s")

    # deleting the pool removes its unclaimed member, never the Sandbox it served
    system.plane.kubectl("delete", "sbxpool", "warm", "--timeout=120s")
    assert members(system, "warm") == []
    assert running(system, "claimant") is not None
    assert asyncio.run(run_in(socket, 'echo "$GREETING"')) == "hello from a warm VM\n"
    vms = services.qemu_processes(str(system.installed.dirs.state))
    assert len(vms) == 1, vms


def pool(name: str, replicas: int, template: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kubesandbox.dev/v1alpha1",
        "kind": "SandboxPool",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"replicas": replicas, "template": {"spec": template}},
    }


async def test_an_unchanged_sdk_create_is_a_claim(system: System) -> None:
    """What the SDK's ``Sandbox.create(name, image=..., memory=...)`` becomes through the
    gateway matches a pool of that image and size: the create is answered by a pool VM."""
    apply(system, pool("sdk-warm", 1, TEMPLATE))
    await asyncio.to_thread(
        eventually, lambda: ready_replicas(system, "sdk-warm", 1), BOOT, "pool sdk-warm ready"
    )
    url = f"{system.gateway_url}/ns/default"
    with backend_scope(BackendKind.CLOUD, url=url, api_key=system.demo_token):
        sandbox = await Sandbox.create(
            "sdk-claimant", image="busybox:1.36", memory=128, env={"FROM": "the sdk"}
        )
        greeting = await sandbox.shell("echo $FROM; hostname")
        assert greeting.stdout_text == "the sdk\nsdk-claimant\n"
        body = get(system, "sandbox", "sdk-claimant")
        assert body is not None
        assert body["status"]["pool"] == "sdk-warm"
        listed = {handle.name for handle in (await Sandbox.list()).sandboxes}
        assert "sdk-claimant" in listed
        assert not {name for name in listed if name.startswith("sdk-warm-")}  # the pool's own
        await sandbox.stop()
        await Sandbox.remove("sdk-claimant")
    system.plane.kubectl("delete", "sbxpool", "sdk-warm", "--timeout=120s")
