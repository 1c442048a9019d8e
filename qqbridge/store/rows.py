"""Typed rows the store hands out: frozen dataclasses, one per kind of thing stored.

Every time is Unix milliseconds (as Matrix's `origin_server_ts`), an `int`.
State columns are plain text in the database, so a later version may add states
without a migration; the `StrEnum`s name the states this version writes (a member
compares equal to its text).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from qqbridge.store.database import Row


class LoginState(StrEnum):
    """Where a bridge user's QQ login stands."""

    LOGGED_OUT = "logged_out"
    AWAITING_PASSWORD = "awaiting_password"  # `login <uin>` given; the next message is the password
    LOGGED_IN = "logged_in"
    BAD_PASSWORD = "bad_password"  # QQ refused the stored hash; polling stopped until `login`


class InboxState(StrEnum):
    """Where a Matrix event received from the homeserver stands."""

    PENDING = "pending"
    HANDLED = "handled"
    FAILED = "failed"  # handled, but handling it failed; `error` says why


@dataclass(frozen=True, slots=True)
class BridgeUser:
    """A Matrix user who uses the bridge (and at most one QQ account of theirs)."""

    mxid: str
    control_room_id: str | None
    qq_uin: int | None  # the QQ account bridged, set once a login succeeded
    # MD5 hex of the QQ password, what the protocol's Login sends; never the password.
    # Kept out of repr so that logging a user does not log it.
    password_md5: str | None = field(repr=False)
    login_state: str
    pending_login_uin: int | None  # the uin of `login <uin>` while awaiting the password
    created_at: int
    updated_at: int

    @classmethod
    def from_row(cls, row: Row) -> BridgeUser:
        return cls(**row)


@dataclass(frozen=True, slots=True)
class InboxEvent:
    """A Matrix event from an appservice transaction, stored before it is handled."""

    inbox_id: int  # increases in order of arrival
    event_id: str
    txn_id: str
    room_id: str
    sender: str
    type: str
    state_key: str | None
    content: dict[str, Any]
    origin_server_ts: int | None
    event: dict[str, Any]  # the whole event as the homeserver sent it
    state: str
    error: str | None
    received_at: int
    handled_at: int | None

    @classmethod
    def from_row(cls, row: Row) -> InboxEvent:
        values = dict(row)
        values["content"] = json.loads(values["content"])
        values["event"] = json.loads(values.pop("event_json"))
        return cls(**values)


@dataclass(frozen=True, slots=True)
class PruneResult:
    """How many rows `Store.prune` removed."""

    events: int
    transactions: int
