"""Typed values the QQ codec produces: replies, incoming events and the seed's code tables.

Everything here is a frozen dataclass or an enum; nothing does I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Status(enum.IntEnum):
    """QQ presence codes (docs/protocol.md §5 Change_Stat, Query_Stat, MT=99)."""

    ONLINE = 10
    OFFLINE = 20  # also how others see an invisible account
    BUSY = 30
    INVISIBLE = 40  # only ever sent by the account itself


class AddPolicy(enum.IntEnum):
    """AddToList's `CD`: what the target's setting made of the request."""

    ADDED = 0  # anyone may add: the target is now in your list
    NEEDS_VERIFICATION = 1  # send Ack_AddToList CD=2 with a reason
    REFUSES_ALL = 2  # the target accepts no one


class AckKind(enum.IntEnum):
    """Ack_AddToList's `CD`."""

    ACCEPT = 0
    REJECT = 1
    REQUEST = 2


class Gender(enum.IntEnum):
    MALE = 0
    FEMALE = 1

    @property
    def label(self) -> str:
        return self.name.lower()


class BloodType(enum.IntEnum):
    NONE = 0
    A = 1
    B = 2
    O = 3  # noqa: E741 - the blood type's own name
    AB = 4
    OTHER = 5

    @property
    def label(self) -> str:
        return {0: "", 5: "other"}.get(self.value, self.name)


class Constellation(enum.IntEnum):
    NONE = 0
    AQUARIUS = 1
    PISCES = 2
    ARIES = 3
    TAURUS = 4
    GEMINI = 5
    CANCER = 6
    LEO = 7
    VIRGO = 8
    LIBRA = 9
    SCORPIO = 10
    SAGITTARIUS = 11
    CAPRICORN = 12

    @property
    def label(self) -> str:
        return "" if self.value == 0 else self.name.capitalize()


class Zodiac(enum.IntEnum):
    """The Chinese zodiac animal (`SH`)."""

    NONE = 0
    RAT = 1
    OX = 2
    TIGER = 3
    RABBIT = 4
    DRAGON = 5
    SNAKE = 6
    HORSE = 7
    GOAT = 8
    MONKEY = 9
    ROOSTER = 10
    DOG = 11
    PIG = 12

    @property
    def label(self) -> str:
        return "" if self.value == 0 else self.name.capitalize()


# QQ numbers the protocol accepts (docs/protocol.md §3: anything else is an illegal QQ number, RES=5).
MIN_UIN, MAX_UIN = 10_000, 4_294_967_295


def legal_uin(uin: int) -> bool:
    """Whether `uin` can be a QQ account at all; a server that names another is lying."""
    return MIN_UIN <= uin <= MAX_UIN


def avatar_file(face: int) -> str:
    """The picture a face id names: `FC/3 + 1` (FC=270 → 91.bmp)."""
    return f"{face // 3 + 1}.bmp"


# ---- replies ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LoginOk:
    """A successful Login: the client should send something every `heartbeat` seconds;
    the session expires after `idle_timeout` seconds without a request."""

    heartbeat: int
    idle_timeout: int


@dataclass(frozen=True)
class Page:
    """One page of List: `uins` in ascending order, `last` when FN=1."""

    uins: tuple[int, ...]
    last: bool


@dataclass(frozen=True)
class OnlineFriend:
    uin: int
    nick: str
    status: Status
    face: int


@dataclass(frozen=True)
class OnlinePage:
    friends: tuple[OnlineFriend, ...]
    last: bool


@dataclass(frozen=True)
class Profile:
    """GetInfo's answer. Fields the level did not ask for are None; `extra` keeps the
    fields nobody understands (CV, ID, MT, MV) and anything new, still decoded."""

    uin: int
    nick: str
    level: int
    address: str | None = None
    age: int | None = None
    email: str | None = None
    face: int | None = None
    homepage: str | None = None
    job: str | None = None
    zip_code: str | None = None
    phone: str | None = None
    introduction: str | None = None
    province: str | None = None
    real_name: str | None = None
    school: str | None = None
    gender: Gender | None = None
    blood_type: BloodType | None = None
    constellation: Constellation | None = None
    city: str | None = None
    country: str | None = None
    mobile: str | None = None
    zodiac: Zodiac | None = None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AddResult:
    target: int
    policy: AddPolicy


# ---- incoming events (GetMsgEx) ------------------------------------------------------------


class EventKind(enum.IntEnum):
    """GetMsgEx's MT: what an event is, as the wire and the store number it."""

    MESSAGE = 9
    STATUS_CHANGE = 99
    FRIEND_REQUEST = 2
    REQUEST_ACCEPTED = 3
    REQUEST_REJECTED = 4


@dataclass(frozen=True)
class Message:
    """MT=9: a user's message."""

    sender: int
    text: str


@dataclass(frozen=True)
class StatusChange:
    """MT=99: `uin` is now `status`."""

    uin: int
    status: Status


@dataclass(frozen=True)
class FriendRequest:
    """MT=2: `sender` asks to be accepted as a friend."""

    sender: int
    reason: str


@dataclass(frozen=True)
class RequestAccepted:
    """MT=3: `sender` accepted our friend request."""

    sender: int


@dataclass(frozen=True)
class RequestRejected:
    """MT=4: `sender` rejected our friend request."""

    sender: int
    reason: str


@dataclass(frozen=True)
class UnknownEvent:
    """An MT this reading of the protocol does not know, or a content it cannot read.
    Kept rather than raised: the server already removed it from the queue, so the
    bridge must be able to report it instead of losing the whole batch."""

    kind: int
    sender: int
    content: str


Event = Message | StatusChange | FriendRequest | RequestAccepted | RequestRejected | UnknownEvent


def event_from(kind: int, sender: int, content: str) -> Event:
    """The typed event of an (MT, UN, MG) triple, as GetMsgEx carries it and the store
    keeps it; what this reading of the protocol does not know is an UnknownEvent."""
    if kind == EventKind.MESSAGE:
        return Message(sender=sender, text=content)
    if kind == EventKind.STATUS_CHANGE and content in ("10", "20", "30"):
        return StatusChange(uin=sender, status=Status(int(content)))
    if kind == EventKind.FRIEND_REQUEST:
        return FriendRequest(sender=sender, reason=content)
    if kind == EventKind.REQUEST_ACCEPTED:
        return RequestAccepted(sender=sender)
    if kind == EventKind.REQUEST_REJECTED:
        return RequestRejected(sender=sender, reason=content)
    return UnknownEvent(kind=kind, sender=sender, content=content)


def event_fields(event: Event) -> tuple[int, int, str]:
    """The (MT, UN, MG) triple of an event, as the protocol carried it: `event_from`
    undone."""
    match event:
        case Message(sender, text):
            return EventKind.MESSAGE, sender, text
        case StatusChange(uin, status):
            return EventKind.STATUS_CHANGE, uin, str(int(status))
        case FriendRequest(sender, reason):
            return EventKind.FRIEND_REQUEST, sender, reason
        case RequestAccepted(sender):
            return EventKind.REQUEST_ACCEPTED, sender, ""
        case RequestRejected(sender, reason):
            return EventKind.REQUEST_REJECTED, sender, reason
        case UnknownEvent(kind, sender, content):
            return kind, sender, content


@dataclass(frozen=True)
class MessageBatch:
    """One GetMsgEx reply, oldest first; `full` means the server may hold more."""

    events: tuple[Event, ...]
    full: bool
