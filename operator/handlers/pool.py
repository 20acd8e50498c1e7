"""The SandboxPool handlers: every version to the pool index, and the drain on deletion.

The index wakes the pool's pass (:mod:`..control.pools`); deletion waits until every member
Sandbox of the pool is gone (each through the usual path: its node agent removes the VM).
Sandboxes that were served by the pool are not its members any more and are not touched.
"""

from typing import Any

import kopf

from kubesandbox_api import GROUP, VERSION
from kubesandbox_api.pool import POOL_PLURAL, SandboxPool
from kubesandbox_kube import KubeError
from kubesandbox_operator.control.controller import key_of
from kubesandbox_operator.handlers.sandbox import controller_of


@kopf.on.event(GROUP, VERSION, POOL_PLURAL)
async def pool_observed(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    controller = controller_of(memo)
    if kwargs.get("type") == "DELETED":
        controller.forget_pool(key_of(dict(body)))
    else:
        controller.runtime.pools.pool_seen(dict(body))


@kopf.on.delete(GROUP, VERSION, POOL_PLURAL)
async def pool_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    controller = controller_of(memo)
    try:
        remaining = await controller.pools.drain(SandboxPool.from_body(dict(body)))
    except KubeError as error:
        raise kopf.TemporaryError(str(error), delay=5) from error
    if remaining:
        raise kopf.TemporaryError(f"{remaining} member(s) still being removed", delay=1)
