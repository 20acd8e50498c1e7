from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubesandbox_api import crdgen
from tests.corpus import REPO_ROOT

JsonDict = dict[str, Any]


def _schema(definition: JsonDict | None = None) -> JsonDict:
    version = (definition or crdgen.crd())["spec"]["versions"][0]
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


def _spec_and_status(definition: JsonDict | None = None) -> Iterator[tuple[str, JsonDict]]:
    properties = _schema(definition)["properties"]
    yield from _walk(properties["spec"], "spec")
    yield from _walk(properties["status"], "status")


BOTH = pytest.mark.parametrize(
    "definition",
    [crdgen.crd(), crdgen.pool_crd(), crdgen.snapshot_crd()],
    ids=["sandbox", "pool", "snapshot"],
)


@pytest.mark.parametrize("path", crdgen.CRD_PATHS, ids=str)
def test_committed_crd_is_what_the_models_generate(path: Path) -> None:
    """Every copy of both CRDs: crds/ and the Helm chart's crds/."""
    committed = (REPO_ROOT / path).read_text()
    assert committed == crdgen.expected()[path], f"{path} is stale: run `make crds`"


def test_every_crd_file_is_generated() -> None:
    for directory in crdgen.CRD_DIRS:
        on_disk = {p.name for p in (REPO_ROOT / directory).glob("*.yaml")}
        assert on_disk == {p.name for p in crdgen.CRD_PATHS if p.parent == directory}


@BOTH
def test_schema_is_structural(definition: JsonDict) -> None:
    for path, node in _spec_and_status(definition):
        assert "$ref" not in node, path
        assert "title" not in node, path
        assert node.get("additionalProperties") is not False, path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string") is True, path
        else:
            assert "type" in node or node.get("x-kubernetes-int-or-string"), path


@BOTH
def test_every_field_is_documented(definition: JsonDict) -> None:
    undocumented = [
        path
        for path, node in _spec_and_status(definition)
        if path.count(".") and not path.endswith(("[]", "{}")) and not node.get("description")
    ]
    assert undocumented == []


@BOTH
def test_every_list_map_and_string_of_the_spec_is_bounded(definition: JsonDict) -> None:
    unbounded = []
    for path, node in _walk(_schema(definition)["properties"]["spec"], "spec"):
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


def test_pool_crd_names_scale_and_columns() -> None:
    spec = crdgen.pool_crd()["spec"]
    assert spec["names"]["shortNames"] == ["sbxpool"]
    assert spec["names"]["plural"] == "sandboxpools"
    (version,) = spec["versions"]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Desired", "Current", "Ready", "Image", "Age"]


def test_pool_template_is_the_sandbox_spec_without_transition_rules() -> None:
    pool = _schema(crdgen.pool_crd())["properties"]["spec"]["properties"]
    template = pool["template"]["properties"]["spec"]
    sandbox = _schema()["properties"]["spec"]
    assert template["properties"].keys() == sandbox["properties"].keys()
    assert "oldSelf" in str(sandbox)
    assert "oldSelf" not in str(template)
    assert any("Running" in r["rule"] for r in template["x-kubernetes-validations"])


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
    assert crdgen.POOL_CRD_PATH.read_text() == crdgen.render(crdgen.pool_crd())
