"""The project's container images, built here from the root ``Dockerfile`` with buildah.

``build_images(registry)`` builds the two targets of the Dockerfile (``node-agent`` and
``controller``), tags them ``<registry>/<target>:dev-<12 hex>`` where the hex is a content hash
of the build inputs (the Dockerfile, ``.dockerignore`` and every file of the trees it copies, as
``git ls-files`` lists them, read from the work tree), and pushes them to ``registry`` (a plain
HTTP ``host:port``). An unchanged tree is neither rebuilt nor pushed again; a changed one is
rebuilt with buildah's layer cache (``--layers``), so only the layers after the first changed
input run. See docs/images.md.

No container registry is reachable from these machines, so the public base images the
Dockerfile names are built here first as local stand-ins with the same names (cached by a
version key, see :func:`ensure_standins`):

* ``docker.io/library/debian:bookworm-slim``: ``debootstrap --variant=minbase bookworm``, slimmed
  as the official image is (no docs, man pages, locales; dpkg excludes them for later installs),
  imported with ``buildah build`` from a ``FROM scratch`` + ``ADD rootfs.tar /`` Containerfile;
* ``docker.io/library/rust:<minor>-bookworm``: that Debian plus build-essential and the installed
  Rust toolchain of the same version (rustc, cargo, rust-std: rustup's minimal profile) at the
  official image's paths (``RUSTUP_HOME=/usr/local/rustup``, ``CARGO_HOME=/usr/local/cargo``).

buildah keeps its storage under ``$KUBESANDBOX_CACHE/buildah/<driver>/`` (its run-time state on
``/run``): the overlay driver when the kernel mounts overlayfs here (it does on ext4), else vfs.
RUN steps use chroot isolation: no nested container runtime, and the host's network for Debian,
PyPI and crates.io. A file lock serialises builds that share the storage.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kubesandbox_devenv.binaries import REPO_ROOT, cache_dir

DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_IMAGE = "docker.io/library/debian:bookworm-slim"
RUST_MINOR = "1.95"
RUST_IMAGE = f"docker.io/library/rust:{RUST_MINOR}-bookworm"
LOCAL_PREFIX = "localhost/kubesandbox"
"""Every build is tagged ``localhost/kubesandbox/<target>:<tag>`` too: the cache is per tree,
not per registry, so a new registry (a test's) only costs a tag and a push."""
TARGETS = ("node-agent", "controller")
"""The Dockerfile's final targets; each becomes ``<registry>/<target>:<tag>``."""
BUILD_INPUTS = (
    "Dockerfile",
    ".dockerignore",
    "pyproject.toml",
    "setup.py",
    "README.md",
    "api",
    "cli",
    "common",
    "gateway",
    "kube",
    "node-agent",
    "operator",
    "protocol",
    "guest-agent",
)
"""What the Dockerfile copies (plus itself and .dockerignore): the content hash covers these."""
NOT_INPUTS = ("guest-agent/fuzz/",)
"""Under BUILD_INPUTS but excluded by .dockerignore, so not part of the hash either."""
LOCAL_CAS = Path("/usr/local/share/ca-certificates")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CA_BUILD_ARGS = ("CARGO_HTTP_CAINFO", "PIP_CERT")
STANDIN_FORMAT = 1
"""Bump to rebuild the stand-ins everywhere (a change in how they are made)."""
RUST_COMPONENTS = ("rustc", "cargo", "rust-std")
RUST_PACKAGES = ("build-essential", "ca-certificates", "pkg-config", "git", "curl")
"""What the stand-in adds to Debian; the official image (buildpack-deps) has these and more."""

# The official slim image's dpkg excludes (so later `apt-get install`s skip docs too) and the
# files they match in the debootstrapped tree, deleted before the import.
SLIM_DPKG_EXCLUDES = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
"""
APT_CONF = {
    "docker-clean": (
        'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb '
        '/var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n'
        'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb '
        '/var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n'
        'Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";\n'
    ),
    "docker-no-languages": 'Acquire::Languages "none";\n',
    "docker-gzip-indexes": 'Acquire::GzipIndexes "true";\n',
    "docker-autoremove-suggests": 'Apt::AutoRemove::SuggestsImportant "false";\n',
}
DEBIAN_SOURCES = f"""\
Types: deb
URIs: {DEBIAN_MIRROR}
Suites: {DEBIAN_SUITE} {DEBIAN_SUITE}-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: {DEBIAN_SUITE}-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
RUST_CONTAINERFILE = """\
FROM {debian}
ENV RUSTUP_HOME=/usr/local/rustup \\
    CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    RUST_VERSION={version}
RUN apt-get update \\
    && apt-get install -y --no-install-recommends {packages} \\
    && rm -rf /var/lib/apt/lists/*
COPY toolchain/ /usr/local/rustup/toolchains/{toolchain}/
RUN mkdir -p /usr/local/cargo/bin \\
    && for tool in cargo rustc rustdoc; do \\
         ln -s /usr/local/rustup/toolchains/{toolchain}/bin/$tool /usr/local/cargo/bin/$tool; \\
       done \\
    && chmod -R a+w "$RUSTUP_HOME" "$CARGO_HOME" \\
    && rustc --version && cargo --version
"""


class ImageBuildError(RuntimeError):
    """A step of the image build failed; the message names the step and its output."""


@dataclass(frozen=True)
class Image:
    ref: str
    """``<registry>/<target>:<tag>``"""
    target: str
    image_id: str
    size: int
    """Uncompressed: the sum of the layer tars, what the image takes unpacked."""
    pushed_size: int
    """Compressed: config plus layer blobs as the registry stores them (what a node pulls)."""


@dataclass(frozen=True)
class Images:
    node_agent: Image
    controller: Image
    registry: str
    tag: str
    built: tuple[str, ...]
    """The targets this call built (empty when the tag was already there)."""
    pushed: tuple[str, ...]
    seconds: float

    def describe(self) -> str:
        lines = [f"images {self.tag} in {self.seconds:.1f}s"]
        for image in (self.node_agent, self.controller):
            state = "built" if image.target in self.built else "cached"
            state += ", pushed" if image.target in self.pushed else ", in the registry"
            lines.append(
                f"  {image.ref}  {_mb(image.size)} unpacked, {_mb(image.pushed_size)} pushed"
                f" ({state})"
            )
        return "\n".join(lines)


def _mb(size: int) -> str:
    return f"{size / 1e6:.0f} MB"


# --- buildah with its own storage -------------------------------------------------------------


def _run(argv: Sequence[str], *, what: str, cwd: Path | None = None) -> str:
    result = subprocess.run(
        list(argv), cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-25:])
        raise ImageBuildError(f"{what} failed (exit {result.returncode}): {' '.join(argv)}\n{tail}")
    return result.stdout


