"""The log pipeline: JSON lines off a terminal, with the traceback of a logged exception."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from kubesandbox_common import logs


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield None
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def _lines(captured: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in captured.splitlines() if line.strip()]


def test_json_lines_carry_the_traceback_of_an_exception(
    restore_logging: object, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure("INFO", component="test")
    log = structlog.get_logger("ksb-test")
    try:
        raise ValueError("the reason it failed")
    except ValueError:
        log.exception("request failed", path="/v1/x")
    logging.getLogger("stdlib-test").error("plain %s", "record")
    ours, foreign = _lines(capsys.readouterr().err)
    assert ours["event"] == "request failed"
    assert ours["component"] == "test"
    assert ours["path"] == "/v1/x"
    assert "Traceback" in str(ours["exception"])
    assert "ValueError: the reason it failed" in str(ours["exception"])
    assert foreign["event"] == "plain record"
    assert foreign["level"] == "error"
