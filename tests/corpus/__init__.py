"""Manifests shared by unit and integration tests: the invalid corpus and the examples."""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
INVALID = Path(__file__).with_name("invalid-sandboxes.yaml")
EXAMPLES = REPO_ROOT / "examples"
EXPECT_ANNOTATION = "test.kubesandbox.dev/expect-error-on"


@dataclass(frozen=True)
class InvalidCase:
    name: str
    expected_field: str
    manifest: dict[str, Any]


def invalid_cases() -> list[InvalidCase]:
    return [
        InvalidCase(doc["metadata"]["name"], doc["metadata"]["annotations"][EXPECT_ANNOTATION], doc)
        for doc in yaml.safe_load_all(INVALID.read_text())
    ]


def example_files() -> list[Path]:
    return sorted(EXAMPLES.glob("*.yaml"))


def documents(path: Path) -> Iterator[dict[str, Any]]:
    yield from (doc for doc in yaml.safe_load_all(path.read_text()) if doc)


def example_sandboxes() -> list[dict[str, Any]]:
    return [doc for path in example_files() for doc in documents(path) if doc["kind"] == "Sandbox"]
