"""The Sandbox handlers.

A daemon per Sandbox runs the reconcile loop: it is the single writer for that object, so
passes never race each other. Spec changes and the node agent's phase changes wake it at once;
otherwise it sleeps as long as the last plan said. Deletion runs after the daemon stops: the
node agent removes the VM and its files, then Kopf removes the finalizer.
"""

import asyncio
import contextlib
from typing import Any

import kopf

from kubesandbox_api import GROUP, PLURAL, VERSION, Sandbox
from kubesandbox_kube import KubeError
from kubesandbox_operator import control
from kubesandbox_operator.reconcile.sandbox import Event

WAKE = "wake"


def _wake_event(memo: kopf.Memo) -> asyncio.Event:
    if WAKE not in memo:
        memo[WAKE] = asyncio.Event()
    event = memo[WAKE]
    assert isinstance(event, asyncio.Event)
    return event


def _runtime(memo: kopf.Memo) -> control.Runtime:
    runtime = memo["runtime"]
    assert isinstance(runtime, control.Runtime)
    return runtime


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=10.0)
async def reconcile(
    body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any
) -> None:
    wake = _wake_event(memo)

    def emit(event: Event) -> None:
        kind = "Warning" if event.warning else "Normal"
        kopf.event(body, type=kind, reason=str(event.reason), message=event.message)

    while not stopped:
        wake.clear()
        try:
            delay = await control.reconcile_once(
                _runtime(memo), Sandbox.from_body(dict(body)), emit
            )
        except KubeError as error:
            kopf.warn(body, reason="ReconcileFailed", message=str(error))
            delay = 5.0 if error.transient else 30.0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=delay)


@kopf.on.event(GROUP, VERSION, PLURAL)
def observed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Wakes the loop when the spec changes (a new generation) or the node agent reports a new
    phase, so that Ready follows at once. Event handlers write nothing back (no diff-base or
    progress annotations), unlike update handlers."""
    seen = (body.get("metadata", {}).get("generation"), body.get("status", {}).get("phase"))
    if memo.get("seen") != seen:
        memo["seen"] = seen
        _wake_event(memo).set()


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def remove(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    try:
        gone = await control.remove(_runtime(memo), Sandbox.from_body(dict(body)))
    except KubeError as error:
        raise kopf.TemporaryError(str(error), delay=5) from error
    if not gone:
        raise kopf.TemporaryError("the node agent is still removing the VM", delay=2)
