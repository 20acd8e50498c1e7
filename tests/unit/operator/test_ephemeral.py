from typing import Any

import pytest

from kubesandbox_api import Sandbox
from kubesandbox_operator.reconcile.ephemeral import done

STARTED = "2026-12-04T06:00:00Z"


def sandbox(
    *,
    ephemeral: bool = True,
    phase: str | None = "Stopped",
    started: str | None = STARTED,
    deleting: bool = False,
) -> Sandbox:
    metadata: dict[str, Any] = {"name": "s", "namespace": "n", "uid": "u"}
    if deleting:
        metadata["deletionTimestamp"] = STARTED
    status: dict[str, Any] = {}
    if phase:
        status["phase"] = phase
    if started:
        status["startedAt"] = started
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
