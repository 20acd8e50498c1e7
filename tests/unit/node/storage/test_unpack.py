from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from kubesandbox_devenv.registry import (
    TarEntry,
    chardev,
    digest,
    directory,
    file,
    gzipped,
    hardlink,
    layer_tar,
    opaque,
    symlink,
    whiteout,
)
from kubesandbox_node.images.errors import LayerError
from kubesandbox_node.images.unpack import OPAQUE_XATTR, UnpackLimits, unpack_layer


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "victim").write_text("untouched")
    target = tmp_path / "cache" / "tree"
    target.mkdir(parents=True)
    return target


def unpack(tmp_path: Path, dest: Path, tar: bytes, **limits: int) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(tar)
    unpack_layer(blob, dest, limits=UnpackLimits(**limits))


def assert_outside_untouched(tmp_path: Path) -> None:
    assert sorted(p.name for p in (tmp_path / "outside").iterdir()) == ["victim"]
    assert (tmp_path / "outside" / "victim").read_text() == "untouched"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob", "cache", "outside"]


def test_regular_tree_keeps_modes_owners_setuid_and_hardlinks(tmp_path: Path, dest: Path) -> None:
    tar = layer_tar(
        [
            directory("usr"),
            directory("usr/bin", 0o755),
            file("usr/bin/tool", "#!/bin/sh\n", 0o4755, uid=0, gid=0),
            file("usr/bin/odd", "x", 0o2711, uid=1000, gid=50),
            hardlink("usr/bin/tool-link", "usr/bin/tool"),
            symlink("usr/bin/abs", "/etc/passwd"),
            symlink("usr/bin/up", "../../../../etc/shadow"),
            directory("srv", 0o700, uid=33, gid=33),
        ]
    )
    unpack(tmp_path, dest, tar)
    tool = (dest / "usr/bin/tool").stat()
    assert stat.S_IMODE(tool.st_mode) == 0o4755
    odd = (dest / "usr/bin/odd").stat()
    assert (stat.S_IMODE(odd.st_mode), odd.st_uid, odd.st_gid) == (0o2711, 1000, 50)
    assert (dest / "usr/bin/tool-link").stat().st_ino == tool.st_ino
    assert os.readlink(dest / "usr/bin/abs") == "/etc/passwd"
    assert os.readlink(dest / "usr/bin/up") == "../../../../etc/shadow"
    srv = (dest / "srv").stat()
    assert (stat.S_IMODE(srv.st_mode), srv.st_uid) == (0o700, 33)
    assert_outside_untouched(tmp_path)


def test_whiteouts_become_overlay_whiteouts_and_opaque_xattrs(tmp_path: Path, dest: Path) -> None:
    tar = layer_tar([directory("etc"), whiteout("etc/motd"), directory("var"), opaque("var")])
    unpack(tmp_path, dest, tar)
    motd = os.stat(dest / "etc/motd", follow_symlinks=False)
    assert stat.S_ISCHR(motd.st_mode)
    assert motd.st_rdev == 0
    assert not (dest / "etc/.wh.motd").exists()
    assert os.getxattr(dest / "var", OPAQUE_XATTR) == b"y"
    assert not (dest / "var/.wh..wh..opq").exists()


def test_diff_id_is_the_uncompressed_digest(tmp_path: Path, dest: Path) -> None:
    tar = layer_tar([file("a", "hello")])
    blob = tmp_path / "blob"
    blob.write_bytes(gzipped(tar))
    stats = unpack_layer(blob, dest)
    assert stats.diff_id == digest(tar)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([file("/etc/passwd", "pwned")], "absolute path"),
        ([file("../outside/victim", "pwned")], "'..' component"),
        ([file("a/../../outside/victim", "pwned")], "'..' component"),
        ([symlink("escape", "../outside"), file("escape/victim", "pwned")], "through a symlink"),
        ([symlink("escape", "/"), file("escape/etc/passwd", "x")], "through a symlink"),
        ([hardlink("link", "../outside/victim")], "'..' component"),
        ([hardlink("link", "nowhere")], "not in this layer"),
        ([symlink("l", "/etc/passwd"), hardlink("h", "l"), file("h", "x")], None),
        ([chardev("dev/mem", 1, 1)], "device nodes"),
        ([file("a", "x"), file("a/b", "y")], "non-directory"),
        ([whiteout("..")], "names no entry"),
        ([directory("d"), hardlink("h", "d")], "hard link to a non-file"),
        ([file("a" * 300, "x")], "longer than 255 bytes"),
        ([file("/".join(["d"] * 2100), "x")], "longer than 4096 bytes"),
        ([file("ok", "x"), whiteout("ok"), hardlink("h", "ok")], "hard link to a non-file"),
    ],
)
def test_hostile_entries_are_refused_and_nothing_escapes(
    tmp_path: Path, dest: Path, entries: list[TarEntry], message: str | None
) -> None:
    tar = layer_tar(entries)
    if message is None:
        unpack(tmp_path, dest, tar)
        assert os.readlink(dest / "l") == "/etc/passwd"
    else:
        with pytest.raises(LayerError, match=message):
            unpack(tmp_path, dest, tar)
    assert_outside_untouched(tmp_path)
    assert Path("/etc/passwd").read_text().startswith("root:")


