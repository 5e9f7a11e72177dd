"""The clock triggers run on: the system's, or one that runs faster, for tests.

``WARREN_TEST_CLOCK=ANCHOR:SPEED`` (a real epoch time in seconds, and a factor)
makes ``warren serve``'s triggers see ``ANCHOR + (now - ANCHOR) * SPEED``: every
node given the same value agrees on the time, and a minute of cron schedule
passes in 60/SPEED real seconds. Only the scheduler uses it; workers see real time.
"""

from __future__ import annotations

import os
import time
from typing import Protocol

CLOCK_ENV = "WARREN_TEST_CLOCK"


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""
        ...

    def to_real(self, seconds: float) -> float:
        """Real seconds that ``seconds`` of this clock take."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def to_real(self, seconds: float) -> float:
        return seconds


class ScaledClock:
    """Real time from ``anchor`` (an epoch time) on, ``speed`` times faster."""

    def __init__(self, anchor: float, speed: float) -> None:
        if speed <= 0:
            raise ValueError("the clock's speed must be positive")
        self.anchor = anchor
        self.speed = speed

    def now(self) -> float:
        return self.anchor + (time.time() - self.anchor) * self.speed

    def to_real(self, seconds: float) -> float:
        return seconds / self.speed


def clock_from_environment() -> Clock:
    """``$WARREN_TEST_CLOCK`` as a ScaledClock, else the system clock. Raises ValueError if malformed."""
    spec = os.environ.get(CLOCK_ENV, "").strip()
    if not spec:
        return SystemClock()
    anchor, _, speed = spec.partition(":")
    try:
        return ScaledClock(float(anchor), float(speed))
    except ValueError:
        raise ValueError(
            f"{CLOCK_ENV} must be ANCHOR:SPEED (an epoch time in seconds and a factor), not {spec!r}"
        ) from None
