"""Credentials for the apiserver, from a kubeconfig or the in-cluster service account.

The ``kubernetes`` package already understands every kubeconfig shape (embedded or file
certificates, tokens, exec plugins such as cloud login helpers), so it parses; this module
turns its result into an SSL context and an ``Authorization`` header for aiohttp.
"""

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config


@dataclass(frozen=True)
class Credentials:
    server: str
    ssl_context: ssl.SSLContext
    authorization: str | None
    """The ``Authorization`` header value (``Bearer …``), when the identity is a token."""
    default_namespace: str


def load(kubeconfig: Path | None = None, context: str | None = None) -> Credentials:
    """Credentials from ``kubeconfig`` (or ``$KUBECONFIG``), else from the in-cluster account."""
    configuration = k8s_client.Configuration()
    namespace = "default"
    path = kubeconfig or (Path(os.environ["KUBECONFIG"]) if os.environ.get("KUBECONFIG") else None)
    if path is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        namespace_file = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        if namespace_file.is_file():
            namespace = namespace_file.read_text().strip()
    else:
        config_file = str(path or Path.home() / ".kube" / "config")
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=config_file, context=context, client_configuration=configuration
        )
        _, active = k8s_config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=config_file
        )
        namespace = str((active or {}).get("context", {}).get("namespace") or "default")
    return Credentials(
        server=str(configuration.host).rstrip("/"),
        ssl_context=_ssl_context(configuration),
        authorization=_authorization(configuration),
        default_namespace=namespace,
    )


def _ssl_context(configuration: k8s_client.Configuration) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if configuration.cert_file and configuration.key_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file)
    return context


def _authorization(configuration: k8s_client.Configuration) -> str | None:
    token = configuration.api_key.get("authorization") or configuration.api_key.get("BearerToken")
    if not token:
        return None
    token = str(token)
    return token if token.lower().startswith("bearer ") else f"Bearer {token}"
