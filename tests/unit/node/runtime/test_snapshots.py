"""Disk snapshots on the node agent (runtime/snapshots.py, Supervisor.capture_disk): taken of a
stopped sandbox only, a private copy of its writable layer, the image pinned for it; a sandbox
from one starts with its own copy; removal deletes the copy and the pin."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from kubesandbox_api.conditions import Phase
from kubesandbox_node.runtime.model import DesiredSandbox
from kubesandbox_node.runtime.snapshots import SnapshotRefused
from tests.unit.node.runtime.conftest import Env
from tests.unit.node.runtime.fakes import DIGEST
from tests.unit.node.runtime.test_supervisor import again, desired, until


def from_snapshot(snapshot_uid: str, pinned: dict[str, object]) -> DesiredSandbox:
    return DesiredSandbox.model_validate(
        {"namespace": "default", "name": "restored", "uid": str(uuid.uuid4()), "generation": 1,
         "spec": {"image": {"snapshot": {"name": "snap"}}},
         "pinnedImage": pinned, "resolved": {"snapshotOf": snapshot_uid}}
    )  # fmt: skip


def upper_of(env: Env, uid: str) -> Path:
    return env.preparer.root / uid / "upper.ext4"


async def test_a_snapshot_copies_the_stopped_layer_and_a_sandbox_starts_from_it(env: Env) -> None:
    env.preparer.snapshots = env.runtime.snapshots
    d = desired()
    source = env.runtime.put(d)
    await until(source, Phase.RUNNING)
    snap = str(uuid.uuid4())
    with pytest.raises(SnapshotRefused, match="is Running; a snapshot is of a Stopped sandbox"):
        await env.runtime.snapshot(snap, d.uid)
    assert env.runtime.snapshots.get(snap) is None  # nothing half-made is left
    env.runtime.put(again(d, 2, state="Stopped", stopMode="Kill"))
    await until(source, Phase.STOPPED)
    upper_of(env, d.uid).write_bytes(b"the source's marker")

    info = await env.runtime.snapshot(snap, d.uid)
    assert info.source_uid == d.uid
    assert info.namespace == "default"
    assert info.image.digest == DIGEST
    assert info.apparent_bytes == len(b"the source's marker")
    assert await env.runtime.snapshot(snap, d.uid) == info  # taken once
    copy = env.runtime.snapshots.upper(snap)
    assert copy.read_bytes() == b"the source's marker"
    assert copy.stat().st_mode & 0o777 == 0o600
    assert env.preparer.pins[snap] == d.uid  # the image stays pinned for the snapshot
    upper_of(env, d.uid).write_bytes(b"changed after the snapshot")
    assert copy.read_bytes() == b"the source's marker"

    restored = from_snapshot(snap, info.image.model_dump(mode="json", by_alias=True))
    sandbox = env.runtime.put(restored)
    await until(sandbox, Phase.RUNNING)
    assert upper_of(env, restored.uid).read_bytes() == b"the source's marker"
    assert not upper_of(env, restored.uid).samefile(copy)

    assert await env.runtime.remove_snapshot(snap)
    assert snap not in env.preparer.pins
    assert env.runtime.snapshots.get(snap) is None
    assert not await env.runtime.remove_snapshot(snap)
    assert upper_of(env, restored.uid).read_bytes() == b"the source's marker"  # its own copy


async def test_a_snapshot_of_a_sandbox_elsewhere_or_never_run_is_refused(env: Env) -> None:
    with pytest.raises(SnapshotRefused, match="not on this node"):
        await env.runtime.snapshot(str(uuid.uuid4()), str(uuid.uuid4()))
    d = desired(lifecycle={"state": "Stopped"})
    env.runtime.put(d)
    with pytest.raises(SnapshotRefused, match="no writable layer"):
        await env.runtime.snapshot(str(uuid.uuid4()), d.uid)
    with pytest.raises(SnapshotRefused, match="not a snapshot uid"):
        await env.runtime.snapshot("../x", d.uid)
