"""Requests and replies of docs/protocol.md §5, with no I/O.

Each command is a frozen dataclass: `encode(command)` gives the request body, and
`decode(command, body)` checks the reply's echo and `RES` and turns the rest into the
typed value of `qqbridge.qq.model` (or raises from `qqbridge.qq.errors`). The client
moves the bytes; tests feed fixed wire strings straight in.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from qqbridge.qq import model
from qqbridge.qq.errors import (
    REFUSALS,
    LocalProtocolError,
    NullReply,
    RemoteProtocolError,
    WrongPassword,
)
from qqbridge.qq.wire import decode_list, decode_value, encode_body, encode_list, encode_value, split_body

VERSION = "1.1"
LOGIN_CODE = "9326B87B234E7235"  # the seed's fixed `LC`
MAX_SEQ = 9_999_999_999  # SEQ is 1 to 10 decimal digits
MAX_MESSAGE_BYTES = 700  # CLTMSG refuses longer MG
GETMSG_CAP = 50  # a full GetMsgEx reply: there may be more
MAX_NUMBER = 2**63 - 1  # the largest number a reply may carry (a BIGINT column holds it)


def password_md5(password: str) -> str:
    """What Login sends as `PS`: the MD5 of the password, as 32 hex digits."""
    return hashlib.md5(password.encode("utf-8")).hexdigest().upper()


def split_message(text: str, limit: int = MAX_MESSAGE_BYTES) -> list[str]:
    """Split text into pieces of at most `limit` UTF-8 bytes, on character boundaries, in order."""
    if limit < 4:
        raise LocalProtocolError("a piece must hold at least one character (4 bytes)")
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    for char in text:
        width = len(char.encode("utf-8"))
        if size + width > limit:
            pieces.append("".join(current))
            current, size = [], 0
        current.append(char)
        size += width
    if current:
        pieces.append("".join(current))
    return pieces


def _check_uin(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 0:
        raise LocalProtocolError(f"{name} must be a non-negative integer, not {value!r}")


def _number(raw: str) -> int | None:
    """A decimal number of at most 19 ASCII digits that fits a signed 64-bit column, or
    None: a server's 5,000-digit "number" must not reach `int()` (which refuses it with
    a ValueError) nor the store."""
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19:
        return None
    value = int(raw)
    return value if value <= MAX_NUMBER else None


def _int(fields: dict[str, str], key: str) -> int:
    raw = fields.get(key)
    if raw is None:
        raise RemoteProtocolError(f"reply lacks {key}")
    value = _number(raw)
    if value is None:
        raise RemoteProtocolError(f"reply's {key} is not a number up to {MAX_NUMBER}: {raw[:20]!r}")
    return value


def _ints(items: list[str], key: str) -> list[int]:
    values = [_number(item) for item in items]
    if None in values:
        raise RemoteProtocolError(f"reply's {key} list holds something that is not a number up to {MAX_NUMBER}")
    return values  # type: ignore[return-value]


def _status(value: int, key: str) -> model.Status:
    try:
        return model.Status(value)
    except ValueError:
        raise RemoteProtocolError(f"reply's {key} holds unknown status {value}") from None


Reply = TypeVar("Reply")


@dataclass(frozen=True)
class Command(Generic[Reply]):
    """One request. Subclasses name their `CMD`, add their parameters and say the type of
    their reply (`Command[model.LoginOk]`); a command whose reply carries nothing but its
    `RES` is a `Command[None]`."""

    CMD: ClassVar[str]
    uin: int
    seq: int

    def params(self) -> list[tuple[str, str]]:
        return []

    def parse(self, fields: dict[str, str]) -> Reply:
        return None  # type: ignore[return-value]  # Command[None]: only RES, checked by decode


def encode(command: Command[Any]) -> bytes:
    """The request body: `VER&CMD&SEQ&UIN` first, then the command's own parameters."""
    _check_uin("UIN", command.uin)
    if not isinstance(command.seq, int) or not 1 <= command.seq <= MAX_SEQ:
        raise LocalProtocolError(f"SEQ must be 1 to {MAX_SEQ}, not {command.seq!r}")
    head = [("VER", VERSION), ("CMD", command.CMD), ("SEQ", str(command.seq)), ("UIN", str(command.uin))]
    return encode_body(head + command.params())


