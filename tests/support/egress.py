"""The egress test kit (issue #12): a Debian guest image with curl, and test hosts that record
what they receive.

* :func:`guest_image` pushes ``kubesandbox-test/egress-guest:<key>`` to a test registry and
  returns its reference: ``debian:bookworm-slim`` (the devenv's debootstrap stand-in,
  ``kubesandbox_devenv.images``) plus :data:`GUEST_PACKAGES`, built with buildah once per
  recipe and kept as an OCI archive under ``~/.cache/kubesandbox/test-images`` (the key
  hashes the stand-in's version key, the package list and the install command).
* :func:`egress_hosts` starts test hosts in network namespaces on public TEST-NET addresses
  (allocated, so concurrent test processes do not collide), each serving HTTP on 80 and
  HTTPS on 443 with a certificate for its name and address from a test CA
  (:attr:`EgressHosts.ca_pem`: what the node agent is told to trust upstream), and a UDP/443
  listener; every request (method, path, query, headers, body, SNI) and datagram is recorded
  (tests/support/egresshost.py runs the servers). A DNS server on a private address answers
  the hosts' names (:attr:`EgressHosts.dns`: the node agent's upstream resolver, so the
  per-sandbox resolver serves them to guests).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kubesandbox_devenv.binaries import cache_dir
from kubesandbox_devenv.certs import Authority, CertPair
from kubesandbox_devenv.images import DEBIAN_IMAGE, Buildah, ensure_debian_standin
from tests.support.testnet import (
    ROOT,
    Host,
    host_namespace,
    remove_host,
    remove_namespace,
    start_dns_host,
)

GUEST_PACKAGES = ("curl", "netcat-openbsd", "ca-certificates", "python3")
GUEST_REPOSITORY = "kubesandbox-test/egress-guest"
GUEST_FORMAT = 1
"""Bump to rebuild the guest image everywhere (a change in how it is made)."""
GUEST_INSTALL = (
    "apt-get update && apt-get install -y --no-install-recommends {packages}"
    " && rm -rf /var/lib/apt/lists/*"
)
GUEST_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TEST_NETS = ("203.0.113", "198.51.100")
"""TEST-NET-3 and TEST-NET-2 (RFC 5737): public addresses that are never anyone's. Not
TEST-NET-1 (192.0.2.0/24) by default: some machines (this one) sit on it."""
DNS_NET = "192.168.254"
"""Where the test zone's DNS server lives: a private address, like a cluster's resolver."""
T = TypeVar("T")
_LINKS = itertools.count(100)
"""Veth indices for ``host_link``; the older network tests use fixed ones below 100."""


# --- the guest image -----------------------------------------------------------------------------


def guest_key(debian_key: str) -> str:
    recipe = [GUEST_FORMAT, debian_key, GUEST_PACKAGES, GUEST_INSTALL, GUEST_PATH]
    return hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:16]


def guest_archive(buildah: Buildah | None = None) -> tuple[Path, str]:
    """The guest image as an OCI archive in the test-image cache and its key; built on a miss.

    One squashed layer: the stand-in's debootstrapped ``/dev`` holds device nodes (the official
    image's is empty), which the node agent refuses in a layer, so they are deleted through
    the container's mount (never inside a RUN step, whose ``/dev`` is the host's) and the
    whiteouts squashed away."""
    buildah = buildah or Buildah()
    cache = cache_dir() / "test-images"
    with buildah.locked():
        key = guest_key(ensure_debian_standin(buildah))
        archive = cache / f"egress-guest-{key}.oci.tar"
        if archive.is_file():
            return archive, key
        cache.mkdir(parents=True, exist_ok=True)
        local = f"localhost/{GUEST_REPOSITORY}:{key}"
        container = buildah("from", "--pull=never", DEBIAN_IMAGE, what="from debian").strip()
        try:
            install = GUEST_INSTALL.format(packages=" ".join(GUEST_PACKAGES))
            buildah("run", "--isolation=chroot", container, "--", "sh", "-c", install,
                    what="installing the egress guest's packages")  # fmt: skip
            buildah("config", "--env", GUEST_PATH, "--cmd", "bash", container, what="config")
            root = Path(buildah("mount", container, what="mounting the guest image").strip())
            for entry in (root / "dev").iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            buildah("umount", container, what="unmounting the guest image")
            buildah("commit", "--squash", container, local, what="committing the guest image")
        finally:
            buildah("rm", container, what="removing the build container")
        with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as tmp:
            partial = Path(tmp) / "image.oci.tar"
            buildah("push", local, f"oci-archive:{partial}:{key}",
                    what="exporting the egress guest image")  # fmt: skip
            os.replace(partial, archive)
        return archive, key


def guest_image(registry_host: str) -> str:
    """Push the guest image to the plain-HTTP registry ``host:port``; returns its reference."""
    archive, key = guest_archive()
    ref = f"{registry_host}/{GUEST_REPOSITORY}:{key}"
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
         f"oci-archive:{archive}:{key}", f"docker://{ref}"],
        check=True, capture_output=True, stdin=subprocess.DEVNULL,
        env={**os.environ, "HOME": os.environ.get("HOME", "/root")},
    )  # fmt: skip
    return ref


# --- where a value must never be --------------------------------------------------------------


def file_holds(path: Path, needle: bytes, chunk: int = 4 << 20) -> bool:
    """Whether ``needle`` is in the file (read in pieces: disks are large and sparse)."""
    tail = b""
    with path.open("rb") as handle:
        while piece := handle.read(chunk):
            if needle in tail + piece:
                return True
            tail = piece[-len(needle) :]
    return False


def files_holding(root: Path, values: list[str]) -> list[Path]:
    """Every regular file under ``root`` that holds one of ``values``."""
    found = []
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder, name)
            if path.is_file() and any(file_holds(path, v.encode()) for v in values):
                found.append(path)
    return found


# --- the test CA ---------------------------------------------------------------------------------


class TestCA:
    """A CA of its own for the test hosts' certificates (files in ``folder``)."""

    __test__ = False  # not a pytest test class

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.authority = Authority.create("kubesandbox egress test CA")
        self.pair = self.authority.save(CertPair(folder / "ca.pem", folder / "ca-key.pem"))

    @property
    def pem(self) -> Path:
        """The CA certificate (PEM): what the node agent trusts upstream, or a guest's curl."""
        return self.pair.cert

    def server(self, name: str, dns_names: Sequence[str], ips: Sequence[str]) -> CertPair:
        pair = CertPair(self.folder / f"{name}.pem", self.folder / f"{name}-key.pem")
        return self.authority.issue(pair, name, dns_names=dns_names, ip_addresses=ips, server=True)


