"""OCI images built by tests, and a real registry (Debian's ``docker-registry``) on loopback.

Images are written as OCI image layouts by our own small builder (layer tars made entry by
entry, so tests control whiteouts, opaque directories, hard links, odd modes and outright
hostile entries), then pushed with ``skopeo`` — a third party that checks our images are
well-formed. ``Registry`` runs ``docker-registry`` on 127.0.0.1 with a free port, with or
without htpasswd authentication; the storage and operator suites use it too.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import ssl
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
BUSYBOX = Path("/bin/busybox")
BUSYBOX_APPLETS = ("sh", "ls", "cat", "echo", "id", "stat", "find", "readlink", "test")

# --- layer tars -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TarEntry:
    info: tarfile.TarInfo
    data: bytes = b""


def _info(path: str, kind: bytes, mode: int, uid: int = 0, gid: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.mtime = 1_700_000_000
    return info


def file(path: str, data: bytes | str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> TarEntry:
    raw = data.encode() if isinstance(data, str) else data
    info = _info(path, tarfile.REGTYPE, mode, uid, gid)
    info.size = len(raw)
    return TarEntry(info, raw)


def directory(path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> TarEntry:
    return TarEntry(_info(path, tarfile.DIRTYPE, mode, uid, gid))


def symlink(path: str, target: str) -> TarEntry:
    info = _info(path, tarfile.SYMTYPE, 0o777)
    info.linkname = target
    return TarEntry(info)


def hardlink(path: str, target: str) -> TarEntry:
    info = _info(path, tarfile.LNKTYPE, 0o644)
    info.linkname = target
    return TarEntry(info)


def chardev(path: str, major: int = 1, minor: int = 3) -> TarEntry:
    info = _info(path, tarfile.CHRTYPE, 0o666)
    info.devmajor, info.devminor = major, minor
    return TarEntry(info)


def whiteout(path: str) -> TarEntry:
    head, _, name = path.rpartition("/")
    return file(f"{head}/.wh.{name}" if head else f".wh.{name}", b"", 0o600)


def opaque(path: str) -> TarEntry:
    return file(f"{path.rstrip('/')}/.wh..wh..opq", b"", 0o600)


def layer_tar(entries: Iterable[TarEntry]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for entry in entries:
            archive.addfile(entry.info, io.BytesIO(entry.data) if entry.data else None)
    return buffer.getvalue()


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def busybox_entries() -> list[TarEntry]:
    entries = [directory("bin"), directory("etc"), directory("tmp", 0o1777)]
    entries.append(file("bin/busybox", BUSYBOX.read_bytes(), 0o755))
    entries += [symlink(f"bin/{applet}", "busybox") for applet in BUSYBOX_APPLETS]
    entries.append(file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"))
    entries.append(file("etc/hosts", "127.0.0.1 localhost\n"))
    return entries


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- images and layouts -----------------------------------------------------------------------


@dataclass
class BuiltImage:
    manifest: bytes
    config: bytes
    layers: list[bytes]
    """Blobs as stored (compressed when built so)."""
    diff_ids: list[str]

    @property
    def digest(self) -> str:
        return digest(self.manifest)

    def blobs(self) -> dict[str, bytes]:
        found = {digest(self.config): self.config}
        found.update({digest(layer): layer for layer in self.layers})
        return found


def build_image(
    layers: Sequence[bytes],
    *,
    compress: bool = True,
    architecture: str = "amd64",
    env: Sequence[str] = ("PATH=/bin",),
    label: str = "",
) -> BuiltImage:
    blobs = [gzipped(tar) if compress else tar for tar in layers]
    diff_ids = [digest(tar) for tar in layers]
    config = json.dumps(
        {
            "architecture": architecture,
            "os": "linux",
            "config": {"Env": list(env), "Cmd": ["/bin/sh"], "Labels": {"t": label}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        },
        sort_keys=True,
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": digest(config), "size": len(config)},
            "layers": [
                {
                    "mediaType": LAYER_GZIP if compress else LAYER_TAR,
                    "digest": digest(blob),
                    "size": len(blob),
                }
                for blob in blobs
            ],
        },
        sort_keys=True,
    ).encode()
    return BuiltImage(manifest, config, blobs, diff_ids)


@dataclass
class Layout:
    """An OCI image layout directory (what ``skopeo copy oci:DIR:TAG`` reads)."""

    path: Path
    tags: dict[str, dict[str, Any]] = field(default_factory=dict)

    def _blob(self, data: bytes) -> str:
        found = digest(data)
        target = self.path / "blobs" / "sha256" / found.split(":", 1)[1]
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.write_bytes(data)
        return found

    def add_image(self, tag: str, image: BuiltImage) -> None:
        for blob in image.blobs().values():
            self._blob(blob)
        self._blob(image.manifest)
        self.tags[tag] = self._descriptor(OCI_MANIFEST, image.manifest, tag)
        self._write_index()

    def add_index(self, tag: str, platforms: Sequence[tuple[str, str, BuiltImage]]) -> str:
        for _, _, image in platforms:
            for blob in image.blobs().values():
                self._blob(blob)
            self._blob(image.manifest)
        index = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [
                    {
                        "mediaType": OCI_MANIFEST,
                        "digest": image.digest,
                        "size": len(image.manifest),
                        "platform": {"os": os_name, "architecture": arch},
                    }
                    for os_name, arch, image in platforms
                ],
            },
            sort_keys=True,
        ).encode()
        self._blob(index)
        self.tags[tag] = self._descriptor(OCI_INDEX, index, tag)
        self._write_index()
        return digest(index)

    def _descriptor(self, media_type: str, data: bytes, tag: str) -> dict[str, Any]:
        return {
            "mediaType": media_type,
            "digest": digest(data),
            "size": len(data),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }

    def _write_index(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        index = {"schemaVersion": 2, "manifests": list(self.tags.values())}
        (self.path / "index.json").write_text(json.dumps(index))


# --- the registry -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Registry:
    """``docker-registry`` on 127.0.0.1; ``auth=(user, password)`` turns on htpasswd."""

    def __init__(
        self,
        workdir: Path,
        *,
        auth: tuple[str, str] | None = None,
        tls: tuple[Path, Path] | None = None,
        token: TokenAuth | None = None,
    ):
        self.workdir = workdir
        self.auth = auth
        self.tls = tls
        self.token = token
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> Registry:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = [
            "version: 0.1",
            "log: {level: warn}",
            f"storage: {{filesystem: {{rootdirectory: {self.workdir / 'data'}}}, "
            "delete: {enabled: true}}",
        ]
        if self.tls is not None:
            cert, key = self.tls
            config.append(
                f"http: {{addr: '{self.host}', tls: {{certificate: {cert}, key: {key}}}}}"
            )
        else:
            config.append(f"http: {{addr: '{self.host}'}}")
        if self.token is not None:
            config.append(
                f"auth: {{token: {{realm: '{self.token.realm}', service: {self.token.service}, "
                f"issuer: {self.token.issuer}, rootcertbundle: {self.token.cert_file}}}}}"
            )
        elif self.auth is not None:
            htpasswd = self.workdir / "htpasswd"
            result = subprocess.run(
                ["htpasswd", "-Bbn", *self.auth], capture_output=True, check=True
            )
            htpasswd.write_bytes(result.stdout)
            config.append(f"auth: {{htpasswd: {{realm: test, path: {htpasswd}}}}}")
        (self.workdir / "config.yml").write_text("\n".join(config) + "\n")
        with (self.workdir / "registry.log").open("wb") as log:
            self._process = subprocess.Popen(
                ["docker-registry", "serve", str(self.workdir / "config.yml")],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError((self.workdir / "registry.log").read_text())
            try:
                scheme = "https" if self.tls else "http"
                with urllib.request.urlopen(  # noqa: S310 (an http(s) URL we built)
                    f"{scheme}://{self.host}/v2/", timeout=1, context=_unverified()
                ):
                    return
            except urllib.error.HTTPError as exc:
                if exc.code == 401:
                    return
            except (OSError, ssl.SSLError):
                pass
            time.sleep(0.05)  # polling a port that is not listening yet
        raise RuntimeError(f"registry on {self.host} did not answer within {timeout}s")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def push(self, layout: Layout, tag: str, repository: str, dest_tag: str | None = None) -> str:
        """``skopeo copy --all`` a layout's tag to ``repository:dest_tag``; returns the ref."""
        ref = f"{self.host}/{repository}:{dest_tag or tag}"
        command = [
            *("skopeo", "copy", "--all", "--quiet", "--dest-tls-verify=false"),
            "--preserve-digests",
        ]
        credentials = self.auth or (self.token.credentials if self.token else None)
        if credentials is not None:
            command += ["--dest-creds", ":".join(credentials)]
        command += [f"oci:{layout.path}:{tag}", f"docker://{ref}"]
        subprocess.run(command, check=True, capture_output=True, env=_skopeo_env())
        return ref

    def dockerconfigjson(self, password: str | None = None) -> bytes:
        credentials = self.auth or (self.token.credentials if self.token else None)
        assert credentials is not None
        user, real = credentials
        token = base64.b64encode(f"{user}:{password or real}".encode()).decode()
        return json.dumps({"auths": {self.host: {"auth": token}}}).encode()


