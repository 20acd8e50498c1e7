"""The Sandbox handlers.

Every version of a Sandbox Kopf's watch delivers goes to the controller (:mod:`..control.
controller`), which gives the Sandbox a pass from one of its workers: one pass per Sandbox at
a time, so passes never race, and nothing runs for a Sandbox while nothing changes (no
per-object daemon, no timer). Deletion: the controller stops passing the Sandbox, the node
agent removes the VM and its files, then Kopf removes the finalizer; the ``DELETED`` event
drops what the controller kept for it.
"""

from typing import Any

import kopf

from kubesandbox_api import GROUP, PLURAL, VERSION, Sandbox
from kubesandbox_kube import KubeError
from kubesandbox_operator import control
from kubesandbox_operator.control.controller import Controller, key_of


def controller_of(memo: kopf.Memo) -> Controller:
    controller = memo["controller"]
    assert isinstance(controller, Controller)
    return controller


@kopf.on.event(GROUP, VERSION, PLURAL)
async def observed(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    """Event handlers write nothing back (no diff-base or progress annotations), unlike
    update handlers: a Sandbox's own status writes cost one pass that plans nothing. Async on
    purpose: Kopf runs a plain function in a thread pool, and the controller's queue belongs
    to the event loop (and threads cost memory arenas)."""
    controller = controller_of(memo)
    raw = dict(body)
    if kwargs.get("type") == "DELETED":
        controller.forget(key_of(raw))
    else:
        controller.observe(raw)


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def remove(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    controller = controller_of(memo)
    raw = dict(body)
    await controller.ready.wait()  # the node agent's Lease must be known before deciding
    await controller.hold(key_of(raw))
    try:
        gone = await control.remove(controller.runtime, Sandbox.from_body(raw))
    except KubeError as error:
        raise kopf.TemporaryError(str(error), delay=5) from error
    if not gone:
        raise kopf.TemporaryError("the node agent is still removing the VM", delay=2)