def overlay_works(scratch: Path) -> bool:
    """Whether the kernel mounts overlayfs over directories of this filesystem."""
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix=".overlay-probe-") as tmp:
        parts = {name: Path(tmp) / name for name in ("lower", "upper", "work", "merged")}
        for part in parts.values():
            part.mkdir()
        options = f"lowerdir={parts['lower']},upperdir={parts['upper']},workdir={parts['work']}"
        mounted = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(parts["merged"])],
            capture_output=True,
        )
        if mounted.returncode != 0:
            return False
        subprocess.run(["umount", str(parts["merged"])], capture_output=True, check=False)
        return True


def runroot_for(root: Path) -> Path:
    """Where the storage's run-time state goes: on tmpfs (``/run``) so a reboot clears it, as
    containers/storage expects; one per storage root."""
    tag = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    run = Path("/run")
    if os.access(run, os.W_OK):
        return run / "kubesandbox-buildah" / tag
    return root.parent / "run"


class Buildah:
    """The ``buildah`` CLI on a storage of its own under ``$KUBESANDBOX_CACHE/buildah``."""

    def __init__(self, cache: Path | None = None, driver: str | None = None) -> None:
        self.home = (cache or cache_dir()) / "buildah"
        self.driver = (
            driver
            or os.environ.get("KUBESANDBOX_BUILDAH_DRIVER")
            or ("overlay" if overlay_works(self.home) else "vfs")
        )
        self.root = self.home / self.driver / "storage"
        self.runroot = runroot_for(self.root)

    @property
    def global_flags(self) -> list[str]:
        return [
            f"--root={self.root}",
            f"--runroot={self.runroot}",
            f"--storage-driver={self.driver}",
        ]

    def argv(self, *args: str) -> list[str]:
        return ["buildah", *self.global_flags, *args]

    def __call__(self, *args: str, what: str, cwd: Path | None = None) -> str:
        return _run(self.argv(*args), what=what, cwd=cwd)

    def image_id(self, ref: str) -> str | None:
        result = subprocess.run(
            self.argv("inspect", "--type", "image", "--format", "{{.FromImageID}}", ref),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        return result.stdout.strip() or None if result.returncode == 0 else None

    def manifest(self, ref: str) -> dict[str, object]:
        out = self("inspect", "--type", "image", ref, what=f"inspecting {ref}")
        manifest: dict[str, object] = json.loads(json.loads(out)["Manifest"])
        return manifest

    def layers(self, ref: str) -> list[str]:
        """The digests of the image's layers, base first."""
        layers = self.manifest(ref).get("layers")
        assert isinstance(layers, list)
        return [str(layer["digest"]) for layer in layers]

    def size(self, ref: str) -> int:
        """The sum of the image's layer sizes in local storage (uncompressed tars)."""
        return _layers_size(self.manifest(ref))

    @contextmanager
    def locked(self) -> Iterator[None]:
        self.home.mkdir(parents=True, exist_ok=True)
        with (self.home / "lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield


def _layers_size(manifest: dict[str, object]) -> int:
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise ImageBuildError(f"manifest without layers: {str(manifest)[:200]}")
    return sum(int(layer["size"]) for layer in layers)


# --- the stand-ins for the public base images -------------------------------------------------


@dataclass(frozen=True)
class RustToolchain:
    path: Path
    version: str
    """e.g. 1.95.0"""
    host: str
    """e.g. x86_64-unknown-linux-gnu"""

    @property
    def name(self) -> str:
        return f"{self.version}-{self.host}"

    def manifests(self) -> list[Path]:
        rustlib = self.path / "lib" / "rustlib"
        return [rustlib / f"manifest-{component}-{self.host}" for component in RUST_COMPONENTS]

    def files(self) -> list[str]:
        """The files of rustup's minimal profile (rustc, cargo, rust-std), from its manifests."""
        files: list[str] = []
        for manifest in self.manifests():
            for line in manifest.read_text().splitlines():
                kind, _, rel = line.partition(":")
                if kind == "file":
                    files.append(rel)
                elif kind == "dir":
                    root = self.path / rel
                    files += [str(p.relative_to(self.path)) for p in root.rglob("*") if p.is_file()]
        return files


def rust_toolchain(minor: str = RUST_MINOR) -> RustToolchain:
    """The installed rustup toolchain whose rustc is ``<minor>.x`` (stable first)."""
    rustup_home = Path(os.environ.get("RUSTUP_HOME", Path.home() / ".rustup"))
    toolchains = rustup_home / "toolchains"
    candidates = sorted(
        toolchains.glob("*"), key=lambda p: (not p.name.startswith("stable"), p.name)
    )
    seen = []
    for path in candidates:
        rustc = path / "bin" / "rustc"
        if not rustc.is_file():
            continue
        out = subprocess.run([str(rustc), "-vV"], capture_output=True, text=True).stdout
        release = re.search(r"^release: (\S+)$", out, re.M)
        host = re.search(r"^host: (\S+)$", out, re.M)
        if not release or not host:
            continue
        seen.append(f"{path.name} ({release.group(1)})")
        if release.group(1).startswith(minor + ".") and "-" not in release.group(1):
            toolchain = RustToolchain(path.resolve(), release.group(1), host.group(1))
            missing = [m for m in toolchain.manifests() if not m.is_file()]
            if missing:
                raise ImageBuildError(f"the toolchain {path} lacks {missing[0].name}")
            return toolchain
    raise ImageBuildError(
        f"the Dockerfile's builder is rust:{minor}-bookworm but no installed toolchain in "
        f"{toolchains} is Rust {minor} (found: {', '.join(seen) or 'none'}); "
        f"install it or change RUST_MINOR and the Dockerfile together"
    )


def debian_key() -> str:
    recipe = json.dumps(
        [
            STANDIN_FORMAT,
            DEBIAN_SUITE,
            DEBIAN_MIRROR,
            "minbase",
            SLIM_DPKG_EXCLUDES,
            APT_CONF,
            DEBIAN_SOURCES,
        ],
        sort_keys=True,
    )
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def rust_key(toolchain: RustToolchain) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([debian_key(), toolchain.name, RUST_PACKAGES]).encode())
    digest.update(RUST_CONTAINERFILE.encode())
    for manifest in toolchain.manifests():
        digest.update(manifest.read_bytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Standins:
    debian_key: str
    rust_key: str
    built: tuple[str, ...]


def _stamp(buildah: Buildah, ref: str) -> Path:
    return buildah.home / "standins" / (re.sub(r"[^A-Za-z0-9.-]", "_", ref) + ".json")


def _standin_current(buildah: Buildah, ref: str, key: str) -> bool:
    stamp = _stamp(buildah, ref)
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    image_id = buildah.image_id(ref)
    return bool(recorded.get("key") == key and image_id and recorded.get("id") == image_id)


def _record_standin(buildah: Buildah, ref: str, key: str) -> None:
    stamp = _stamp(buildah, ref)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"key": key, "id": buildah.image_id(ref)}) + "\n")


