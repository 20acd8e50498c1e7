"""A work queue of Sandbox keys: deduplicated, one pass per key at a time, with deadlines.

The shape of client-go's workqueue, which every well-behaved controller uses: a key added
while it waits is not added twice; a key added while a worker handles it is handed out again
when that worker is done (never to a second worker at the same time, so passes for one
Sandbox never race); :meth:`add_after` keeps one deadline per key (the earliest), all
deadlines behind a single timer. A fixed number of workers take keys in arrival order, so one
slow Sandbox holds one worker and delays nobody else.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

MAX_BACKOFF_SECONDS = 60.0


class WorkQueue(Generic[K]):
    def __init__(self) -> None:
        self._ready: collections.deque[K] = collections.deque()
        self._queued: set[K] = set()
        self._active: set[K] = set()
        self._dirty: set[K] = set()
        self._held: set[K] = set()
        self._deadlines: dict[K, float] = {}
        self._heap: list[tuple[float, int, K]] = []
        self._sequence = 0
        self._timer: asyncio.TimerHandle | None = None
        self._failures: dict[K, int] = {}
        self._nonempty = asyncio.Event()
        self._finished: dict[K, asyncio.Event] = {}

    def __len__(self) -> int:
        return len(self._queued)

    @property
    def busy(self) -> bool:
        return bool(self._queued or self._active)

    def sizes(self) -> dict[str, int]:
        return {
            "queued": len(self._queued),
            "active": len(self._active),
            "deadlines": len(self._deadlines),
            "failing": len(self._failures),
        }

    def add(self, key: K) -> None:
        if key in self._held:
            return
        if key in self._active:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._ready.append(key)
            self._nonempty.set()

    def add_after(self, key: K, delay: float) -> None:
        """Adds ``key`` in ``delay`` seconds (unless an earlier deadline is already set)."""
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        if key in self._held or self._deadlines.get(key, float("inf")) <= when:
            return
        self._deadlines[key] = when
        self._sequence += 1
        heapq.heappush(self._heap, (when, self._sequence, key))
        self._arm()

    def retry(self, key: K, delay: float) -> float:
        """Adds ``key`` after ``delay`` doubled for each failure in a row (at most a minute)."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        backoff = min(MAX_BACKOFF_SECONDS, delay * 2.0**failures)
        self.add_after(key, backoff)
        return backoff

    def succeeded(self, key: K) -> None:
        self._failures.pop(key, None)

    async def get(self) -> K:
        while True:
            while not self._ready:
                self._nonempty.clear()
                await self._nonempty.wait()
            key = self._ready.popleft()
            if key not in self._queued:
                continue  # forgotten while it waited
            self._queued.discard(key)
            self._active.add(key)
            self._deadlines.pop(key, None)  # this pass replaces the one that was due
            return key

    def done(self, key: K) -> None:
        self._active.discard(key)
        finished = self._finished.pop(key, None)
        if finished is not None:
            finished.set()
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    async def hold(self, key: K) -> None:
        """No pass for ``key`` from now on, and none in flight when this returns (the Sandbox
        is being deleted: its delete handler must not race a pass)."""
        self._held.add(key)
        self._drop(key)
        while key in self._active:
            finished = self._finished.setdefault(key, asyncio.Event())
            await finished.wait()

    def forget(self, key: K) -> None:
        """Drops everything about ``key`` (the Sandbox is gone)."""
        self._held.discard(key)
        self._drop(key)

    def _drop(self, key: K) -> None:
        self._queued.discard(key)
        self._dirty.discard(key)
        self._deadlines.pop(key, None)
        self._failures.pop(key, None)

    def _arm(self) -> None:
        while self._heap and self._deadlines.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)  # superseded or dropped
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._heap:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(self._heap[0][0], self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = asyncio.get_running_loop().time()
        while self._heap and self._heap[0][0] <= now:
            when, _, key = heapq.heappop(self._heap)
            if self._deadlines.get(key) == when:
                del self._deadlines[key]
                self.add(key)
        self._arm()
