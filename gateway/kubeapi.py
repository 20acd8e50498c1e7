"""What the gateway needs of a Kubernetes client and of its caches, as interfaces.

:class:`kubesandbox_kube.KubeClient` satisfies it; unit tests pass an in-memory fake. Keeping
the surface this small (five calls) is what makes the fake trustworthy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from kubesandbox_kube.paths import ResourcePath

JsonDict = dict[str, Any]


class KubeApi(Protocol):
    async def request(
        self,
        method: str,
        path: ResourcePath | str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> JsonDict: ...

    async def get(self, path: ResourcePath) -> JsonDict: ...

    async def create(self, path: ResourcePath, body: Mapping[str, Any]) -> JsonDict: ...

    async def delete(
        self, path: ResourcePath, *, uid: str | None = None, grace_seconds: int | None = None
    ) -> JsonDict: ...

    async def merge_patch(self, path: ResourcePath, body: Mapping[str, Any]) -> JsonDict: ...


class ObjectCache(Protocol):
    """A watch-backed copy of one collection (:class:`kubesandbox_kube.informer.Informer`).

    Answers may lag the apiserver by the watch latency; when not :attr:`ready` (not yet
    listed, watch broken, too many objects) the gateway asks the apiserver instead."""

    @property
    def ready(self) -> bool: ...

    def get(self, namespace: str, name: str) -> JsonDict | None: ...

    def by_uid(self, uid: str) -> JsonDict | None: ...