# --- what a test host received -------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One HTTP request as the test host parsed it. Text fields hold the bytes one to one
    (latin-1), so ``value in request.body`` works for any byte string sent."""

    scheme: str
    """``http`` (port 80) or ``https`` (port 443)."""
    sni: str | None
    method: str
    target: str
    """The request target as sent (path and query)."""
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: str
    peer: str
    time: float

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)

    @property
    def host(self) -> str | None:
        return self.header("Host")

    def carries(self, text: str) -> bool:
        """Whether ``text`` appears anywhere in the request (target, headers or body)."""
        fields = [self.target, self.body, *(f"{k}: {v}" for k, v in self.headers)]
        return any(text in field for field in fields)


@dataclass(frozen=True)
class Datagram:
    port: int
    peer: str
    length: int
    head: bytes
    """The first 64 bytes."""
    time: float


@dataclass(frozen=True)
class TlsFailure:
    """A TLS handshake the host refused or lost (its SNI, when the ClientHello had one)."""

    sni: str | None
    peer: str
    error: str


class TestHost:
    """A host on a TEST-NET address with the name ``name`` in the test zone."""

    __test__ = False

    def __init__(self, name: str, address: str, ns: str, records: Path, link: int) -> None:
        self.name, self.address, self.ns, self.records = name, address, ns, records
        self.link = link
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, path: str = "/", scheme: str = "http") -> str:
        return f"{scheme}://{self.name}{path}"

    def _records(self) -> list[dict[str, Any]]:
        try:
            text = self.records.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.endswith("}")]

    def requests(self) -> list[Request]:
        return [
            Request(r["scheme"], r["sni"], r["method"], r["target"], r["path"], r["query"],
                    tuple((k, v) for k, v in r["headers"]), r["body"], r["peer"], r["time"])
            for r in self._records() if r["kind"] == "http"
        ]  # fmt: skip

    def datagrams(self) -> list[Datagram]:
        return [
            Datagram(r["port"], r["peer"], r["length"], bytes.fromhex(r["head"]), r["time"])
            for r in self._records()
            if r["kind"] == "udp"
        ]

    def tls_failures(self) -> list[TlsFailure]:
        return [
            TlsFailure(r["sni"], r["peer"], r["error"])
            for r in self._records()
            if r["kind"] == "tls-error"
        ]

    def carries(self, text: str) -> bool:
        """Whether ``text`` reached this host at all: in any request, datagram or ClientHello."""
        raw = self.records.read_bytes() if self.records.exists() else b""
        encoded = json.dumps(text)[1:-1].encode()  # as it appears inside a JSON string
        hexed = text.encode().hex().encode()
        return (
            any(req.carries(text) for req in self.requests())
            or encoded in raw
            or (len(text) >= 4 and hexed in raw)
        )

    def wait_for(
        self, predicate: Callable[[Request], bool] = lambda _: True, timeout: float = 30.0
    ) -> Request:
        """The first recorded request ``predicate`` accepts, waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            for request in self.requests():
                if predicate(request):
                    return request
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} received no such request in {timeout}s: "
                                     f"{[r.target for r in self.requests()]}")  # fmt: skip
            time.sleep(0.05)  # the host appends to the file; nothing to wait on but the file

    def clear(self) -> None:
        """Forget what was recorded so far (the servers keep appending to the same file)."""
        with self.records.open("r+") as handle:
            handle.truncate(0)