def decode(command: Command[Reply], body: bytes) -> Reply:
    """Check a reply against its request and return the command's typed result."""
    if body == b"":
        raise NullReply(command.CMD)
    fields = split_body(body)
    echo = {"VER": VERSION, "CMD": command.CMD.upper(), "SEQ": str(command.seq), "UIN": str(command.uin)}
    for key, expected in echo.items():
        got = fields.get(key)
        if got is None or got.upper() != expected:
            raise RemoteProtocolError(f"{command.CMD}: reply echoes {key}={got!r}, expected {expected!r}")
    if "RES" not in fields:
        # e.g. the Query_Stat quirk (docs/protocol.md §5): only the echo came back.
        raise RemoteProtocolError(f"{command.CMD}: reply has no RES")
    res = _int(fields, "RES")
    if res != 0:
        refusal = REFUSALS.get(res)
        if refusal is None:
            raise RemoteProtocolError(f"{command.CMD}: unknown RES={res}")
        raise refusal(command.CMD)
    return command.parse(fields)


# ---- the commands ------------------------------------------------------------------------


@dataclass(frozen=True)
class Login(Command[model.LoginOk]):
    """Returns LoginOk; a wrong password raises WrongPassword."""

    CMD = "Login"
    password_md5: str

    def params(self) -> list[tuple[str, str]]:
        digest = self.password_md5
        if len(digest) != 32 or any(c not in "0123456789abcdefABCDEF" for c in digest):
            raise LocalProtocolError("Login needs the password's MD5 as 32 hex digits")
        return [("PS", digest), ("M5", "1"), ("LC", LOGIN_CODE)]

    def parse(self, fields: dict[str, str]) -> model.LoginOk:
        if _int(fields, "RS") != 0:
            raise WrongPassword(decode_value(fields.get("RA", "")))
        return model.LoginOk(heartbeat=_int(fields, "HI"), idle_timeout=_int(fields, "LI"))


@dataclass(frozen=True)
class _Paged(Command[Reply]):
    """List and Query_Stat: `page_size` (TN) items from `offset` (UN)."""

    page_size: int = 0
    offset: int = 0

    def params(self) -> list[tuple[str, str]]:
        _check_uin("TN", self.page_size)
        _check_uin("UN", self.offset)
        return [("TN", str(self.page_size)), ("UN", str(self.offset))]


@dataclass(frozen=True)
class ListFriends(_Paged[int | model.Page]):
    """page_size 0 returns the friend count (int); otherwise a Page."""

    CMD = "List"

    def parse(self, fields: dict[str, str]) -> int | model.Page:
        if self.page_size == 0:
            return _int(fields, "FN")
        uins = _ints(decode_list(fields.get("UN", "")), "UN")
        if _int(fields, "SN") != len(uins):
            raise RemoteProtocolError("List: SN does not match the UN list")
        return model.Page(uins=tuple(uins), last=_int(fields, "FN") == 1)


@dataclass(frozen=True)
class QueryStat(_Paged[model.OnlinePage]):
    """Online and busy friends, one OnlinePage. Clients always send page_size > 0."""

    CMD = "Query_Stat"
    page_size: int = 50

    def parse(self, fields: dict[str, str]) -> model.OnlinePage:
        lists = {key: decode_list(fields.get(key, "")) for key in ("FC", "ST", "UN", "NK")}
        count = _int(fields, "SN")
        if any(len(items) != count for items in lists.values()):
            raise RemoteProtocolError("Query_Stat: FC, ST, UN and NK lists differ from SN")
        faces, statuses, uins = (_ints(lists[k], k) for k in ("FC", "ST", "UN"))
        friends = tuple(
            model.OnlineFriend(uin=u, nick=n, status=_status(s, "ST"), face=f)
            for u, n, s, f in zip(uins, lists["NK"], statuses, faces, strict=True)
        )
        return model.OnlinePage(friends=friends, last=_int(fields, "FN") == 1)


_PROFILE_TEXT = {
    "AD": "address", "EM": "email", "HP": "homepage", "JB": "job", "PC": "zip_code",
    "PH": "phone", "PR": "introduction", "PV": "province", "RN": "real_name", "SC": "school",
    "CT": "city", "CY": "country", "MO": "mobile",
}  # fmt: skip
_PROFILE_CODES = {"SX": ("gender", model.Gender), "BT": ("blood_type", model.BloodType),
                  "CO": ("constellation", model.Constellation), "SH": ("zodiac", model.Zodiac)}  # fmt: skip
_REPLY_HEAD = {"VER", "CMD", "SEQ", "UIN", "RES", "UN", "NK", "LV"}


