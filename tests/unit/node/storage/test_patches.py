from __future__ import annotations

import base64
import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from kubesandbox_api.spec import ContentSource, DirectorySource, Patch
from kubesandbox_node.images.layers import IndexEntry
from kubesandbox_node.images.unpack import OPAQUE_XATTR
from kubesandbox_node.rootfs.errors import PatchError
from kubesandbox_node.rootfs.lower import merge_layers, shadowed_directories
from kubesandbox_node.rootfs.patches import apply_patches, write_scripts
from kubesandbox_node.rootfs.view import RootView


def d(path: str, mode: int = 0o755, uid: int = 0, opaque: bool = False) -> IndexEntry:
    return IndexEntry(path, "d", mode, uid, uid, opaque=opaque)


def f(path: str, mode: int = 0o644, uid: int = 0) -> IndexEntry:
    return IndexEntry(path, "f", mode, uid, uid, size=1)


def ln(path: str, target: str) -> IndexEntry:
    return IndexEntry(path, "l", 0o777, 0, 0, target=target)


def wh(path: str) -> IndexEntry:
    return IndexEntry(path, "w", 0o600, 0, 0)


LAYERS = [
    [
        d("etc"),
        f("etc/motd"),
        f("etc/hosts"),
        d("usr"),
        d("usr/bin"),
        f("usr/bin/env", 0o755),
        ln("bin", "usr/bin"),
        d("var", 0o750, uid=7),
        d("var/cache"),
        f("var/cache/old"),
        f("etc/removed-later"),
    ],
    [wh("etc/removed-later"), d("var", 0o750, uid=7, opaque=True), f("var/new")],
]
CONTENT = {(0, "etc/hosts"): b"127.0.0.1 localhost\n"}


class FakeReader:
    def read(self, layer: int, path: str) -> bytes:
        return CONTENT[(layer, path)]


class FakeSources:
    def file(self, source: ContentSource, *, field: str) -> bytes:
        return b"from-configmap"

    def directory(self, source: DirectorySource, *, field: str) -> Mapping[str, bytes]:
        return {"a.conf": b"A", "b.conf": b"B"}


@pytest.fixture
def view(tmp_path: Path) -> Iterator[RootView]:
    upper = tmp_path / "upper"
    upper.mkdir()
    with RootView(upper, merge_layers(LAYERS), FakeReader()) as root:
        yield root


def patch(**op: Any) -> Patch:
    return Patch.model_validate(op)


def run(view: RootView, *patches: dict[str, Any]) -> None:
    apply_patches(view, [Patch.model_validate(p) for p in patches], FakeSources())


def is_whiteout(path: Path) -> bool:
    info = os.lstat(path)
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == 0


def test_text_on_a_new_path_creates_parents(view: RootView) -> None:
    run(view, {"text": {"path": "/app/config.json", "content": "{}", "mode": 0o600}})
    written = view.upper / "app/config.json"
    assert written.read_text() == "{}"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert stat.S_IMODE((view.upper / "app").stat().st_mode) == 0o755


def test_text_on_a_path_of_the_image_needs_replace(view: RootView) -> None:
    with pytest.raises(PatchError, match=r"spec\.patches\[0\]\.text\.path.*replace: true"):
        run(view, {"text": {"path": "/etc/motd", "content": "new"}})
    run(view, {"text": {"path": "/etc/motd", "content": "new", "replace": True}})
    assert (view.upper / "etc/motd").read_text() == "new"


def test_earlier_patches_count_as_existing(view: RootView) -> None:
    with pytest.raises(PatchError, match=r"patches\[1\]\.file\.path"):
        run(
            view,
            {"text": {"path": "/greeting", "content": "hi"}},
            {"file": {"path": "/greeting", "data": base64.b64encode(b"x").decode()}},
        )


def test_copied_up_directories_keep_the_image_owner_and_mode(view: RootView) -> None:
    run(view, {"text": {"path": "/var/cache/x", "content": "x"}})
    var = (view.upper / "var").stat()
    assert (stat.S_IMODE(var.st_mode), var.st_uid) == (0o750, 7)


