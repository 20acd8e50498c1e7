"""Deletes ephemeral Sandboxes once they stopped (:mod:`..reconcile.ephemeral` decides).

A handler of its own, beside the reconcile daemon and independent of it: it only watches for
the moment an ephemeral Sandbox reaches ``Stopped`` and, after a short grace (the SDK must
first see it stopped), deletes that object if it is still stopped (with a uid precondition, so
a new Sandbox of the same name is never hit). Deletion then takes the usual
path (finalizer, node agent, files removed). Kopf event handlers write nothing back, so this
adds no writes to sandboxes that are not ephemeral.
"""

import asyncio
from datetime import UTC, datetime
from typing import Any

import kopf
import structlog

from kubesandbox_api import GROUP, PLURAL, VERSION, Sandbox
from kubesandbox_kube import Conflict, KubeError, NotFound
from kubesandbox_kube.paths import SANDBOXES
from kubesandbox_operator import control
from kubesandbox_operator.reconcile import ephemeral

log = structlog.get_logger(__name__)
ATTEMPTS = 5
RETRY_SECONDS = 2.0


@kopf.on.event(GROUP, VERSION, PLURAL)
async def remove_when_stopped(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    lifecycle = (body.get("spec") or {}).get("lifecycle") or {}
    if kwargs.get("type") == "DELETED" or lifecycle.get("ephemeral") is not True:
        return
    sandbox = Sandbox.from_body(dict(body))
    wait = ephemeral.delete_in(sandbox, datetime.now(UTC))
    if wait is None:
        return
    runtime = memo["runtime"]
    assert isinstance(runtime, control.Runtime)
    kube = runtime.cluster.kube
    path = SANDBOXES.in_namespace(sandbox.namespace).named(sandbox.name)
    # Event handlers are not retried by Kopf, and a Stopped sandbox sends no more events: wait
    # out the grace and retry transient failures here (a restarted operator lists every
    # object again, so a deletion lost with the process is made then).
    for attempt in range(ATTEMPTS):
        try:
            if wait:
                await asyncio.sleep(wait)
                current = Sandbox.from_body(await kube.get(path))
                if current.uid != sandbox.uid or not ephemeral.done(current):
                    return  # started again, deleted, or replaced meanwhile
                wait = 0.0
            await kube.delete(path, uid=sandbox.uid)
            break
        except (NotFound, Conflict):
            return  # already gone, or a newer sandbox of that name: nothing of ours
        except KubeError as error:
            if not error.transient or attempt == ATTEMPTS - 1:
                log.warning("ephemeral sandbox not deleted", sandbox=sandbox.name, error=str(error))
                return
            wait = RETRY_SECONDS
    log.info("ephemeral sandbox deleted", sandbox=sandbox.name, namespace=sandbox.namespace)
    kopf.info(body, reason="EphemeralDeleted", message="stopped ephemeral sandbox deleted")
