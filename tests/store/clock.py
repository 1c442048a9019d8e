"""A wall clock the store tests move by hand."""

from __future__ import annotations


class FakeClock:
    """An injected wall clock the tests move by hand (seconds since the epoch)."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