def slim(rootfs: Path) -> None:
    """What the official slim image leaves out, and the apt/dpkg settings it ships."""
    share = rootfs / "usr" / "share"
    for folder in ("man", "groff", "info", "lintian", "linda"):
        for entry in (share / folder).glob("*"):
            _remove(entry)
    for entry in (share / "locale").glob("*"):
        if entry.name != "locale.alias":
            _remove(entry)
    for package_doc in (share / "doc").glob("*"):
        if package_doc.is_dir() and not package_doc.is_symlink():
            for entry in package_doc.iterdir():
                if entry.name != "copyright":
                    _remove(entry)
        else:
            _remove(package_doc)
    (rootfs / "etc" / "dpkg" / "dpkg.cfg.d" / "docker").write_text(SLIM_DPKG_EXCLUDES)
    for name, text in APT_CONF.items():
        (rootfs / "etc" / "apt" / "apt.conf.d" / name).write_text(text)
    (rootfs / "etc" / "apt" / "sources.list").unlink(missing_ok=True)
    (rootfs / "etc" / "apt" / "sources.list.d" / "debian.sources").write_text(DEBIAN_SOURCES)
    for pattern in (
        "var/cache/apt/archives/*.deb",
        "var/cache/apt/*.bin",
        "var/lib/apt/lists/*",
        "var/log/*.log",
        "var/log/apt/*",
        "var/cache/ldconfig/*",
    ):
        for entry in rootfs.glob(pattern):
            _remove(entry)
    # A runtime provides these per container; debootstrap copied the host's.
    for name in ("etc/resolv.conf", "etc/hostname"):
        (rootfs / name).unlink(missing_ok=True)
    (rootfs / "etc" / "machine-id").unlink(missing_ok=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def build_debian_standin(buildah: Buildah, work: Path) -> None:
    rootfs = work / "rootfs"
    debs = buildah.home / "debootstrap-debs"
    debs.mkdir(parents=True, exist_ok=True)
    _run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--cache-dir={debs}",
            DEBIAN_SUITE,
            str(rootfs),
            DEBIAN_MIRROR,
        ],
        what="debootstrap of the debian:bookworm-slim stand-in",
    )
    slim(rootfs)
    context = work / "context"
    context.mkdir()
    _run(
        [
            "tar",
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "-C",
            str(rootfs),
            "-cf",
            str(context / "rootfs.tar"),
            ".",
        ],
        what="packing the debootstrapped root filesystem",
    )
    shutil.rmtree(rootfs)
    (context / "Containerfile").write_text('FROM scratch\nADD rootfs.tar /\nCMD ["bash"]\n')
    buildah(
        "build",
        "--isolation=chroot",
        "--pull=never",
        "-t",
        DEBIAN_IMAGE,
        str(context),
        what="importing the debian:bookworm-slim stand-in",
    )


