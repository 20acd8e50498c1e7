"""microsandbox's ``examples/python/snapshot-fork`` with the unmodified SDK (PyPI
``microsandbox==0.7.11``, cloud backend) through the gateway, on real VMs of the host-process
system: a sandbox writes a marker and stops, a snapshot of it is taken (a SandboxSnapshot, the
copy on its node), a new sandbox restored from it reads the marker, and everything is removed,
the node's copy included.

Two deviations from the example, both the SDK's on its cloud backend: ``replace=True`` and
``stop_and_wait()`` are refused before anything is sent (checked here), so the sandboxes have
fresh names and ``stop()`` is used (the gateway waits for the VM to be down before it takes
the snapshot); ``Sandbox.create(..., snapshot=)`` of the example is ``Sandbox.restore`` in
0.7.11. The image is the registry's busybox (the example's alpine is not in it).

Written against a small interface (``plane.kubectl``, ``gateway_url``, ``demo_token``, the
node agent's state directory) so that it can move to the Helm install's suite.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from microsandbox import BackendKind, Sandbox, Snapshot, backend_scope

from kubesandbox_devenv import services
from tests.integration.gateway.test_sdk_rules import System, wait_for_demo_rights

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.registry, pytest.mark.controlplane]

BASE, SNAP, FORK = "snapshot-baseline", "snapshot-baseline-state", "snapshot-fork"
MARKER = "shipped via snapshot"


@pytest.fixture(scope="module")
def system() -> Iterator[services.RunningSystem]:
    with services.running_system("kss") as running:
        wait_for_demo_rights(running)
        yield running


def get(system: System, kind: str, name: str) -> Any:
    out = system.plane.kubectl("get", kind, name, "-n", "default", "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def wait_gone(system: System, kind: str, name: str, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while get(system, kind, name) is not None:
        assert time.monotonic() < deadline, f"{kind} {name} still there"
        time.sleep(0.5)


async def test_the_snapshot_fork_example_runs_on_real_vms(
    system: services.RunningSystem,
) -> None:
    url = f"{system.gateway_url}/ns/default"
    snapshots_dir: Path = system.node_agent.state / "snapshots"
    with backend_scope(BackendKind.CLOUD, url=url, api_key=system.demo_token):
        began = time.monotonic()
        baseline = await Sandbox.create(BASE, image="busybox:1.36")
        await baseline.shell(f"mkdir -p /root && echo '{MARKER}' > /root/marker.txt && sync")
        cold = time.monotonic() - began
        with pytest.raises(Exception, match="local backend"):
            await baseline.stop_and_wait()  # type: ignore[attr-defined]  # the SDK refuses it
        await baseline.stop()

        started = time.monotonic()
        handle = await Sandbox.get(BASE)
        snap = await handle.snapshot(SNAP)
        took = time.monotonic() - started
        assert snap.digest.startswith("sha256:")
        assert snap.image_ref == "busybox:1.36"

        stored = get(system, "sandboxsnapshot", SNAP)
        status = stored["status"]
        assert status["phase"] == "Ready"
        assert status["scope"] == "Disk"
        assert status["sourceUid"] == get(system, "sandbox", BASE)["metadata"]["uid"]
        copy = snapshots_dir / stored["metadata"]["uid"] / "upper.ext4"
        assert copy.is_file()
        assert status["apparentBytes"] == copy.stat().st_size
        assert status["sizeBytes"] == copy.stat().st_blocks * 512
        assert status["sizeBytes"] < status["apparentBytes"]  # a sparse (or reflinked) copy
        listed = [s.name for s in await Snapshot.list()]
        assert listed == [SNAP]
        assert (await Snapshot.get(SNAP)).digest == snap.digest

        before = hashlib.sha256(copy.read_bytes()).hexdigest()
        began = time.monotonic()
        fork = await Sandbox.restore(SNAP, name=FORK)
        output = await fork.shell("cat /root/marker.txt")
        restore = time.monotonic() - began
        assert output.stdout_text.strip() == MARKER
        restored = get(system, "sandbox", FORK)
        assert restored["spec"]["image"] == {"snapshot": {"name": SNAP}, "pullPolicy": "IfMissing"}
        assert restored["status"]["image"]["digest"] == status["image"]["digest"]
        assert restored["status"]["nodeName"] == status["nodeName"]
        await fork.shell("echo changed > /root/marker.txt && sync")
        await fork.stop()
        assert hashlib.sha256(copy.read_bytes()).hexdigest() == before  # it wrote its own copy

        await Sandbox.remove(BASE)
        await Sandbox.remove(FORK)
        await Snapshot.remove(SNAP)
        wait_gone(system, "sandboxsnapshot", SNAP)
        assert not copy.parent.exists()  # the node's copy went with the object
        assert [s.name for s in await Snapshot.list()] == []
    print(f"snapshot of a stopped busybox sandbox: {took:.2f} s (stop included), "
          f"{status['sizeBytes']} bytes on disk of {status['apparentBytes']}; "
          f"create → first shell {cold:.2f} s, restore → first shell {restore:.2f} s")  # fmt: skip
