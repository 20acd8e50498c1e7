"""How often a client may present tokens that fail: token buckets on failed TokenReviews.

Every unknown bearer token costs the apiserver a TokenReview (a known one is served from the
authenticator's cache, a known-bad one from its negative cache, both keyed by the token's
SHA-256). Random tokens are all unknown, so without a limit anyone who can reach the gateway
could turn requests into TokenReviews at line rate. Two token buckets bound that:

- **per client address**: each failed review takes one token from that address's bucket
  (``burst`` tokens, refilled at ``rate`` per second); an address with an empty bucket gets 429
  ``rate_limited`` with ``Retry-After`` for any token the gateway has not already accepted,
  without a review;
- **all clients together**: the same over every failure (``total_burst``, ``total_rate``), so
  many addresses cannot add up to a flood either.

Only failures count: a client with a valid token is never limited, and tokens accepted before
still work from a blocked address (a NAT shared with a misbehaving neighbour keeps working for
its known users). The per-address table is bounded (least recently seen addresses are
forgotten first); forgetting an address only resets its bucket, the total bucket still holds.
The address is the TCP peer's: behind a proxy that does not preserve it, every client shares
one bucket and only the total matters.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

RATE = 1.0
"""Failed reviews per second an address earns back."""
BURST = 10
TOTAL_RATE = 20.0
TOTAL_BURST = 100
MAX_ADDRESSES = 10_000


@dataclass
class Bucket:
    rate: float
    burst: float
    tokens: float
    stamp: float

    def refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait(self) -> float:
        """Seconds until one token is back (0 when there is one)."""
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate


@dataclass
class FailureLimiter:
    rate: float = RATE
    burst: int = BURST
    total_rate: float = TOTAL_RATE
    total_burst: int = TOTAL_BURST
    max_addresses: int = MAX_ADDRESSES
    clock: Callable[[], float] = time.monotonic
    _buckets: OrderedDict[str, Bucket] = field(default_factory=OrderedDict)
    _total: Bucket | None = None

    def retry_after(self, address: str) -> int:
        """Whole seconds ``address`` must wait before another unknown token is reviewed;
        0 when it may go ahead."""
        now = self.clock()
        waits = [self._total_bucket(now).wait()]
        bucket = self._buckets.get(address)
        if bucket is not None:
            bucket.refill(now)
            self._buckets.move_to_end(address)
            waits.append(bucket.wait())
        longest = max(waits)
        return 0 if longest <= 0 else max(1, math.ceil(longest))

    def failed(self, address: str) -> None:
        """A review of a token from ``address`` said "not valid"."""
        now = self.clock()
        total = self._total_bucket(now)
        total.tokens = max(0.0, total.tokens - 1.0)
        bucket = self._buckets.get(address)
        if bucket is None:
            bucket = Bucket(self.rate, self.burst, float(self.burst), now)
            self._buckets[address] = bucket
            while len(self._buckets) > self.max_addresses:
                self._buckets.popitem(last=False)
        bucket.refill(now)
        bucket.tokens = max(0.0, bucket.tokens - 1.0)
        self._buckets.move_to_end(address)

    def _total_bucket(self, now: float) -> Bucket:
        if self._total is None:
            self._total = Bucket(self.total_rate, self.total_burst, float(self.total_burst), now)
        self._total.refill(now)
        return self._total

    def __len__(self) -> int:
        return len(self._buckets)