def build_rust_standin(buildah: Buildah, toolchain: RustToolchain, work: Path) -> None:
    context = work / "context"
    dest = context / "toolchain"
    for rel in toolchain.files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(toolchain.path / rel, target)
        except OSError:
            shutil.copy2(toolchain.path / rel, target)
    (context / "Containerfile").write_text(
        RUST_CONTAINERFILE.format(
            debian=DEBIAN_IMAGE,
            version=toolchain.version,
            toolchain=toolchain.name,
            packages=" ".join(RUST_PACKAGES),
        )
    )
    buildah(
        "build",
        "--isolation=chroot",
        "--pull=never",
        "-t",
        RUST_IMAGE,
        str(context),
        what=f"building the rust:{RUST_MINOR}-bookworm stand-in",
    )


def _ensure_standin(buildah: Buildah, ref: str, key: str, toolchain: RustToolchain | None) -> bool:
    """Build the stand-in ``ref`` unless its stamp records ``key``; True when it was built."""
    if _standin_current(buildah, ref, key):
        return False
    (buildah.home / "work").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=buildah.home / "work") as tmp:
        if toolchain is None:
            build_debian_standin(buildah, Path(tmp))
        else:
            build_rust_standin(buildah, toolchain, Path(tmp))
    _record_standin(buildah, ref, key)
    return True


