"""The one Kubernetes API boundary shared by the operator, the gateway, the node agent and
the CLI.

Only this package talks HTTP to the apiserver. :mod:`.config` turns a kubeconfig (client
certificates, tokens, exec plugins) or the in-cluster service account into credentials;
:mod:`.client` is a small asyncio client over aiohttp that maps every failure once into the
typed errors of :mod:`.errors`, which say whether retrying can help. :mod:`.auth` reviews
bearer tokens (gateway, node agent); :mod:`.nodeagents` is the node agent Lease format and the
pinned TLS trust its readers use.
"""

from kubesandbox_kube.client import KubeClient
from kubesandbox_kube.errors import (
    AlreadyExists,
    Conflict,
    Forbidden,
    Invalid,
    KubeError,
    NotFound,
    Unauthorized,
)
from kubesandbox_kube.paths import ResourcePath

__all__ = [
    "AlreadyExists",
    "Conflict",
    "Forbidden",
    "Invalid",
    "KubeClient",
    "KubeError",
    "NotFound",
    "ResourcePath",
    "Unauthorized",
]
