"""Credentials for the apiserver, from a kubeconfig or the in-cluster service account.

Parsed here, without the ``kubernetes`` package (the gateway and the CLI may not import it):
the kubeconfig shapes we honour are the common ones: embedded or file certificates and CA,
``insecure-skip-tls-verify``, ``token`` / ``tokenFile``, and exec plugins
(``client.authentication.k8s.io``, as cloud login helpers use) returning a token or a client
certificate. The result is an SSL context and an ``Authorization`` header for aiohttp.

Token files (the in-cluster service account's, a kubeconfig ``tokenFile``) are not read once:
the kubelet rotates projected service-account tokens (it rewrites the file well before the
token expires), so :meth:`Credentials.current_authorization` re-reads the file whenever it
changed, and a process that runs for days keeps a valid token.
"""

import base64
import json
import os
import ssl
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class ConfigError(Exception):
    """The kubeconfig is missing, unreadable, or names something it does not hold."""


class TokenFile:
    """A bearer token kept in a file, re-read when the file changes.

    The kubelet swaps a projected token in by renaming a new directory over ``..data``, so the
    file's inode, mtime or size changes: one ``stat`` per request tells. When the file cannot
    be read any more the last token read is kept (the apiserver says when it stops working).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._token = ""
        self.read()

    def read(self) -> str:
        try:
            info = self.path.stat()
            stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
            if stamp != self._stamp:
                token = self.path.read_text().strip()
                if token:
                    self._token, self._stamp = token, stamp
        except OSError as error:
            if not self._token:
                raise ConfigError(
                    f"cannot read token file {self.path}: {error.strerror or error}"
                ) from error
        if not self._token:
            raise ConfigError(f"token file {self.path} is empty")
        return self._token


@dataclass(frozen=True)
class Credentials:
    server: str
    ssl_context: ssl.SSLContext
    authorization: str | None
    """The ``Authorization`` header value (``Bearer …``), when the identity is a token."""
    default_namespace: str
    client_certificate: bool = False
    """True when the identity is a client certificate (presented through ``ssl_context``)."""
    user: str = ""
    """The kubeconfig user entry's name (empty in-cluster)."""
    token_file: TokenFile | None = None
    """The token's file when it may rotate; ``authorization`` holds its first value."""

    def current_authorization(self) -> str | None:
        """The ``Authorization`` header value for the next request (a rotated token included)."""
        if self.token_file is not None:
            return _bearer(self.token_file.read())
        return self.authorization


def load(kubeconfig: Path | None = None, context: str | None = None) -> Credentials:
    """Credentials from ``kubeconfig`` (or ``$KUBECONFIG``), else from the in-cluster account."""
    path = kubeconfig or (Path(os.environ["KUBECONFIG"]) if os.environ.get("KUBECONFIG") else None)
    if path is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        return _in_cluster()
    return _from_kubeconfig(path or Path.home() / ".kube" / "config", context)


def _in_cluster(account: Path | None = None) -> Credentials:
    """The Pod's service account: the API Service from the environment the kubelet sets, the
    cluster CA, the (rotating) token and the namespace from the mounted account directory."""
    account = account or SERVICE_ACCOUNT
    host = os.environ["KUBERNETES_SERVICE_HOST"]
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if ":" in host:
        host = f"[{host}]"
    ca = account / "ca.crt"
    context = ssl.create_default_context(cafile=str(ca) if ca.is_file() else None)
    token = TokenFile(account / "token")
    namespace_file = account / "namespace"
    namespace = namespace_file.read_text().strip() if namespace_file.is_file() else "default"
    return Credentials(
        server=f"https://{host}:{port}",
        ssl_context=context,
        authorization=_bearer(token.read()),
        default_namespace=namespace,
        token_file=token,
    )


