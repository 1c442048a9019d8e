"""What the store checks before it writes: that values are ones it will keep, the same
on both backends, and that the bridge user a row belongs to exists.

Every check returns the value (so `uin = checks.uin(uin)` reads naturally) or raises
`InvalidValueError` / `NotFoundError` naming what is wrong. Nothing here writes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from qqbridge.store.database import Database
from qqbridge.store.errors import InvalidValueError, NotFoundError

# QQ numbers the protocol accepts (docs/protocol.md section 3, RES=5).
UIN_MIN, UIN_MAX = 10_000, 4_294_967_295
# What a BIGINT column holds.
BIGINT_MAX = 2**63 - 1


def text(name: str, value: Any) -> str:
    """A required text value: a non-empty str that both databases can store."""
    if not isinstance(value, str) or not value:
        raise InvalidValueError(f"{name} must be a non-empty string, not {value!r}")
    storable(name, value)
    return value


def optional_text(name: str, value: Any) -> str | None:
    """None, or a str (empty allowed) that both databases can store."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidValueError(f"{name} must be a string or None, not {value!r}")
    storable(name, value)
    return value


def storable(name: str, value: str) -> str:
    # PostgreSQL text cannot hold NUL, and neither driver can encode a lone surrogate;
    # refusing both here makes the two backends agree.
    if "\x00" in value:
        raise InvalidValueError(f"{name} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidValueError(f"{name} is not valid Unicode text") from None
    return value


def printable(value: str) -> str:
    """Free text from outside (an error message, a QQ message) made storable on both
    backends rather than refused: NUL becomes `\\x00`, a lone surrogate `\\udXXX`."""
    return value.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def uin(value: Any) -> int:
    """A QQ number: an int from 10000 to 4294967295."""
    if isinstance(value, bool) or not isinstance(value, int) or not UIN_MIN <= value <= UIN_MAX:
        raise InvalidValueError(f"{value!r} is not a QQ number ({UIN_MIN} to {UIN_MAX})")
    return value


def integer(name: str, value: Any, low: int, high: int) -> int:
    """An int (not a bool) from `low` to `high`."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidValueError(f"{name} must be an integer from {low} to {high}, not {value!r}")
    return value


def limit(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidValueError(f"limit must be a positive integer, not {value!r}")
    return value


def to_json(value: Any) -> str:
    # ASCII JSON: storable whatever odd characters (NUL, lone surrogates) the strings
    # hold; no NaN, which is not JSON.
    return json.dumps(value, ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def inbox_event(txn_id: str, index: int, event: Any) -> tuple[Any, ...]:
    """The inbox columns for one event, or `InvalidValueError` saying what is wrong."""
    where = f"event {index} of transaction {txn_id}"
    if not isinstance(event, Mapping):
        raise InvalidValueError(f"{where} is not a JSON object")
    event_id, room_id, sender, type_ = (
        text(f"{where}: {name}", event.get(name)) for name in ("event_id", "room_id", "sender", "type")
    )
    state_key = event.get("state_key")
    if state_key is not None:
        if not isinstance(state_key, str):
            raise InvalidValueError(f"{where}: state_key must be a string")
        storable(f"{where}: state_key", state_key)
    content = event.get("content", {})
    if not isinstance(content, Mapping):
        raise InvalidValueError(f"{where}: content must be a JSON object")
    ts = event.get("origin_server_ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int) or not -(2**63) <= ts < 2**63):
        raise InvalidValueError(f"{where}: origin_server_ts must be a 64-bit integer")
    try:
        content_json, event_json = to_json(content), to_json(event)
    except (TypeError, ValueError, RecursionError) as e:
        raise InvalidValueError(f"{where} is not storable as JSON: {e}") from e
    return (event_id, txn_id, room_id, sender, type_, state_key, content_json, ts, event_json)


async def user_exists(db: Database, mxid: str) -> None:
    """`NotFoundError` unless `mxid` is a bridge user (rows of theirs need one)."""
    if await db.fetchval("SELECT 1 FROM bridge_user WHERE mxid = $1", text("mxid", mxid)) is None:
        raise NotFoundError(f"no bridge user {mxid}")