@dataclass(frozen=True)
class GetInfo(Command[model.Profile]):
    """The profile of `target`: level 0-1 simple, 2 normal, 3+ detailed."""

    CMD = "GetInfo"
    target: int = 0
    level: int = 3

    def params(self) -> list[tuple[str, str]]:
        _check_uin("UN", self.target)
        _check_uin("LV", self.level)
        return [("LV", str(self.level)), ("UN", str(self.target))]

    def parse(self, fields: dict[str, str]) -> model.Profile:
        values: dict[str, Any] = {}
        extra: dict[str, str] = {}
        for key, raw in fields.items():
            if key in _REPLY_HEAD:
                continue
            text = decode_value(raw)
            if key in _PROFILE_TEXT:
                values[_PROFILE_TEXT[key]] = text
            elif key in ("AG", "FC"):
                values["age" if key == "AG" else "face"] = _number(text)
            elif key in _PROFILE_CODES:
                name, table = _PROFILE_CODES[key]
                code = _number(text)
                if code is None:  # not a number at all: kept visible, as an unknown code is
                    extra[key] = text
                    continue
                try:
                    values[name] = table(code)
                except ValueError:
                    extra[key] = text  # a code the seed's tables do not know: keep it visible
            else:
                extra[key] = text
        return model.Profile(
            uin=_int(fields, "UN"),
            nick=decode_value(fields.get("NK", "")),
            level=_int(fields, "LV"),
            extra=extra,
            **values,
        )


@dataclass(frozen=True)
class AddToList(Command[model.AddResult]):
    CMD = "AddToList"
    target: int = 0

    def params(self) -> list[tuple[str, str]]:
        _check_uin("UN", self.target)
        return [("UN", str(self.target))]

    def parse(self, fields: dict[str, str]) -> model.AddResult:
        code = _int(fields, "CD")
        try:
            policy = model.AddPolicy(code)
        except ValueError:
            raise RemoteProtocolError(f"AddToList: unknown CD={code}") from None
        return model.AddResult(target=_int(fields, "UN"), policy=policy)


@dataclass(frozen=True)
class AckAddToList(Command[None]):
    """Request (CD=2), accept (0) or reject (1) a friendship, with a reason text."""

    CMD = "Ack_AddToList"
    target: int = 0
    kind: model.AckKind = model.AckKind.REQUEST
    reason: str = ""

    def params(self) -> list[tuple[str, str]]:
        _check_uin("UN", self.target)
        return [("UN", str(self.target)), ("CD", str(int(self.kind))), ("RS", encode_value(self.reason))]


@dataclass(frozen=True)
class DelFromList(Command[None]):
    CMD = "DelFromList"
    target: int = 0

    def params(self) -> list[tuple[str, str]]:
        _check_uin("UN", self.target)
        return [("UN", str(self.target))]


@dataclass(frozen=True)
class ChangeStat(Command[None]):
    CMD = "Change_Stat"
    status: model.Status = model.Status.ONLINE

    def params(self) -> list[tuple[str, str]]:
        return [("ST", str(int(model.Status(self.status))))]


@dataclass(frozen=True)
class GetMsgEx(Command[model.MessageBatch]):
    """Fetch queued events, oldest first, at most 50 (then `full`)."""

    CMD = "GetMsgEx"

    def parse(self, fields: dict[str, str]) -> model.MessageBatch:
        count = _int(fields, "MN")
        kinds = _ints(decode_list(fields.get("MT", "")), "MT")
        senders = _ints(decode_list(fields.get("UN", "")), "UN")
        contents = decode_list(fields.get("MG", ""))
        if not len(kinds) == len(senders) == len(contents) == count:
            raise RemoteProtocolError(
                f"GetMsgEx: MN={count} but MT, UN, MG hold {len(kinds)}, {len(senders)}, {len(contents)}"
            )
        events = tuple(model.event_from(k, s, c) for k, s, c in zip(kinds, senders, contents, strict=True))
        return model.MessageBatch(events=events, full=count >= GETMSG_CAP)


@dataclass(frozen=True)
class CltMsg(Command[None]):
    """Send `text` to `target`; at most 700 bytes of UTF-8 (see split_message)."""

    CMD = "CLTMSG"
    target: int = 0
    text: str = ""

    def params(self) -> list[tuple[str, str]]:
        _check_uin("UN", self.target)
        size = len(self.text.encode("utf-8"))
        if size == 0 or size > MAX_MESSAGE_BYTES:
            raise LocalProtocolError(f"CLTMSG text must be 1 to {MAX_MESSAGE_BYTES} bytes, not {size}")
        return [("UN", str(self.target)), ("MG", encode_value(self.text))]


@dataclass(frozen=True)
class Logout(Command[None]):
    CMD = "Logout"


__all__ = [
    "AckAddToList", "AddToList", "ChangeStat", "CltMsg", "Command", "DelFromList", "GetInfo",
    "GetMsgEx", "ListFriends", "Login", "Logout", "QueryStat", "decode", "encode",
    "encode_list", "password_md5", "split_message",
]  # fmt: skip