def _from_kubeconfig(path: Path, context_name: str | None) -> Credentials:
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except OSError as error:
        raise ConfigError(f"cannot read kubeconfig {path}: {error.strerror or error}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"kubeconfig {path} is not valid YAML: {error}") from error
    if not isinstance(doc, dict):
        raise ConfigError(f"kubeconfig {path} is not a mapping")
    name = context_name or doc.get("current-context")
    if not name:
        raise ConfigError(f"kubeconfig {path} has no current-context; pass a context")
    context = _named(doc, "contexts", "context", str(name), path)
    cluster = _named(doc, "clusters", "cluster", str(context.get("cluster") or ""), path)
    user_name = str(context.get("user") or "")
    user = _named(doc, "users", "user", user_name, path) if user_name else {}
    base = path.parent
    server = str(cluster.get("server") or "").rstrip("/")
    if not server:
        raise ConfigError(f"cluster {context.get('cluster')!r} in {path} has no server")

    ssl_context = ssl.create_default_context()
    if cluster.get("insecure-skip-tls-verify"):
        ssl_context.check_hostname = False
        ssl_context.verify_mode = ssl.CERT_NONE
    else:
        ca = _pem(cluster, "certificate-authority", base)
        if ca is not None:
            ssl_context = ssl.create_default_context(cadata=ca.decode())

    token: str | None = None
    token_file: TokenFile | None = None
    cert, key = _pem(user, "client-certificate", base), _pem(user, "client-key", base)
    if user.get("token"):
        token = str(user["token"])
    elif user.get("tokenFile"):
        token_file = TokenFile(_resolve(base, str(user["tokenFile"])))
        token = token_file.read()
    elif isinstance(user.get("exec"), dict):
        status = _run_exec_plugin(user["exec"], user_name, base)
        if status.get("token"):
            token = str(status["token"])
        elif status.get("clientCertificateData") and status.get("clientKeyData"):
            cert = str(status["clientCertificateData"]).encode()
            key = str(status["clientKeyData"]).encode()
        else:
            raise ConfigError(f"exec plugin of user {user_name!r} returned no credential")
    if cert is not None and key is not None:
        _load_cert_chain(ssl_context, cert, key)
    return Credentials(
        server=server,
        ssl_context=ssl_context,
        authorization=None if token is None else _bearer(token),
        default_namespace=str(context.get("namespace") or "default"),
        client_certificate=token is None and cert is not None and key is not None,
        user=user_name,
        token_file=token_file,
    )


def _named(doc: Mapping[str, Any], section: str, key: str, name: str, path: Path) -> Any:
    for entry in doc.get(section) or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            value = entry.get(key) or {}
            if not isinstance(value, dict):
                raise ConfigError(f"{key} {name!r} in kubeconfig {path} is not a mapping")
            return value
    raise ConfigError(f"kubeconfig {path} has no {key} named {name!r}")


def _resolve(base: Path, name: str) -> Path:
    p = Path(name).expanduser()
    return p if p.is_absolute() else base / p


def _pem(entry: Mapping[str, Any], field: str, base: Path) -> bytes | None:
    """``<field>-data`` (base64) or ``<field>`` (a file) of a kubeconfig entry."""
    if entry.get(f"{field}-data"):
        return base64.b64decode(str(entry[f"{field}-data"]))
    if entry.get(field):
        return _resolve(base, str(entry[field])).read_bytes()
    return None


def _load_cert_chain(context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    # ssl only loads a chain from files: a private directory, removed at once.
    with tempfile.TemporaryDirectory(prefix="kubesandbox-cred-") as tmp:
        cert_file, key_file = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        for file, data in ((cert_file, cert), (key_file, key)):
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        context.load_cert_chain(str(cert_file), str(key_file))


def _run_exec_plugin(spec: Mapping[str, Any], user: str, base: Path) -> dict[str, Any]:
    command = str(spec.get("command") or "")
    if not command:
        raise ConfigError(f"exec plugin of user {user!r} has no command")
    if "/" in command and not Path(command).is_absolute():
        command = str(base / command)
    api_version = str(spec.get("apiVersion") or "client.authentication.k8s.io/v1")
    env = dict(os.environ)
    for item in spec.get("env") or []:
        env[str(item["name"])] = str(item["value"])
    env["KUBERNETES_EXEC_INFO"] = json.dumps(
        {
            "apiVersion": api_version,
            "kind": "ExecCredential",
            "spec": {"interactive": False},
        }
    )
    try:
        done = subprocess.run(
            [command, *[str(a) for a in spec.get("args") or []]],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            check=False,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ConfigError(f"exec plugin {command!r} of user {user!r} failed: {error}") from error
    if done.returncode != 0:
        raise ConfigError(
            f"exec plugin {command!r} of user {user!r} exited with status {done.returncode}"
        )
    try:
        status = json.loads(done.stdout).get("status") or {}
    except (ValueError, AttributeError) as error:
        raise ConfigError(f"exec plugin {command!r} printed no ExecCredential JSON") from error
    if not isinstance(status, dict):
        raise ConfigError(f"exec plugin {command!r} printed an ExecCredential without status")
    return status


def _bearer(token: str) -> str:
    return token if token.lower().startswith("bearer ") else f"Bearer {token}"
