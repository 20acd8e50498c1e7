"""Waiting on a condition observed by polling (the guest, the cluster: there is no event to
wait for): ``wait_until`` in async tests, ``eventually`` in blocking ones."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], *, within: float = 30.0, what: str = "condition"
) -> None:
    try:
        async with asyncio.timeout(within):
            for attempt in itertools.count():
                if await predicate():
                    return
                await asyncio.sleep(min(0.01 * 2**attempt, 0.2))
    except TimeoutError:
        raise AssertionError(f"{what} not reached within {within}s") from None


def eventually(
    check: Callable[[], T | None],
    timeout: float = 60.0,
    what: str | Callable[[], str] = "",
    *,
    interval: float = 0.3,
) -> T:
    """Polls ``check`` (blocking) until it returns something truthy, and returns that; fails the
    test after ``timeout`` saying what it waited for (``what`` may be computed at that moment,
    to report what was found instead)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            said = what() if callable(what) else what or getattr(check, "__name__", "a condition")
            pytest.fail(f"after {timeout:.0f}s still waiting: {said}")
        time.sleep(interval)