def ensure_debian_standin(buildah: Buildah) -> str:
    """The ``debian:bookworm-slim`` stand-in alone (test images build on it; call locked);
    returns its version key."""
    key = debian_key()
    _ensure_standin(buildah, DEBIAN_IMAGE, key, None)
    return key


def ensure_standins(buildah: Buildah) -> Standins:
    """The two base-image stand-ins, rebuilt only when their version key changed (call locked)."""
    toolchain = rust_toolchain()
    keys = {DEBIAN_IMAGE: debian_key(), RUST_IMAGE: rust_key(toolchain)}
    built = [
        ref
        for ref, key in keys.items()
        if _ensure_standin(buildah, ref, key, None if ref == DEBIAN_IMAGE else toolchain)
    ]
    return Standins(keys[DEBIAN_IMAGE], keys[RUST_IMAGE], tuple(built))


# --- the project's images ---------------------------------------------------------------------


def input_files(repo: Path = REPO_ROOT) -> list[str]:
    """The build inputs: tracked and untracked-but-not-ignored files under BUILD_INPUTS."""
    out = _run(
        [
            "git",
            "-C",
            str(repo),
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
            "--",
            *BUILD_INPUTS,
        ],
        what="listing the build inputs",
    )
    names = sorted({name for name in out.split("\0") if name})
    return [name for name in names if not name.startswith(NOT_INPUTS) and (repo / name).is_file()]


