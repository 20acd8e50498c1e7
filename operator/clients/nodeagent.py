"""Requests to node agents (docs/node-agent-api.md): desired state in, removal out.

Every request is keyed by the Sandbox's UID, so retries never create a second VM. The operator
authenticates with its service-account token; the node agent checks it with TokenReview. A
node agent that announces its certificate in its Lease is trusted with exactly that certificate
(:func:`kubesandbox_kube.nodeagents.pinned_context`); otherwise ``ca_file`` (or the system
trust store) vouches for it.
"""

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from kubesandbox_api import Sandbox
from kubesandbox_kube.nodeagents import pinned_context
from kubesandbox_operator.reconcile.pool import pool_of
from kubesandbox_operator.reconcile.references import Resolution
from kubesandbox_operator.reconcile.sandbox import NodeAgent

JsonDict = dict[str, Any]


class NodeAgentError(Exception):
    """The node agent refused or could not be reached; retried on the next reconcile."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        """The node agent's HTTP status; ``None`` when it could not be reached."""


@dataclass(frozen=True)
class NodeAgentAuth:
    token_file: Path
    ca_file: Path | None = None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token_file.read_text().strip()}"}

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)


def desired_state(sandbox: Sandbox, resolution: Resolution) -> JsonDict:
    body: JsonDict = {
        "namespace": sandbox.namespace,
        "name": sandbox.name,
        "uid": sandbox.uid,
        "generation": sandbox.generation,
        "spec": sandbox.spec.model_dump(mode="json", exclude_none=True),
        "resolved": resolution.payload(),
    }
    if sandbox.status and sandbox.status.image:
        body["pinnedImage"] = sandbox.status.image.model_dump(mode="json", exclude_none=True)
    elif resolution.snapshot_image is not None:
        body["pinnedImage"] = resolution.snapshot_image
    if pool_of(sandbox) is not None:
        body["poolMember"] = True
    return body


class NodeAgents:
    def __init__(self, auth: NodeAgentAuth, session: aiohttp.ClientSession) -> None:
        self.auth = auth
        self.session = session
        self._ssl = auth.ssl_context()

    async def put(self, agent: NodeAgent, sandbox: Sandbox, resolution: Resolution) -> JsonDict:
        url = f"{agent.endpoint}/v1/sandboxes/{sandbox.uid}"
        return await self._call("PUT", url, desired_state(sandbox, resolution), agent)

    async def claim(
        self,
        agent: NodeAgent,
        member_uid: str,
        pool: str,
        sandbox: Sandbox,
        resolution: Resolution,
    ) -> JsonDict:
        """Hands the running VM of pool member ``member_uid`` to ``sandbox``."""
        url = f"{agent.endpoint}/v1/sandboxes/{member_uid}/claim"
        body = {"pool": pool, "sandbox": desired_state(sandbox, resolution)}
        return await self._call("POST", url, body, agent)

    async def delete(self, agent: NodeAgent, uid: str) -> bool:
        """Asks for removal; ``True`` once the node agent reports everything gone."""
        url = f"{agent.endpoint}/v1/sandboxes/{uid}"
        try:
            async with self.session.delete(
                url, headers=self.auth.headers(), ssl=self._ssl_for(agent)
            ) as response:
                if response.status in (200, 204, 404):
                    return True
                if response.status == 202:
                    return False
                raise NodeAgentError(f"DELETE {url}: {response.status} {await response.text()}")
        except aiohttp.ClientError as error:
            raise NodeAgentError(f"DELETE {url}: {error!r}") from error

    async def snapshot(
        self, agent: NodeAgent, uid: str, namespace: str, name: str, source_uid: str
    ) -> JsonDict:
        """Takes SandboxSnapshot ``uid`` of the stopped sandbox ``source_uid`` on that node
        (idempotent); what it holds. A 409 ``NodeAgentError`` says why it cannot be taken."""
        url = f"{agent.endpoint}/v1/snapshots/{uid}"
        body = {"namespace": namespace, "name": name, "sourceUid": source_uid}
        return await self._call("PUT", url, body, agent)

    async def delete_snapshot(self, agent: NodeAgent, uid: str, namespace: str) -> None:
        url = f"{agent.endpoint}/v1/snapshots/{uid}"
        try:
            async with self.session.delete(
                url,
                params={"namespace": namespace},
                headers=self.auth.headers(),
                ssl=self._ssl_for(agent),
            ) as response:
                if response.status not in (200, 204, 404):
                    raise NodeAgentError(
                        f"DELETE {url}: {response.status} {await response.text()}",
                        response.status,
                    )
        except aiohttp.ClientError as error:
            raise NodeAgentError(f"DELETE {url}: {error!r}") from error

    def _ssl_for(self, agent: NodeAgent) -> ssl.SSLContext:
        return self._ssl if agent.certificate is None else pinned_context(agent.certificate)

    async def _call(self, method: str, url: str, body: JsonDict, agent: NodeAgent) -> JsonDict:
        try:
            async with self.session.request(
                method, url, json=body, headers=self.auth.headers(), ssl=self._ssl_for(agent)
            ) as response:
                if response.status >= 400:
                    raise NodeAgentError(
                        f"{method} {url}: {response.status} {await response.text()}",
                        response.status,
                    )
                answer = await response.json(content_type=None)
                return dict(answer) if isinstance(answer, dict) else {}
        except aiohttp.ClientError as error:
            raise NodeAgentError(f"{method} {url}: {error!r}") from error
