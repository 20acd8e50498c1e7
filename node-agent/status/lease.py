"""The node agent's ``coordination.k8s.io/v1`` Lease: ``node-agent-<node>``, renewed about
every 10 s with ``leaseDurationSeconds: 40``, announcing the API endpoint, the emulation mode,
the capabilities and, when it serves HTTPS, its certificate (the annotations are those of
:mod:`kubesandbox_kube.nodeagents`, which the operator and the gateway parse). Written with
server-side apply, so the first renewal creates it and nothing else about the object is ours
to clobber.

A certificate the node agent made itself (``tls: auto``) is renewed here when it nears its end
(checked at every renewal): the new one is announced first, then served, so a caller that
reads the Lease in between pins the new one a moment early and retries.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from kubesandbox_kube import KubeClient, KubeError
from kubesandbox_kube.nodeagents import NODE_LABEL, announcement, lease_name
from kubesandbox_kube.paths import LEASES
from kubesandbox_node.server.tls import Renewal

FIELD_MANAGER = "kubesandbox-node-agent"
log = structlog.get_logger(__name__)


def micro_time(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class LeaseRenewer:
    kube: KubeClient
    node: str
    namespace: str
    endpoint: str
    emulation: bool
    capabilities: tuple[str, ...]
    instance: str
    certificate: str | None = None
    """The PEM of the serving certificate callers pin (``None``: plain HTTP or a CA's)."""
    interval: float = 10.0
    duration: int = 40
    acquired: datetime = field(default_factory=lambda: datetime.now(UTC))
    renewal: Renewal | None = None
    """The made certificate and the server context serving it (``tls: auto``)."""

    @property
    def name(self) -> str:
        return lease_name(self.node)

    def body(self, now: datetime, acquired: datetime) -> dict[str, Any]:
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "annotations": announcement(
                    self.endpoint,
                    emulation=self.emulation,
                    capabilities=self.capabilities,
                    certificate=self.certificate,
                ),
                "labels": {NODE_LABEL: self.node},
            },
            "spec": {
                "holderIdentity": f"{self.node}/{self.instance}",
                "leaseDurationSeconds": self.duration,
                "acquireTime": micro_time(acquired),
                "renewTime": micro_time(now),
            },
        }

    async def renew_once(self, acquired: datetime) -> dict[str, Any]:
        path = LEASES.in_namespace(self.namespace).named(self.name)
        return await self.kube.apply(
            path, self.body(datetime.now(UTC), acquired), field_manager=FIELD_MANAGER
        )

    async def announce(self) -> bool:
        """Renews now (what a changed certificate needs); ``False`` when the write failed."""
        try:
            await self.renew_once(self.acquired)
        except KubeError as exc:
            log.warning("lease.renew_failed", error=str(exc), lease=self.name)
            return False
        return True

    async def refresh_certificate(self, now: datetime) -> bool:
        """Renews a made certificate that is due: announced, then served."""
        if self.renewal is None or not self.renewal.due(now):
            return False
        self.certificate = self.renewal.renew(now)
        await self.announce()
        self.renewal.serve()
        log.info("tls.certificate_renewed", lease=self.name)
        return True

    async def run(self) -> None:
        self.acquired = datetime.now(UTC)
        while True:
            if not await self.refresh_certificate(datetime.now(UTC)):
                await self.announce()
            await asyncio.sleep(self.interval)
