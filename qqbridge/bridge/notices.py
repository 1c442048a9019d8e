"""What the bridge says in Matrix, and the transaction ids it says it with. No I/O.

Every module of the core that sends imports these from here (not from `core`, which
imports them all)."""

from __future__ import annotations

import hashlib
from typing import Any


def txn_for(*parts: object) -> str:
    """A Matrix transaction id derived from what caused the send: repeating the work
    after a crash repeats the id, and the homeserver returns the first event again."""
    return "qqb" + hashlib.sha256("\x00".join(map(str, parts)).encode()).hexdigest()[:32]


def notice_content(text: str, *, reply_to: str | None = None) -> dict[str, Any]:
    """An m.notice, optionally as a reply to the event it is about."""
    content: dict[str, Any] = {"msgtype": "m.notice", "body": text}
    if reply_to is not None:
        content["m.relates_to"] = {"m.in_reply_to": {"event_id": reply_to}}
    return content
