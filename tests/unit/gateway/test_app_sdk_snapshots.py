"""The real microsandbox SDK (0.7.11, cloud backend) taking, listing, restoring and removing
snapshots through the gateway: microsandbox's ``examples/python/snapshot-fork`` flow (less
its ``replace=True``, which the cloud backend refuses before sending anything), on the fake
apiserver with a stand-in operator that captures a stopped sandbox's snapshot at once.

It pins the wire shapes the SDK sends and accepts (docs/msb-compat.md): the snapshot request
and operation, the descriptor digest it verifies, the ``disk_snapshot_ref`` a restore sends,
and the RBAC on ``sandboxsnapshots``. tests/integration/gateway/test_sdk_snapshots.py runs the
same flow on real VMs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kubesandbox_gateway.app import Gateway
from tests.unit.gateway import fakes
from tests.unit.gateway.conftest import SA_USER
from tests.unit.gateway.test_app_sdk import play_operator, run_sdk, serving

DIGEST = "sha256:" + "ab" * 32

SCRIPT = """
import asyncio, json, os
from microsandbox import MicrosandboxError, Sandbox, Snapshot

async def outcome(call):
    try:
        value = await call
    except Exception as error:
        return {"error": type(error).__name__, "message": str(error)}
    return {"ok": repr(value)}

async def main():
    out = {}
    baseline = await Sandbox.create("snapshot-baseline", image="alpine")
    running = await Sandbox.get("snapshot-baseline")
    out["running"] = await outcome(running.snapshot("too-soon"))
    out["stop_and_wait"] = await outcome(baseline.stop_and_wait())
    await baseline.stop()
    h = await Sandbox.get("snapshot-baseline")
    snap = await h.snapshot("snapshot-baseline-state")
    out["digest"] = snap.digest
    out["size"] = snap.size_bytes
    out["image_ref"] = snap.image_ref
    out["duplicate"] = await outcome(h.snapshot("snapshot-baseline-state"))
    got = await Snapshot.get("snapshot-baseline-state")
    out["got"] = {"name": got.name, "digest": got.digest, "reference": got.reference}
    out["listed"] = sorted(s.name for s in await Snapshot.list())
    out["fork"] = await outcome(h.fork("direct-fork")) if hasattr(h, "fork") else None
    fork = await Sandbox.restore("snapshot-baseline-state", name="snapshot-fork")
    ran = await fork.exec("cat", ["/root/marker.txt"])
    out["fork_sees"] = ran.stdout_text
    await fork.stop()
    await Sandbox.remove("snapshot-baseline")
    await Sandbox.remove("snapshot-fork")
    await Snapshot.remove("snapshot-baseline-state")
    out["after_remove"] = sorted(s.name for s in await Snapshot.list())
    out["gone"] = await outcome(Snapshot.get("snapshot-baseline-state"))
    print(json.dumps(out, default=str), flush=True)

asyncio.run(main())
os._exit(0)
"""


async def capture_snapshots(kube: fakes.FakeKube) -> None:
    """The operator and node agent in one: a snapshot of a Stopped sandbox becomes Ready with
    the source's pinned image; one of another sandbox fails."""
    while True:
        for (plural, namespace, _), obj in list(kube.objects.items()):
            if plural != "sandboxsnapshots" or obj.get("status"):
                continue
            source = kube.objects.get(("sandboxes", namespace, obj["spec"]["source"]["name"]))
            if source is None or (source.get("status") or {}).get("phase") != "Stopped":
                obj["status"] = {"phase": "Failed", "message": "the source is not Stopped"}
                continue
            obj["status"] = {
                "phase": "Ready",
                "nodeName": "node-1",
                "sourceUid": source["metadata"]["uid"],
                "scope": "Disk",
                "image": {"reference": "alpine", "digest": DIGEST},
                "sizeBytes": 4096,
                "apparentBytes": 1 << 30,
                "capturedAt": datetime.now(UTC).isoformat(),
            }
        await asyncio.sleep(0.02)


@pytest.fixture
async def served(kube: fakes.FakeKube, auth: fakes.FakeAuth) -> AsyncIterator[str]:
    auth.grant(SA_USER, "create,get,list,delete", "team-a", resource="sandboxsnapshots")
    gateway = Gateway(kube, auth, poll_interval=0.02, max_wait=5.0)
    async with serving(kube, gateway, play_operator(kube), capture_snapshots(kube)) as url:
        yield url


async def test_the_snapshot_fork_example_runs_through_the_gateway(
    served: str, kube: fakes.FakeKube, auth: fakes.FakeAuth, tmp_path: Path
) -> None:
    out = await run_sdk(f"{served}/ns/team-a", tmp_path, SCRIPT)
    assert out["running"]["error"] == "MicrosandboxError", out["running"]
    assert "stopped sandbox" in out["running"]["message"]
    assert out["stop_and_wait"]["error"] == "UnsupportedError"  # refused before sending
    assert out["digest"].startswith("sha256:")  # the SDK checked it against the descriptor
    assert len(out["digest"]) == 71
    assert out["size"] == 4096
    assert out["image_ref"] == "alpine"
    assert "already exists" in out["duplicate"]["message"]
    assert out["got"] == {
        "name": "snapshot-baseline-state",
        "digest": out["digest"],
        "reference": "snapshot-baseline-state",
    }
    assert out["listed"] == ["snapshot-baseline-state"]  # the refused one was never made
    assert out["fork"]["error"] == "InvalidConfigError"  # refused before sending
    assert "local backend" in out["fork"]["message"]
    assert out["fork_sees"] == "/root/marker.txt\n"  # the stand-in guest echoes its arguments
    assert out["after_remove"] == []
    assert out["gone"]["error"] == "FileNotFoundError"
    # The restore became a Sandbox of the snapshot, and the caller's right to read it was asked.
    assert ("sandboxes", "team-a", "snapshot-fork") not in kube.objects  # removed at the end
    reviews = [(a.verb, a.resource, a.name) for _, a in auth.reviews]
    assert ("create", "sandboxsnapshots", "snapshot-baseline-state") in reviews
    assert ("get", "sandboxsnapshots", "snapshot-baseline-state") in reviews
    assert ("delete", "sandboxsnapshots", "snapshot-baseline-state") in reviews
    paths = [method + " " + url for method, url in kube.calls]
    assert any("sandboxsnapshots" in p and p.startswith("POST") for p in paths)