@dataclass
class EgressHosts:
    hosts: dict[str, TestHost]
    """By name."""
    dns: str
    """The test zone's DNS server: pass it as the node agent's upstream resolver."""
    ca: TestCA
    zone: dict[str, list[str]]

    def __getitem__(self, name: str) -> TestHost:
        return self.hosts[name]

    @property
    def ca_pem(self) -> Path:
        return self.ca.pem


def _allocate(net: str, make: Callable[[str], T]) -> tuple[str, T]:
    """An address of ``net`` (a /24 prefix) that no other test routes yet, and what ``make``
    returned for it; the host's ``ip route add`` is what claims it."""
    start = os.getpid() % 150
    for step in range(150):
        address = f"{net}.{100 + (start + step) % 150}"
        try:
            return address, make(address)
        except RuntimeError as error:
            if "File exists" not in str(error):
                raise
    raise RuntimeError(f"no free address in {net}.100-249")


def _wait_listening(address: str, ports: Sequence[int], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            try:
                with socket.create_connection((address, port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # the server starts in its namespace


def _namespace(label: str, link: int, address: str) -> str:
    return host_namespace(label, address, link)


@contextlib.contextmanager
def egress_hosts(
    names: Sequence[str], *, nets: Sequence[str] = (), ttl: int = 300, ca: TestCA | None = None
) -> Iterator[EgressHosts]:
    """Test hosts called ``names`` (e.g. ``api.egress.test``), on addresses of ``nets`` (one
    TEST-NET /24 prefix per name; by default they take turns), their DNS server and CA (a new
    one, or ``ca``: one the node agent was installed trusting)."""
    folder = Path(tempfile.mkdtemp(prefix="ksb-egress-"))
    ca = ca or TestCA(folder / "ca")
    made: list[TestHost] = []
    dns: tuple[Host, int] | None = None
    try:
        for i, name in enumerate(names):
            net = nets[i] if i < len(nets) else TEST_NETS[i % len(TEST_NETS)]
            link = next(_LINKS)
            label = f"e{link}"
            address, ns = _allocate(net, functools.partial(_namespace, label, link))
            host = TestHost(name, address, ns, folder / f"{name}.jsonl", link)
            made.append(host)
            pair = ca.server(name, [name], [address])
            host.records.touch()
            host.process = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.support.egresshost",
                 address, name, str(pair.cert), str(pair.key), str(host.records)],
                stdin=subprocess.DEVNULL, cwd=ROOT,
            )  # fmt: skip
        for host in made:
            _wait_listening(host.address, (80, 443))
        zone = {host.name: [host.address] for host in made}
        link = next(_LINKS)
        dns_address, dns_host = _allocate(
            DNS_NET, lambda a: start_dns_host(f"e{link}", a, zone, link, ttl)
        )
        dns = (dns_host, link)
        yield EgressHosts({host.name: host for host in made}, dns_address, ca, zone)
    finally:
        if dns is not None:
            remove_host(*dns)
        for host in made:
            if host.process is not None:
                host.process.kill()
                host.process.wait()
            remove_namespace(host.ns, host.link)
        shutil.rmtree(folder, ignore_errors=True)