def test_writes_follow_image_symlinks_inside_the_root(view: RootView) -> None:
    run(view, {"text": {"path": "/bin/tool", "content": "t", "mode": 0o755}})
    assert (view.upper / "usr/bin/tool").read_text() == "t"
    assert not (view.upper / "bin").exists()


def test_symlinks_cannot_lead_a_write_out_of_the_root(view: RootView, tmp_path: Path) -> None:
    run(
        view,
        {"symlink": {"path": "/escape", "target": "../../../../"}},
        {"text": {"path": "/escape/tmp/pwned", "content": "x"}},
    )
    assert (view.upper / "tmp/pwned").read_text() == "x"
    assert not Path("/tmp/pwned").exists()
    assert os.readlink(view.upper / "escape") == "../../../../"


def test_mkdir_is_idempotent_and_refuses_files(view: RootView) -> None:
    run(view, {"mkdir": {"path": "/etc"}}, {"mkdir": {"path": "/data/x", "mode": 0o700}})
    run(view, {"mkdir": {"path": "/data/x", "mode": 0o700}})
    assert stat.S_IMODE((view.upper / "data/x").stat().st_mode) == 0o700
    assert not (view.upper / "etc").exists()
    with pytest.raises(PatchError, match="not a directory"):
        run(view, {"mkdir": {"path": "/etc/motd"}})


def test_remove_of_an_image_path_writes_a_whiteout(view: RootView) -> None:
    run(view, {"remove": {"path": "/etc/motd"}}, {"remove": {"path": "/etc/motd"}})
    assert is_whiteout(view.upper / "etc/motd")
    assert view.lookup(("etc", "motd")) is None


def test_remove_of_an_earlier_patch_leaves_no_whiteout(view: RootView) -> None:
    run(view, {"text": {"path": "/new", "content": "x"}}, {"remove": {"path": "/new"}})
    assert not os.path.lexists(view.upper / "new")


def test_remove_missing_is_fine(view: RootView) -> None:
    run(view, {"remove": {"path": "/does/not/exist"}}, {"remove": {"path": "/etc/removed-later"}})
    assert not os.path.lexists(view.upper / "etc/removed-later")


def test_recreated_directory_after_remove_is_opaque(view: RootView) -> None:
    run(view, {"remove": {"path": "/usr/bin"}}, {"text": {"path": "/usr/bin/only", "content": "o"}})
    assert os.getxattr(view.upper / "usr/bin", OPAQUE_XATTR) == b"y"
    assert view.lookup(("usr", "bin", "env")) is None


def test_opaque_lower_directory_hides_older_children(view: RootView) -> None:
    assert view.lookup(("var", "cache")) is None
    assert view.lookup(("var", "new")) is not None
    run(view, {"text": {"path": "/var/cache", "content": "now a file"}})


def test_append_copies_up_image_file_then_appends(view: RootView) -> None:
    run(view, {"append": {"path": "/etc/hosts", "content": "10.0.0.1 app\n"}})
    assert (view.upper / "etc/hosts").read_text() == "127.0.0.1 localhost\n10.0.0.1 app\n"
    run(view, {"append": {"path": "/etc/hosts", "content": "x\n"}})
    assert (view.upper / "etc/hosts").read_text().endswith("app\nx\n")


def test_append_creates_missing_file_and_refuses_directories(view: RootView) -> None:
    run(view, {"append": {"path": "/log", "content": "a"}})
    assert (view.upper / "log").read_text() == "a"
    with pytest.raises(PatchError, match=r"patches\[0\]\.append\.path.*not a regular file"):
        run(view, {"append": {"path": "/etc", "content": "a"}})


