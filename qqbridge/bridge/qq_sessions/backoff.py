"""Waits between tries: doubling, with jitter, capped. Used wherever the bridge tries
again (a QQ poll, a relay to the homeserver, the store while it fails)."""

from __future__ import annotations

import random


class Backoff:
    """Doubling waits with jitter, capped; `reset` after a success."""

    def __init__(self, first: float = 1.0, cap: float = 60.0) -> None:
        self.first, self.cap, self._next = first, cap, first

    def next(self) -> float:
        wait = self._next * (0.5 + random.random() / 2)
        self._next = min(self._next * 2, self.cap)
        return wait

    def reset(self) -> None:
        self._next = self.first
