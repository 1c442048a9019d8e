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
    HANDLING = "handling"  # claimed by the bridge's inbox (`store.inbox.claim`), not finished yet
    HANDLED = "handled"
    FAILED = "failed"  # handled, but handling it failed; `error` says why


class InboundState(StrEnum):
    """Where a QQ event fetched by GetMsgEx stands."""

    PENDING = "pending"  # stored, not yet relayed to Matrix
    RELAYED = "relayed"
    FAILED = "failed"  # given up on; `error` says why


class OutboxState(StrEnum):
    """Where a message from Matrix, to be sent to QQ by CLTMSG, stands."""

    PENDING = "pending"  # stored with its SEQ, not yet accepted by QQ
    SENT = "sent"  # QQ answered RES=0
    FAILED = "failed"  # given up on; `error` says why


class FriendRequestState(StrEnum):
    """Where a friend request someone sent the bridged account stands."""

    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


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
    # The inbox id of that `login` command: the password is a control-room message
    # stored after it, never the command itself or anything before it.
    password_after: int | None
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
    inbound: int = 0  # QQ events relayed (or failed for good)
    outgoing: int = 0  # outbox pieces sent (or failed for good)


@dataclass(frozen=True, slots=True)
class Puppet:
    """A QQ account the bridge has met, and what it last set for it on Matrix."""

    uin: int
    nick: str | None  # the QQ nickname last seen
    displayname: str | None  # the display name last set on Matrix
    presence: int | None  # the QQ status last set as Matrix presence: 10, 20 or 30
    updated_at: int

    @classmethod
    def from_row(cls, row: Row) -> Puppet:
        return cls(**row)


@dataclass(frozen=True, slots=True)
class Portal:
    """The Matrix room of one bridge user's conversation with one QQ account."""

    owner_mxid: str
    uin: int
    room_id: str | None  # None while the room is being created, or after the user left
    stranger: bool  # the QQ account is not in the owner's friend list
    created_at: int
    updated_at: int

    @classmethod
    def from_row(cls, row: Row) -> Portal:
        return cls(**{**row, "stranger": bool(row["stranger"])})  # SQLite says 0/1


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One event of a GetMsgEx reply, stored before it is relayed to Matrix."""

    inbound_id: int  # increases in the order fetched
    owner_mxid: str
    account_uin: int  # the bridged QQ account that fetched it
    getmsg_seq: int  # the SEQ of the GetMsgEx that returned it
    idx: int  # its position in that reply, from 0
    kind: int  # MT: 9 message, 99 status, 2 friend request, 3 accepted, 4 rejected
    sender_uin: int  # UN
    content: str  # MG
    state: str
    matrix_event_id: str | None  # what relaying it sent, once relayed
    error: str | None
    fetched_at: int
    relayed_at: int | None

    @classmethod
    def from_row(cls, row: Row) -> InboundMessage:
        return cls(**row)


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One part of a Matrix message, stored with its CLTMSG SEQ before it is sent."""

    outbox_id: int  # increases in the order enqueued
    owner_mxid: str
    room_id: str
    event_id: str  # the Matrix event it comes from
    part: int  # from 0; long text goes out as several CLTMSGs
    target_uin: int
    text: str
    seq: int  # send (and resend) with this SEQ: QQ delivers it once
    state: str
    attempts: int
    error: str | None
    created_at: int
    sent_at: int | None

    @classmethod
    def from_row(cls, row: Row) -> OutgoingMessage:
        return cls(**row)


@dataclass(frozen=True, slots=True)
class FriendRequest:
    """A QQ account asking the bridged account to accept it as a friend (MT=2)."""

    owner_mxid: str
    from_uin: int
    reason: str
    state: str
    prompt_room_id: str | None  # where the bot asked the owner, once it did
    prompt_event_id: str | None  # the prompt, which a ✅/❌ reaction answers
    created_at: int  # when this request (the latest from that uin) came
    answered_at: int | None

    @classmethod
    def from_row(cls, row: Row) -> FriendRequest:
        return cls(**row)