def test_copy_file_and_copy_dir_from_sources(view: RootView) -> None:
    run(
        view,
        {"copyFile": {"source": {"configMapKeyRef": {"name": "c", "key": "k"}}, "path": "/c"}},
        {"copyDir": {"source": {"secret": {"name": "s"}}, "path": "/conf.d"}},
    )
    assert (view.upper / "c").read_bytes() == b"from-configmap"
    assert (view.upper / "conf.d/a.conf").read_bytes() == b"A"
    with pytest.raises(PatchError, match=r"copyDir\.path.*replace: true"):
        run(view, {"copyDir": {"source": {"secret": {"name": "s"}}, "path": "/etc"}})
    run(view, {"copyDir": {"source": {"secret": {"name": "s"}}, "path": "/etc", "replace": True}})
    assert (view.upper / "etc/b.conf").read_bytes() == b"B"


def test_symlink_needs_replace_over_existing(view: RootView) -> None:
    with pytest.raises(PatchError, match="already exists"):
        run(view, {"symlink": {"path": "/etc/motd", "target": "/dev/null"}})
    run(view, {"symlink": {"path": "/etc/motd", "target": "/dev/null", "replace": True}})
    assert os.readlink(view.upper / "etc/motd") == "/dev/null"


def test_file_replacing_a_directory_is_refused(view: RootView) -> None:
    with pytest.raises(PatchError, match="is a directory"):
        run(view, {"text": {"path": "/etc", "content": "x", "replace": True}})


def test_scripts_are_executable_under_msb_scripts(view: RootView) -> None:
    write_scripts(view, {"setup": "#!/bin/sh\necho hi\n", "start": "#!/bin/sh\n"})
    script = view.upper / ".msb/scripts/setup"
    assert script.read_text().startswith("#!/bin/sh")
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    with pytest.raises(PatchError, match=r"spec\.scripts\['\.\./x'\]"):
        write_scripts(view, {"../x": "x"})


def test_plain_directory_view_has_no_whiteouts(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/motd").write_text("old")
    with RootView(root, whiteouts=False) as plain:
        run(
            plain, {"remove": {"path": "/etc/motd"}}, {"text": {"path": "/etc/new", "content": "n"}}
        )
    assert not os.path.lexists(root / "etc/motd")
    assert (root / "etc/new").read_text() == "n"


def test_implicit_directories_do_not_override_real_attributes() -> None:
    lower = merge_layers(
        [
            [d("tmp", 0o1777), d("home"), d("home/user", 0o700, uid=1000)],
            [
                IndexEntry("tmp", "d", 0o755, 0, 0, implicit=True),
                f("tmp/x"),
                IndexEntry("home", "d", 0o755, 0, 0, implicit=True),
                IndexEntry("home/user", "d", 0o755, 0, 0, implicit=True),
                IndexEntry("new", "d", 0o755, 0, 0, implicit=True),
                f("new/file"),
            ],
        ]
    )
    assert shadowed_directories(lower) == [("tmp",), ("home", "user")]
    assert (lower.children["tmp"].mode, lower.children["home"].children["user"].uid) == (
        0o1777,
        1000,
    )


def test_remove_after_replace_still_hides_the_image_file(view: RootView) -> None:
    run(
        view,
        {"text": {"path": "/etc/motd", "content": "mine", "replace": True}},
        {"remove": {"path": "/etc/motd"}},
    )
    assert is_whiteout(view.upper / "etc/motd")
    assert view.lookup(("etc", "motd")) is None


def test_append_and_mkdir_after_remove(view: RootView) -> None:
    run(
        view,
        {"remove": {"path": "/etc/hosts"}},
        {"append": {"path": "/etc/hosts", "content": "fresh\n"}},
        {"remove": {"path": "/etc/motd"}},
        {"mkdir": {"path": "/etc/motd"}},
    )
    assert (view.upper / "etc/hosts").read_text() == "fresh\n"
    entry = view.lookup(("etc", "motd"))
    assert entry is not None
    assert entry.kind == "d"


def test_replacing_a_symlink_with_a_file_gets_file_defaults(view: RootView) -> None:
    run(view, {"text": {"path": "/bin", "content": "x", "replace": True}})
    written = view.upper / "bin"
    assert stat.S_IMODE(written.stat().st_mode) == 0o644