def content_tag(standins: Standins, repo: Path = REPO_ROOT) -> str:
    """``dev-`` + 12 hex of a hash of the inputs' names, modes and contents and the base keys."""
    digest = hashlib.sha256()
    digest.update(f"standins {standins.debian_key} {standins.rust_key}\n".encode())
    for name in input_files(repo):
        path = repo / name
        executable = "x" if os.access(path, os.X_OK) else "-"
        digest.update(f"{name}\0{executable}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return "dev-" + digest.hexdigest()[:12]


def build_ca_flags(buildah: Buildah) -> list[str]:
    """Trust for the build's downloads when this host trusts CAs of its own (a TLS proxy).

    A copy of the host's bundle is mounted read-only over the empty ``/mnt`` of the RUN steps
    (mounting onto a directory that exists leaves nothing in a layer) and the Dockerfile's
    ``CARGO_HTTP_CAINFO`` and ``PIP_CERT`` build arguments point at it. Hosts without local
    CAs pass nothing and build exactly as anywhere else.
    """
    if not any(LOCAL_CAS.glob("*.crt")) or not HOST_CA_BUNDLE.is_file():
        return []
    folder = buildah.home / "build-ca"
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / HOST_CA_BUNDLE.name
    bundle = HOST_CA_BUNDLE.read_bytes()
    if not copy.is_file() or copy.read_bytes() != bundle:
        copy.write_bytes(bundle)
    flags = ["--volume", f"{folder}:/mnt:ro"]
    for name in CA_BUILD_ARGS:
        flags += ["--build-arg", f"{name}=/mnt/{copy.name}"]
    return flags


def _skopeo_manifest(ref: str) -> dict[str, object] | None:
    """The manifest the registry serves for ``ref``, or None when it has no such tag."""
    result = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        stderr = result.stderr.lower()
        if any(words in stderr for words in ("manifest unknown", "name unknown", "not found")):
            return None
        raise ImageBuildError(f"skopeo inspect {ref} failed: {result.stderr.strip()[-400:]}")
    manifest: dict[str, object] = json.loads(result.stdout)
    return manifest


def check_registry(registry: str) -> None:
    """Fail before building when nothing answers the registry API at ``http://registry/v2/``."""
    try:
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with direct.open(f"http://{registry}/v2/", timeout=10):
            return
    except urllib.error.HTTPError as error:
        if error.code == 401:  # it answers; credentials are buildah's business
            return
        raise ImageBuildError(f"registry {registry}: /v2/ answered {error.code}") from error
    except OSError as error:
        raise ImageBuildError(f"registry {registry} does not answer over HTTP: {error}") from error


def pushed_size(manifest: dict[str, object]) -> int:
    config = manifest.get("config")
    config_size = int(config["size"]) if isinstance(config, dict) else 0
    return config_size + _layers_size(manifest)


def build_images(
    registry: str,
    *,
    force: bool = False,
    cache: Path | None = None,
    repo: Path = REPO_ROOT,
    log: bool = False,
) -> Images:
    """Build (or find) both images for the current tree and push them to ``registry``.

    ``registry`` is ``host:port`` served over plain HTTP. Idempotent: the tag is a content hash,
    a target whose ref is already in the local storage is not rebuilt, and one the registry
    already has is not pushed again. ``force`` rebuilds both without the layer cache and pushes
    them again (the stand-ins keep their own version key). ``log`` prints progress to stderr.
    """
    if not re.fullmatch(r"[A-Za-z0-9.-]+(:[0-9]+)?", registry):
        raise ImageBuildError(f"registry must be host:port, got {registry!r}")
    check_registry(registry)
    started = time.monotonic()
    buildah = Buildah(cache)

    def say(message: str) -> None:
        if log:
            print(
                f"images: {message} ({time.monotonic() - started:.0f}s)",
                file=sys.stderr,
                flush=True,
            )

    with buildah.locked():
        standins = ensure_standins(buildah)
        for ref in standins.built:
            say(f"built the stand-in {ref}")
        tag = content_tag(standins, repo)
        built: list[str] = []
        pushed: list[str] = []
        images: dict[str, Image] = {}
        for target in TARGETS:
            local = f"{LOCAL_PREFIX}/{target}:{tag}"
            ref = f"{registry}/{target}:{tag}"
            if force or buildah.image_id(local) is None:
                say(f"building {local}")
                buildah(
                    "build",
                    "--layers",
                    "--force-rm",
                    "--isolation=chroot",
                    "--pull=never",
                    *(["--no-cache"] if force else []),
                    *build_ca_flags(buildah),
                    "--target",
                    target,
                    "-t",
                    local,
                    "-f",
                    str(repo / "Dockerfile"),
                    str(repo),
                    what=f"buildah build --target {target}",
                )
                built.append(target)
            if buildah.image_id(ref) != buildah.image_id(local):
                buildah("tag", local, ref, what=f"tagging {ref}")
            remote = None if force or target in built else _skopeo_manifest(ref)
            if remote is None:
                say(f"pushing {ref}")
                buildah(
                    "push",
                    "--tls-verify=false",
                    ref,
                    f"docker://{ref}",
                    what=f"pushing {ref}",
                )
                pushed.append(target)
                remote = _skopeo_manifest(ref)
                if remote is None:
                    raise ImageBuildError(f"{ref} was pushed but the registry does not serve it")
            image_id = buildah.image_id(ref)
            assert image_id is not None
            images[target] = Image(
                ref=ref,
                target=target,
                image_id=image_id,
                size=buildah.size(ref),
                pushed_size=pushed_size(remote),
            )
    return Images(
        node_agent=images["node-agent"],
        controller=images["controller"],
        registry=registry,
        tag=tag,
        built=tuple(built),
        pushed=tuple(pushed),
        seconds=time.monotonic() - started,
    )


def default_registry(state_dir: Path) -> str | None:
    """The devenv's registry (``.kubesandbox/registry``), when ``make up`` started one."""
    try:
        return (state_dir / "registry").read_text().strip() or None
    except OSError:
        return None


def main(args: argparse.Namespace, state_dir: Path) -> int:
    """``kubesandbox-devenv images [--registry HOST:PORT] [--force]``."""
    registry = args.registry or default_registry(state_dir)
    if registry is None:
        print(
            f"kubesandbox-devenv images: no --registry given and {state_dir / 'registry'} "
            "does not exist (run `make up` or pass --registry HOST:PORT)",
            file=sys.stderr,
        )
        return 2
    images = build_images(registry, force=args.force, log=True)
    print(images.describe())
    return 0
