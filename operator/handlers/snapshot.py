"""The SandboxSnapshot handlers: capture once the source is Stopped, remove the node's copy
before the object goes (Kopf's finalizer, ``kubesandbox.dev/finalizer``)."""

from typing import Any

import kopf

from kubesandbox_api import GROUP, VERSION
from kubesandbox_api.snapshot import SNAPSHOT_PLURAL, SandboxSnapshot
from kubesandbox_kube import KubeError
from kubesandbox_operator.control import snapshots
from kubesandbox_operator.handlers.sandbox import controller_of


@kopf.on.resume(GROUP, VERSION, SNAPSHOT_PLURAL)
@kopf.on.create(GROUP, VERSION, SNAPSHOT_PLURAL)
async def snapshot_wanted(body: kopf.Body, memo: kopf.Memo, patch: kopf.Patch, **_: Any) -> None:
    controller = controller_of(memo)
    await controller.ready.wait()  # the node agents' Leases must be known
    try:
        status, again = await snapshots.take(
            controller.runtime, SandboxSnapshot.from_body(dict(body))
        )
    except KubeError as error:
        raise kopf.TemporaryError(str(error), delay=5) from error
    if status is not None:
        patch.status.update(status)
    if again is not None:
        raise kopf.TemporaryError("the snapshot cannot be taken yet", delay=again)


@kopf.on.delete(GROUP, VERSION, SNAPSHOT_PLURAL)
async def snapshot_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    controller = controller_of(memo)
    await controller.ready.wait()
    if not await snapshots.remove(controller.runtime, SandboxSnapshot.from_body(dict(body))):
        raise kopf.TemporaryError("the node agent has not removed the copy yet", delay=5)