def _unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _skopeo_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HOME", "/root")
    return env


def require_tools(*tools: str) -> list[str]:
    return [tool for tool in tools if shutil.which(tool) is None]


# --- TLS and the registry token flow ----------------------------------------------------------


@dataclass
class Pki:
    """A test CA and a server certificate for 127.0.0.1 (PEM files in ``folder``)."""

    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def cert(self) -> Path:
        return self.folder / "server.pem"

    @property
    def key(self) -> Path:
        return self.folder / "server-key.pem"

    @classmethod
    def create(cls, folder: Path) -> Pki:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        folder.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubesandbox test CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        pki = cls(folder)
        pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        pki.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pki.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        return pki


class TokenAuth:
    """A registry v2 token service (stdlib HTTP server in a thread) that ``docker-registry``
    trusts: RS256 JWTs whose ``x5c`` certificate is the ``rootcertbundle``."""

    service = "kubesandbox-test-registry"
    issuer = "kubesandbox-test-issuer"

    def __init__(self, folder: Path, credentials: tuple[str, str]):
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        folder.mkdir(parents=True, exist_ok=True)
        self.credentials = credentials
        self.requests = 0
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.issuer)])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_file = folder / "token-signer.pem"
        self.cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        self._x5c = base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()
        self.port = free_port()
        self.realm = f"http://127.0.0.1:{self.port}/token"
        self._server: Any = None

    def start(self) -> TokenAuth:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                status, body = outer.answer(self.path, self.headers.get("Authorization", ""))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def answer(self, path: str, authorization: str) -> tuple[int, bytes]:
        from urllib.parse import parse_qs, urlsplit

        expected = "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
        if authorization != expected:
            return 401, b'{"details": "bad credentials"}'
        query = parse_qs(urlsplit(path).query)
        access = []
        for scope in query.get("scope", []):
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        return 200, json.dumps({"token": self._jwt(access)}).encode()

    def _jwt(self, access: list[dict[str, Any]]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        claims = {
            "iss": self.issuer,
            "sub": self.credentials[0],
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": os.urandom(8).hex(),
            "access": access,
        }
        signing_input = f"{_b64url(header)}.{_b64url(claims)}".encode()
        signature = self._key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        encoded = base64.urlsafe_b64encode(signature).rstrip(b"=").decode()
        return f"{signing_input.decode()}.{encoded}"


def _b64url(document: dict[str, Any]) -> str:
    raw = json.dumps(document, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
