"""Waiting on a condition observed by polling the guest (there is no event to wait for)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable


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
