"""Writing kubeconfig files for x509 users of the loopback API server."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import yaml

from kubesandbox_devenv.certs import CertPair

CLUSTER_NAME = "kubesandbox"


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(
    path: Path, *, server: str, ca: Path, user: str, client: CertPair, embed: bool
) -> Path:
    """Write a one-context kubeconfig (mode 0600).

    ``embed`` puts the certificates in the file (a self-contained file people copy around);
    otherwise it points at the files (what the control-plane components read).
    """
    cluster: dict[str, Any] = {"server": server}
    credentials: dict[str, Any]
    if embed:
        cluster["certificate-authority-data"] = _b64(ca)
        credentials = {
            "client-certificate-data": _b64(client.cert),
            "client-key-data": _b64(client.key),
        }
    else:
        cluster["certificate-authority"] = str(ca)
        credentials = {"client-certificate": str(client.cert), "client-key": str(client.key)}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CLUSTER_NAME, "cluster": cluster}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": CLUSTER_NAME, "context": {"cluster": CLUSTER_NAME, "user": user}}],
        "current-context": CLUSTER_NAME,
        "preferences": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        yaml.safe_dump(config, handle, sort_keys=False)
    temporary.replace(path)
    return path
