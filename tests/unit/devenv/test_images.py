"""devenv/images.py without buildah: the content tag, the slim rules, argument checks."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from kubesandbox_devenv import images

STANDINS = images.Standins(debian_key="d" * 16, rust_key="r" * 16, built=())


def _git_repo(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    return root


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return _git_repo(
        tmp_path / "repo",
        {
            "Dockerfile": "FROM debian:bookworm-slim\n",
            ".gitignore": "/build/\n__pycache__/\n",
            "operator/main.py": "print('operator')\n",
            "guest-agent/Cargo.toml": "[workspace]\n",
            "guest-agent/fuzz/Cargo.toml": "[package]\n",
            "docs/images.md": "# images\n",
        },
    )


def test_the_tag_is_a_stable_hash_of_the_inputs(repo: Path) -> None:
    tag = images.content_tag(STANDINS, repo)
    assert tag.startswith("dev-")
    assert len(tag) == len("dev-") + 12
    assert images.content_tag(STANDINS, repo) == tag
    assert images.input_files(repo) == ["Dockerfile", "guest-agent/Cargo.toml", "operator/main.py"]


def _write(name: str, text: str = "x\n") -> Callable[[Path], None]:
    def change(repo: Path) -> None:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)

    return change


def _make_executable(repo: Path) -> None:
    (repo / "Dockerfile").chmod(0o755)


@pytest.mark.parametrize(
    ("change", "changes_the_tag"),
    [
        (_write("operator/main.py", "print('changed')\n"), True),
        (_write("node-agent/new.py"), True),
        (_make_executable, True),
        (_write("guest-agent/fuzz/Cargo.toml"), False),
        (_write("docs/images.md"), False),
        (_write("operator/__pycache__/main.cpython-311.pyc"), False),
        (_write("tests/test_x.py"), False),
    ],
    ids=["content", "untracked-file", "mode", "fuzz", "docs", "ignored", "tests"],
)
def test_only_what_the_dockerfile_copies_changes_the_tag(
    repo: Path, change: Callable[[Path], None], changes_the_tag: bool
) -> None:
    before = images.content_tag(STANDINS, repo)
    change(repo)
    assert (images.content_tag(STANDINS, repo) != before) is changes_the_tag


def test_new_base_image_stand_ins_change_the_tag(repo: Path) -> None:
    other = images.Standins(debian_key="e" * 16, rust_key="r" * 16, built=())
    assert images.content_tag(other, repo) != images.content_tag(STANDINS, repo)


def test_slim_leaves_out_docs_man_pages_and_locales_as_the_official_image_does(
    tmp_path: Path,
) -> None:
    root = tmp_path / "rootfs"
    for name in (
        "usr/share/doc/bash/copyright",
        "usr/share/doc/bash/changelog.gz",
        "usr/share/man/man1/bash.1.gz",
        "usr/share/info/dir",
        "usr/share/locale/de/LC_MESSAGES/bash.mo",
        "usr/share/locale/locale.alias",
        "var/lib/apt/lists/deb.debian.org_Packages",
        "var/cache/apt/archives/bash.deb",
        "etc/resolv.conf",
        "etc/hostname",
        "etc/apt/sources.list",
    ):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x")
    for folder in ("etc/apt/apt.conf.d", "etc/apt/sources.list.d", "etc/dpkg/dpkg.cfg.d"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    images.slim(root)
    left = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert left == sorted(
        [
            "usr/share/doc/bash/copyright",
            "usr/share/locale/locale.alias",
            "etc/dpkg/dpkg.cfg.d/docker",
            "etc/apt/sources.list.d/debian.sources",
            *(f"etc/apt/apt.conf.d/{name}" for name in images.APT_CONF),
        ]
    )
    assert "path-exclude /usr/share/man/*" in (root / "etc/dpkg/dpkg.cfg.d/docker").read_text()
    sources = (root / "etc/apt/sources.list.d/debian.sources").read_text()
    assert "bookworm-security" in sources


@pytest.mark.parametrize("registry", ["http://127.0.0.1:5000", "127.0.0.1:5000/x", "", "a b"])
def test_a_registry_that_is_not_host_port_is_refused_by_name(registry: str) -> None:
    with pytest.raises(images.ImageBuildError, match="registry must be host:port"):
        images.build_images(registry)


def test_a_missing_rust_toolchain_is_named_with_what_was_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUSTUP_HOME", str(tmp_path))
    with pytest.raises(images.ImageBuildError, match=r"rust:1\.95-bookworm .*found: none"):
        images.rust_toolchain("1.95")


def test_a_registry_that_does_not_answer_is_refused_before_any_build() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(images.ImageBuildError, match=f"127.0.0.1:{port} does not answer"):
        images.build_images(f"127.0.0.1:{port}")
