from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubesandbox_api import Sandbox
from kubesandbox_operator.reconcile.ephemeral import GRACE_SECONDS, delete_in, done

STARTED = "2026-12-04T06:00:00Z"


def sandbox(
    *,
    ephemeral: bool = True,
    phase: str | None = "Stopped",
    started: str | None = STARTED,
    deleting: bool = False,
    stopped: str | None = None,
) -> Sandbox:
    metadata: dict[str, Any] = {"name": "s", "namespace": "n", "uid": "u"}
    if deleting:
        metadata["deletionTimestamp"] = STARTED
    status: dict[str, Any] = {}
    if phase:
        status["phase"] = phase
    if started:
        status["startedAt"] = started
    if stopped:
        status["stoppedAt"] = stopped
    return Sandbox.from_body(
        {
            "metadata": metadata,
            "spec": {"image": {"oci": "busybox"}, "lifecycle": {"ephemeral": ephemeral}},
            "status": status,
        }
    )


def test_a_stopped_ephemeral_sandbox_that_ran_is_done() -> None:
    assert done(sandbox())


@pytest.mark.parametrize("phase", ["Running", "Stopping", "Draining", "Crashed", "Failed", None])
def test_only_stopped_counts(phase: str | None) -> None:
    assert not done(sandbox(phase=phase))


def test_a_sandbox_that_never_ran_is_kept() -> None:
    assert not done(sandbox(started=None))


def test_a_sandbox_that_is_not_ephemeral_is_kept() -> None:
    assert not done(sandbox(ephemeral=False))


def test_a_sandbox_being_deleted_is_left_to_its_finalizer() -> None:
    assert not done(sandbox(deleting=True))


def test_deletion_waits_for_the_sdk_to_have_seen_it_stopped() -> None:
    stopped = datetime(2026, 12, 4, 6, 0, 10, tzinfo=UTC)
    s = sandbox(stopped=stopped.isoformat())
    assert delete_in(s, stopped) == GRACE_SECONDS
    assert delete_in(s, stopped + timedelta(seconds=2)) == GRACE_SECONDS - 2
    assert delete_in(s, stopped + timedelta(minutes=5)) == 0
    assert delete_in(sandbox(), stopped) == GRACE_SECONDS  # no stoppedAt: a full grace
    assert delete_in(sandbox(phase="Running"), stopped) is None
