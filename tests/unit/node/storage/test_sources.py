from __future__ import annotations

from pathlib import Path

import pytest

from kubesandbox_api.spec import ContentSource, DirectorySource, Patch
from kubesandbox_node.rootfs.errors import PatchError, RootfsError
from kubesandbox_node.rootfs.hostpaths import HostPathPolicy
from kubesandbox_node.rootfs.sources import ResolvedSources, required_objects


def test_required_objects_lists_what_copies_need() -> None:
    patches = [
        Patch.model_validate(p)
        for p in (
            {"copyFile": {"source": {"secretKeyRef": {"name": "s", "key": "k"}}, "path": "/a"}},
            {"copyDir": {"source": {"configMap": {"name": "c"}}, "path": "/b"}},
            {"text": {"path": "/c", "content": "x"}},
        )
    ]
    needed = required_objects(patches)
    assert (needed.secrets, needed.config_maps) == (frozenset({"s"}), frozenset({"c"}))


def test_keys_objects_and_host_paths(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    (allowed / "tree/sub").mkdir(parents=True)
    (allowed / "tree/sub/f").write_text("f")
    (allowed / "tree/link").symlink_to("/etc/passwd")
    (allowed / "one").write_text("one")
    sources = ResolvedSources(
        secrets={"s": {"k": b"secret"}},
        config_maps={"c": {"a": b"A"}},
        host_paths=HostPathPolicy.of([allowed]),
    )
    secret = ContentSource.model_validate({"secretKeyRef": {"name": "s", "key": "k"}})
    assert sources.file(secret, field="f") == b"secret"
    optional = ContentSource.model_validate(
        {"configMapKeyRef": {"name": "none", "key": "k", "optional": True}}
    )
    assert sources.file(optional, field="f") == b""
    missing = ContentSource.model_validate({"secretKeyRef": {"name": "s", "key": "nope"}})
    with pytest.raises(PatchError, match=r"^spec\.patches\[0\]\.copyFile\.source: .*no key"):
        sources.file(missing, field="spec.patches[0].copyFile.source")
    host = ContentSource.model_validate({"hostPath": str(allowed / "one")})
    assert sources.file(host, field="f") == b"one"
    tree = DirectorySource.model_validate({"hostPath": str(allowed / "tree")})
    assert sources.directory(tree, field="f") == {"sub/f": b"f"}
    cm = DirectorySource.model_validate({"configMap": {"name": "c"}})
    assert sources.directory(cm, field="f") == {"a": b"A"}
    outside = ContentSource.model_validate({"hostPath": "/etc/passwd"})
    with pytest.raises(RootfsError, match=r"f\.hostPath: .*not under"):
        sources.file(outside, field="f")
