"""Injectable clocks: the pipeline's state machines take ``now_ns`` from one of these, never from ``time``.

``MonotonicClock`` is the real one; ``ManualClock`` is moved by hand (tests, simulations) and its
``sleep_until_ns`` advances time instead of waiting, so pacing logic runs without sleeps.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

from spikereveal.errors import ConfigError


class Clock(Protocol):
    def now_ns(self) -> int:
        """Current time in int64 nanoseconds (monotonic; the origin is arbitrary)."""

    def sleep_until_ns(self, deadline_ns: int, stop: threading.Event | None = None) -> bool:
        """Wait until ``deadline_ns`` or until ``stop`` is set; returns False when stopped."""


class MonotonicClock:
    """``time.monotonic_ns``; waits on the stop event so that a stop request ends a wait at once."""

    def now_ns(self) -> int:
        return time.monotonic_ns()

    def sleep_until_ns(self, deadline_ns: int, stop: threading.Event | None = None) -> bool:
        remaining = deadline_ns - time.monotonic_ns()
        if remaining <= 0:
            return not (stop is not None and stop.is_set())
        if stop is None:
            time.sleep(remaining / 1e9)
            return True
        return not stop.wait(remaining / 1e9)


class ManualClock:
    """A clock that only moves when told to; ``sleep_until_ns`` jumps to the deadline (never back)."""

    def __init__(self, start_ns: int = 0):
        self._now = int(start_ns)
        self.sleeps: int = 0  # how many waits were requested (a test can check that pacing happened)

    def now_ns(self) -> int:
        return self._now

    def set_ns(self, now_ns: int) -> None:
        if now_ns < self._now:
            raise ConfigError(f"a clock cannot go back in time ({now_ns} < {self._now})")
        self._now = int(now_ns)

    def advance_ns(self, delta_ns: int) -> int:
        self.set_ns(self._now + int(delta_ns))
        return self._now

    def sleep_until_ns(self, deadline_ns: int, stop: threading.Event | None = None) -> bool:
        if stop is not None and stop.is_set():
            return False
        if deadline_ns > self._now:
            self.sleeps += 1
            self._now = int(deadline_ns)
        return True
