"""An asyncio rate limiter for requests per minute and tokens per minute.

    limiter = RateLimiter(requests_per_minute=500, tokens_per_minute=200_000)
    await limiter.acquire(tokens=1200)   # sleeps until this request may go out

Two limits:

* **requests**: each request gets the next free start time, ``60 / rpm`` seconds after the
  previous one, so requests leave evenly spaced (no burst at start-up, or after a pause, that a
  provider would answer with 429);
* **tokens**: capacity ``tpm`` (one minute's worth, as providers count it), refilled at
  ``tpm / 60`` per second. A request reserves its prompt estimate plus ``max_tokens`` (what
  providers count against the limit before the reply exists); `refund` returns the unused part
  once the usage is known.

`acquire` reserves immediately and lets the bucket go into debt, then sleeps until the debt is
paid: callers are served in arrival order without polling. `pause(seconds)` holds everyone
back, used when a server answers 429 with Retry-After. A limit of 0 means unlimited.
"""

from __future__ import annotations

import asyncio
import time


class _Bucket:
    def __init__(self, per_minute: float, capacity: float):
        self.rate = per_minute / 60.0
        self.capacity = capacity
        self.level = capacity
        self.stamp = time.monotonic()

    def reserve(self, amount: float, now: float) -> float:
        """Takes `amount` (at most the capacity); returns the seconds until it is available."""
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        self.level -= min(amount, self.capacity)
        return max(0.0, -self.level / self.rate)

    def refund(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)


class RateLimiter:
    def __init__(self, requests_per_minute: float = 0, tokens_per_minute: float = 0):
        self._interval = 60.0 / requests_per_minute if requests_per_minute > 0 else 0.0
        self._next_start = 0.0
        self._tokens = (_Bucket(tokens_per_minute, float(tokens_per_minute))
                        if tokens_per_minute > 0 else None)
        self._not_before = 0.0
        self.waited = 0.0  # total seconds callers slept here

    async def acquire(self, tokens: int = 0) -> None:
        now = time.monotonic()
        start = max(now, self._not_before, self._next_start)
        if self._interval:
            self._next_start = start + self._interval
        wait = start - now
        if self._tokens is not None and tokens > 0:
            wait = max(wait, self._tokens.reserve(float(tokens), now))
        if wait > 0:
            self.waited += wait
            await asyncio.sleep(wait)

    def refund(self, tokens: int) -> None:
        if self._tokens is not None and tokens > 0:
            self._tokens.refund(float(tokens))

    def pause(self, seconds: float) -> None:
        """No request may start in the next `seconds` (e.g. a 429's Retry-After)."""
        self._not_before = max(self._not_before, time.monotonic() + seconds)
