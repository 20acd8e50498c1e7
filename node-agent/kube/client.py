"""An async Kubernetes API client of our own: aiohttp, JSON, and the few verbs we need.

Credentials come from a kubeconfig (current context; certificates as paths or ``-data``,
or a bearer token) or, with no kubeconfig, from the in-cluster service account. Errors are
mapped once into ``ApiError`` with ``temporary`` telling callers whether a retry makes sense
(5xx, 429, connection errors) or not (4xx).

Only this module talks to the apiserver; ``auth``, ``lease`` and ``status`` build on it.
"""

from __future__ import annotations

import base64
import os
import shutil
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def temporary(self) -> bool:
        return self.status >= 500 or self.status in (0, 408, 429)


@dataclass(frozen=True)
class Credentials:
    server: str
    ssl: ssl.SSLContext | bool
    token: str | None = None


def _materialise(data: str, folder: Path, name: str) -> str:
    path = folder / name
    path.write_bytes(base64.b64decode(data))
    os.chmod(path, 0o600)
    return str(path)


def load_kubeconfig(path: Path, context: str | None = None) -> Credentials:
    config = yaml.safe_load(path.read_text())
    context_name = context or config["current-context"]
    ctx = next(c["context"] for c in config["contexts"] if c["name"] == context_name)
    cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == ctx["cluster"])
    user = next(u["user"] for u in config.get("users", []) if u["name"] == ctx["user"])
    sslctx = ssl.create_default_context()
    if "certificate-authority-data" in cluster:
        sslctx.load_verify_locations(
            cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
        )
    elif "certificate-authority" in cluster:
        sslctx.load_verify_locations(cafile=cluster["certificate-authority"])
    if cluster.get("insecure-skip-tls-verify"):
        sslctx.check_hostname = False
        sslctx.verify_mode = ssl.CERT_NONE
    # Embedded client credentials go through files only for as long as ``load_cert_chain``
    # reads them: no copy of the key outlives this function.
    folder = Path(tempfile.mkdtemp(prefix="ksb-kube-"))
    try:
        cert = user.get("client-certificate") or (
            _materialise(user["client-certificate-data"], folder, "tls.crt")
            if "client-certificate-data" in user
            else None
        )
        key = user.get("client-key") or (
            _materialise(user["client-key-data"], folder, "tls.key")
            if "client-key-data" in user
            else None
        )
        if cert and key:
            sslctx.load_cert_chain(cert, key)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return Credentials(cluster["server"].rstrip("/"), sslctx, user.get("token"))


def in_cluster() -> Credentials:
    host = os.environ["KUBERNETES_SERVICE_HOST"]
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    sslctx = ssl.create_default_context(cafile=str(SA_DIR / "ca.crt"))
    token = (SA_DIR / "token").read_text().strip()
    return Credentials(f"https://{host}:{port}", sslctx, token)


class KubeClient:
    def __init__(self, credentials: Credentials, *, timeout: float = 30.0) -> None:
        self.credentials = credentials
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_config(cls, kubeconfig: Path | None) -> KubeClient:
        return cls(load_kubeconfig(kubeconfig) if kubeconfig else in_cluster())

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            headers = {"Accept": "application/json", "User-Agent": "kubesandbox-node-agent"}
            if self.credentials.token:
                headers["Authorization"] = f"Bearer {self.credentials.token}"
            self._session = aiohttp.ClientSession(
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(ssl=self.credentials.ssl),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        url = self.credentials.server + path
        data = None if body is None else (body if isinstance(body, bytes) else None)
        try:
            async with self._http().request(
                method,
                url,
                params=params,
                data=data,
                json=None if data is not None or body is None else body,
                headers={"Content-Type": content_type} if body is not None else None,
            ) as response:
                payload = await response.json(content_type=None)
                if response.status >= 400:
                    message = payload.get("message", "") if isinstance(payload, dict) else ""
                    reason = payload.get("reason", "") if isinstance(payload, dict) else ""
                    raise ApiError(response.status, message or str(payload), reason)
                return payload if isinstance(payload, dict) else {}
        except aiohttp.ClientError as exc:
            raise ApiError(0, str(exc), "ConnectionError") from exc
        except TimeoutError as exc:
            raise ApiError(0, "request timed out", "Timeout") from exc

    async def apply(
        self, path: str, body: dict[str, Any], *, field_manager: str, force: bool = True
    ) -> dict[str, Any]:
        """Server-side apply of ``body`` at ``path`` as ``field_manager``."""
        import json

        params = {"fieldManager": field_manager}
        if force:
            params["force"] = "true"
        return await self.request(
            "PATCH",
            path,
            body=json.dumps(body).encode(),
            params=params,
            content_type=APPLY_PATCH,
        )
