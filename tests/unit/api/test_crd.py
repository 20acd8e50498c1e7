from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubesandbox_api import crdgen
from tests.corpus import REPO_ROOT

JsonDict = dict[str, Any]


def _schema() -> JsonDict:
    version = crdgen.crd()["spec"]["versions"][0]
    schema: JsonDict = version["schema"]["openAPIV3Schema"]
    return schema


def _walk(node: JsonDict, path: str) -> Iterator[tuple[str, JsonDict]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def _spec_and_status() -> Iterator[tuple[str, JsonDict]]:
    properties = _schema()["properties"]
    yield from _walk(properties["spec"], "spec")
    yield from _walk(properties["status"], "status")


@pytest.mark.parametrize("path", crdgen.CRD_PATHS, ids=str)
def test_committed_crd_is_what_the_models_generate(path: Path) -> None:
    """Both copies: crds/ and the Helm chart's crds/."""
    committed = (REPO_ROOT / path).read_text()
    assert committed == crdgen.render(), f"{path} is stale: run `make crds`"


def test_schema_is_structural() -> None:
    for path, node in _spec_and_status():
        assert "$ref" not in node, path
        assert "title" not in node, path
        assert node.get("additionalProperties") is not False, path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string") is True, path
        else:
            assert "type" in node or node.get("x-kubernetes-int-or-string"), path


def test_every_field_is_documented() -> None:
    undocumented = [
        path
        for path, node in _spec_and_status()
        if path.count(".") and not path.endswith(("[]", "{}")) and not node.get("description")
    ]
    assert undocumented == []


def test_every_list_map_and_string_of_the_spec_is_bounded() -> None:
    unbounded = []
    for path, node in _walk(_schema()["properties"]["spec"], "spec"):
        kind = node.get("type")
        if kind == "array" and "maxItems" not in node:
            unbounded.append(path)
        if kind == "object" and "additionalProperties" in node and "maxProperties" not in node:
            unbounded.append(path)
        if kind == "string" and not {"maxLength", "enum"} & node.keys():
            unbounded.append(path)
    assert unbounded == []


@pytest.mark.parametrize(
    ("field", "default"),
    [
        ("cpus", 1),
        ("memory", 512),
        ("shell", "/bin/sh"),
        ("init", "none"),
    ],
)
def test_documented_defaults_are_in_the_schema(field: str, default: object) -> None:
    assert _schema()["properties"]["spec"]["properties"][field]["default"] == default


def test_enum_values_are_explained() -> None:
    lifecycle = _schema()["properties"]["spec"]["properties"]["lifecycle"]["properties"]
    description = lifecycle["stopMode"]["description"]
    assert "- Drain: Refuse new commands, let running ones finish, then stop." in description


def test_printer_columns() -> None:
    columns = crdgen.crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["name"] for c in columns] == ["Phase", "Node", "Image", "CPUs", "Memory", "Age"]


def test_check_mode_reports_a_stale_file(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert crdgen.main(["--check"]) == 1
    assert "stale" in capsys.readouterr().err
    assert crdgen.main(["--write"]) == 0
    assert crdgen.main(["--check"]) == 0
    # one stale copy is enough to fail, and the message names it
    crdgen.CHART_CRD_PATH.write_text("# edited by hand\n")
    assert crdgen.main(["--check"]) == 1
    assert str(crdgen.CHART_CRD_PATH) in capsys.readouterr().err
    assert crdgen.CRD_PATH.read_text() == crdgen.render()
