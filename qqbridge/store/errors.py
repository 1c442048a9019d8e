"""The store's exceptions: everything the store raises is a `StoreError`.

    StoreError                 any failure of the store; driver errors are wrapped in it
    ├── StoreConnectionError   the database named by the URL could not be opened
    ├── SchemaTooNewError      the database was migrated by a newer qqbridge
    ├── MigrationError         an upgrade function failed (its transaction was rolled back)
    ├── NotFoundError          the bridge user / inbox event named does not exist
    ├── ConflictError          a QQ account or control room already belongs to another user
    │                          (or any other unique key was taken)
    └── InvalidValueError      a caller passed a value the store will not keep

Callers that only want "the database let us down" catch `StoreError`; the subclasses
exist so a command can answer a user precisely (e.g. `ConflictError`: "that QQ account
is already bridged by someone else").
"""

from __future__ import annotations


class StoreError(Exception):
    """Any failure of the store."""


class StoreConnectionError(StoreError):
    """The database could not be opened (message names the URL without its password)."""


class SchemaTooNewError(StoreError):
    """The database schema is newer than this code knows; nothing was changed."""

    def __init__(self, found: int, known: int) -> None:
        super().__init__(
            f"database schema version {found} is newer than this qqbridge (knows up to {known}); upgrade qqbridge"
        )
        self.found = found
        self.known = known


class MigrationError(StoreError):
    """An upgrade function failed; its transaction was rolled back."""


class NotFoundError(StoreError, LookupError):
    """The row named by the caller does not exist."""


class ConflictError(StoreError):
    """A unique thing (QQ account, control room) already belongs to another user."""


class InvalidValueError(StoreError, ValueError):
    """A value the store refuses to keep (e.g. something that is not an MD5 hex digest)."""
