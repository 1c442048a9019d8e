"""The base of the store's repositories: one per aggregate (users, portals, the
outbox, ...), each bound to the one `Database` and the store's clock.

    Store ──has──▶ users: UserStore · portals: PortalStore · outbox: OutboxStore · ...
                       └─ every method is one statement or one transaction

A part of the bridge receives the repositories it uses, typed, never a bag of every
query; what each returns is a row of `rows.py`.
"""

from __future__ import annotations

from collections.abc import Callable

from qqbridge.store.database import Database


class Repository:
    def __init__(self, db: Database, clock: Callable[[], float]) -> None:
        self._db = db
        self._clock = clock

    def _now_ms(self) -> int:
        """The store's clock in Unix milliseconds: every `*_at` column."""
        return int(self._clock() * 1000)
