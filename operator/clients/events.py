"""Kubernetes Events about Sandboxes, posted in the background.

Events are best effort: a failure to post one is logged, never retried, and never delays the
pass that decided it (the plan emits them only on transitions, so a Sandbox has a handful).
At most ``concurrency`` are in flight; the rest wait their turn, so a burst of a thousand
``Unschedulable`` Events cannot take every connection the reconcile passes need.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import structlog

from kubesandbox_api import API_VERSION, KIND, Sandbox
from kubesandbox_kube import KubeClient, KubeError
from kubesandbox_kube.paths import EVENTS

COMPONENT = "kubesandbox-operator"
log = structlog.get_logger(__name__)


def event_body(sandbox: Sandbox, type_: str, reason: str, message: str) -> dict[str, Any]:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{sandbox.name}.", "namespace": sandbox.namespace},
        "involvedObject": {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": sandbox.name,
            "namespace": sandbox.namespace,
            "uid": sandbox.uid,
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


class EventPoster:
    def __init__(self, kube: KubeClient, concurrency: int = 8) -> None:
        self.kube = kube
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()

    def post(self, sandbox: Sandbox, *, warning: bool, reason: str, message: str) -> None:
        body = event_body(sandbox, "Warning" if warning else "Normal", reason, message)
        task = asyncio.create_task(self._post(sandbox.namespace, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Waits for the Events in flight (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks))

    async def _post(self, namespace: str, body: dict[str, Any]) -> None:
        async with self._slots:
            try:
                await self.kube.create(EVENTS.in_namespace(namespace), body)
            except KubeError as error:
                log.warning("event.post_failed", reason=body["reason"], error=str(error))
