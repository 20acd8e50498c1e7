"""Registry credentials: ``kubernetes.io/dockerconfigjson`` content and auth challenges.

The node agent receives the Secrets' ``.dockerconfigjson`` bytes already read from the API (the
storage code has no Kubernetes client); this module turns them into credentials per registry
host, matching host names the way kubelet's credential provider does (scheme, path and Docker
Hub's historical ``index.docker.io/v1/`` key are ignored), and parses ``WWW-Authenticate``
challenges for the registry token flow in ``registry``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from kubesandbox_node.images.errors import AuthError
from kubesandbox_node.images.reference import DOCKER_HUB

_HUB_ALIASES = {"index.docker.io", "registry-1.docker.io", "docker.io"}


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def __repr__(self) -> str:  # never print a password into a log
        return f"Credentials(username={self.username!r}, password=***)"


def normalize_registry(key: str) -> str:
    """``https://index.docker.io/v1/`` → ``docker.io``; ``http://h:5000/x`` → ``h:5000``."""
    host = urlsplit(key).netloc if "://" in key else key.split("/", 1)[0]
    host = host.lower()
    return DOCKER_HUB if host in _HUB_ALIASES else host


class Keychain:
    """Credentials by registry host; the first Secret that names a host wins (kubelet's order)."""

    def __init__(self) -> None:
        self._by_host: dict[str, Credentials] = {}

    def add(self, host: str, credentials: Credentials) -> None:
        self._by_host.setdefault(normalize_registry(host), credentials)

    def lookup(self, registry: str) -> Credentials | None:
        return self._by_host.get(normalize_registry(registry))

    def __len__(self) -> int:
        return len(self._by_host)

    @classmethod
    def from_dockerconfigjsons(cls, secrets: list[tuple[str, bytes]]) -> Keychain:
        """``secrets`` are ``(field, content)`` pairs; ``field`` names the Secret in errors."""
        keychain = cls()
        for field, content in secrets:
            for host, creds in parse_dockerconfigjson(content, field=field).items():
                keychain.add(host, creds)
        return keychain


def parse_dockerconfigjson(content: bytes, *, field: str) -> dict[str, Credentials]:
    try:
        document = json.loads(content)
    except (ValueError, UnicodeDecodeError) as exc:
        raise AuthError(f"not JSON: {exc}", field=field) from None
    if not isinstance(document, dict):
        raise AuthError("expected an object with key 'auths'", field=field)
    auths = document.get("auths", document)  # the legacy .dockercfg shape has no "auths"
    if not isinstance(auths, dict):
        raise AuthError("'auths' must be an object", field=field)
    result: dict[str, Credentials] = {}
    for host, entry in auths.items():
        where = f"{field}.auths[{host!r}]"
        if not isinstance(entry, dict):
            raise AuthError("must be an object", field=where)
        username, password = entry.get("username"), entry.get("password")
        if isinstance(entry.get("auth"), str) and entry["auth"]:
            try:
                decoded = base64.b64decode(entry["auth"], validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise AuthError("'auth' is not base64 of 'user:password'", field=where) from None
            if ":" not in decoded:
                raise AuthError("'auth' is not base64 of 'user:password'", field=where)
            username, password = decoded.split(":", 1)
        if isinstance(entry.get("identitytoken"), str) and entry["identitytoken"]:
            username, password = "<token>", entry["identitytoken"]
        if not isinstance(username, str) or not isinstance(password, str):
            raise AuthError("needs 'auth' or 'username' and 'password'", field=where)
        result[normalize_registry(host)] = Credentials(username, password)
    return result


@dataclass(frozen=True)
class Challenge:
    scheme: str
    """``basic`` or ``bearer`` (lower case)."""
    params: dict[str, str]


_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


def parse_challenge(header: str) -> Challenge:
    """``Bearer realm="https://auth/token",service="reg",scope="repository:a:pull"``."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    for match in _PARAM.finditer(rest):
        quoted, bare = match.group(2), match.group(3)
        value = quoted.replace('\\"', '"') if quoted is not None else bare
        params[match.group(1).lower()] = value
    return Challenge(scheme=scheme.lower(), params=params)