def test_too_many_entries(tmp_path: Path, dest: Path) -> None:
    tar = layer_tar([file(f"f{i}", "") for i in range(20)])
    with pytest.raises(LayerError, match="more than 10 entries"):
        unpack(tmp_path, dest, tar, max_entries=10)


def test_file_larger_than_limit(tmp_path: Path, dest: Path) -> None:
    tar = layer_tar([file("big", b"x" * 5000)])
    with pytest.raises(LayerError, match="exceeds 4096"):
        unpack(tmp_path, dest, tar, max_file_bytes=4096)


def test_compression_bomb_is_refused(tmp_path: Path, dest: Path) -> None:
    tar = layer_tar([file("zeros", b"\0" * (8 * 1024 * 1024))])
    blob = tmp_path / "blob"
    blob.write_bytes(gzipped(tar))
    assert blob.stat().st_size < 64 * 1024
    limits = UnpackLimits(max_ratio=10, ratio_floor=1024 * 1024)
    with pytest.raises(LayerError, match="compression ratio"):
        unpack_layer(blob, dest, limits=limits)


def test_lying_size_header_is_a_malformed_layer(tmp_path: Path, dest: Path) -> None:
    info = tarfile.TarInfo("short")
    info.size = 10_000
    buffer = io.BytesIO()
    buffer.write(info.tobuf(format=tarfile.PAX_FORMAT))
    buffer.write(b"only a few bytes")
    with pytest.raises(LayerError, match="malformed"):
        unpack(tmp_path, dest, buffer.getvalue())


def test_trusted_xattrs_from_the_tar_are_dropped(tmp_path: Path, dest: Path) -> None:
    info = tarfile.TarInfo("dir")
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.pax_headers = {"SCHILY.xattr.trusted.overlay.opaque": "y", "SCHILY.xattr.user.note": "ok"}
    unpack(tmp_path, dest, layer_tar([TarEntry(info)]))
    with pytest.raises(OSError):  # noqa: PT011 (ENODATA)
        os.getxattr(dest / "dir", OPAQUE_XATTR)
    assert os.getxattr(dest / "dir", "user.note") == b"ok"


def test_zstd_and_plain_layers_are_detected(tmp_path: Path, dest: Path) -> None:
    tar = layer_tar([file("z", "zstd"), directory("d")])
    raw = tmp_path / "raw"
    raw.write_bytes(tar)
    compressed = tmp_path / "raw.zst"
    subprocess.run(["zstd", "-q", "-o", str(compressed), str(raw)], check=True)
    assert unpack_layer(compressed, dest).diff_id == digest(tar)
    assert (dest / "z").read_text() == "zstd"
    plain = tmp_path / "plain"
    plain.mkdir()
    assert unpack_layer(raw, plain).diff_id == digest(tar)


def test_pax_path_override_is_checked_like_any_name(tmp_path: Path, dest: Path) -> None:
    info = tarfile.TarInfo("harmless")
    info.size = 1
    info.pax_headers = {"path": "../../outside/victim"}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(LayerError, match=r"'\.\.' component"):
        unpack(tmp_path, dest, buffer.getvalue())
    assert_outside_untouched(tmp_path)


def test_later_entries_replace_earlier_ones_as_tar_does(tmp_path: Path, dest: Path) -> None:
    tar = layer_tar(
        [directory("x"), file("x/inner", "i"), file("x", "now a file"), symlink("y", "x")]
    )
    unpack(tmp_path, dest, tar)
    assert (dest / "x").read_text() == "now a file"
    assert os.readlink(dest / "y") == "x"
