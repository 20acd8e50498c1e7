"""One active operator at a time, through a coordination Lease.

The operator that holds the Lease reconciles; the others wait. The holder renews every
``renew_seconds``; if it cannot renew before the Lease would expire, it stops reconciling at
once (and exits, so its Deployment restarts it as a standby). A SIGKILLed leader simply stops
renewing: a standby takes over after ``duration_seconds``, and because every action is
idempotent and keyed by the Sandbox UID, nothing is lost or done twice.

The holder renews with a PUT of the Lease it last wrote (its ``resourceVersion`` makes the PUT
a compare-and-swap); only when that fails (someone else wrote it) does it read the Lease
again. So an idle holder sends one write per ``renew_seconds`` and no reads.
"""

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from kubesandbox_kube import AlreadyExists, Conflict, KubeClient, KubeError, NotFound
from kubesandbox_kube.paths import LEASES

log = structlog.get_logger(__name__)
JsonDict = dict[str, Any]


def _micro_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElection:
    def __init__(
        self,
        kube: KubeClient,
        namespace: str,
        name: str,
        identity: str,
        *,
        duration_seconds: int = 15,
        renew_seconds: float = 5.0,
    ) -> None:
        self.kube = kube
        self.path = LEASES.in_namespace(namespace).named(name)
        self.collection = LEASES.in_namespace(namespace)
        self.name = name
        self.identity = identity
        self.duration = duration_seconds
        self.renew_seconds = renew_seconds
        self._held: JsonDict | None = None
        """The Lease as this process last wrote it (``None`` when it does not hold it)."""

    async def acquire(self) -> None:
        """Returns once this process holds the Lease."""
        # Polling is inherent: a Lease cannot be watched for expiry.
        while True:
            if await self._try():
                break
            await asyncio.sleep(self.renew_seconds)
        log.info("leader.acquired", lease=self.name, identity=self.identity)

    async def hold(self, lost: asyncio.Event) -> None:
        """Renews until it cannot; then sets ``lost``."""
        deadline = datetime.now(UTC) + timedelta(seconds=self.duration)
        while not lost.is_set():
            await asyncio.sleep(self.renew_seconds)
            try:
                renewed = await self._try()
            except KubeError as error:
                log.warning("leader.renew_failed", error=str(error))
                renewed = False
            now = datetime.now(UTC)
            if renewed:
                deadline = now + timedelta(seconds=self.duration)
            elif now >= deadline - timedelta(seconds=self.renew_seconds):
                # Another renewal would come too late: someone else may take over by then.
                log.error("leader.lost", lease=self.name, identity=self.identity)
                lost.set()

    async def release(self) -> None:
        try:
            lease = await self.kube.get(self.path)
        except (NotFound, KubeError):
            return
        if lease.get("spec", {}).get("holderIdentity") == self.identity:
            lease["spec"]["holderIdentity"] = None
            lease["spec"]["renewTime"] = None
            with contextlib.suppress(KubeError):
                await self.kube.request("PUT", self.path, body=lease)

    async def _try(self) -> bool:
        if self._held is not None:
            if await self._put(self._held, datetime.now(UTC)):
                return True
            self._held = None  # someone else wrote it: read it and decide again
        now = datetime.now(UTC)
        try:
            lease = await self.kube.get(self.path)
        except NotFound:
            return await self._create(now)
        spec = lease.setdefault("spec", {})
        holder = spec.get("holderIdentity")
        renewed = spec.get("renewTime")
        expired = (
            renewed is None
            or datetime.fromisoformat(str(renewed).replace("Z", "+00:00"))
            + timedelta(seconds=int(spec.get("leaseDurationSeconds") or self.duration))
            < now
        )
        if holder not in (None, self.identity) and not expired:
            return False
        if holder != self.identity:
            spec["acquireTime"] = _micro_time(now)
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        return await self._put(lease, now)

    async def _put(self, lease: JsonDict, now: datetime) -> bool:
        spec = lease.setdefault("spec", {})
        spec.update(
            holderIdentity=self.identity,
            leaseDurationSeconds=self.duration,
            renewTime=_micro_time(now),
        )
        try:
            # The resourceVersion in the body makes this a compare-and-swap.
            self._held = await self.kube.request("PUT", self.path, body=lease)
        except Conflict:
            return False
        return True

    async def _create(self, now: datetime) -> bool:
        body: JsonDict = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self.duration,
                "acquireTime": _micro_time(now),
                "renewTime": _micro_time(now),
                "leaseTransitions": 0,
            },
        }
        try:
            self._held = await self.kube.create(self.collection, body)
        except (AlreadyExists, Conflict):
            return False
        return True
