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
import subprocess
import tarfile
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

    def __init__(self, workdir: Path, *, auth: tuple[str, str] | None = None):
        self.workdir = workdir
        self.auth = auth
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
            f"http: {{addr: '{self.host}'}}",
        ]
        if self.auth is not None:
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
                with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1):
                    return
            except urllib.error.HTTPError as exc:
                if exc.code == 401:
                    return
            except OSError:
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
        if self.auth is not None:
            command += ["--dest-creds", ":".join(self.auth)]
        command += [f"oci:{layout.path}:{tag}", f"docker://{ref}"]
        subprocess.run(command, check=True, capture_output=True, env=_skopeo_env())
        return ref

    def dockerconfigjson(self) -> bytes:
        assert self.auth is not None
        token = base64.b64encode(":".join(self.auth).encode()).decode()
        return json.dumps({"auths": {self.host: {"auth": token}}}).encode()


def _skopeo_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HOME", "/root")
    return env


def require_tools(*tools: str) -> list[str]:
    return [tool for tool in tools if shutil.which(tool) is None]
