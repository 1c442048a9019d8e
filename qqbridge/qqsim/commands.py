"""The eleven QQ commands: how a request body is judged and answered (docs/protocol.md §3, §5).

It owns the judging order and one function per command. `answer(world, peer_ip, body)`
takes a request body and returns a `Reply`: the body to send (None for NULL), how long
to wait before sending it (every RES=3 is answered slowly), and, for the Query_Stat
quirk, further raw responses. No I/O; all state lives in `World`.

Judging order (§3): malformed -> NULL; no session -> RES=20; a remembered SEQ -> the
remembered reply; a penalty window running -> RES=3; unknown or illegal target ->
RES=5; then the command itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qqbridge.qqsim.wire import Malformed, encode, encode_list, is_digits, parse_body
from qqbridge.qqsim.world import World

__all__ = ["Reply", "NULL", "answer", "COMMANDS"]

LOGIN_CODE = "9326B87B234E7235"
MESSAGE_MAX_BYTES = 700
STATUSES = frozenset({10, 20, 30, 40})


@dataclass(frozen=True)
class Reply:
    """What to send: `body` (None is NULL, the empty body) after `delay` seconds, then
    each of `extra` as a further raw HTTP response on the same connection."""

    body: str | None
    delay: float = 0.0
    extra: tuple[str, ...] = ()


NULL = Reply(None)


@dataclass(frozen=True)
class Request:
    """A well-formed request: its echo, who sent it, and its checked parameters."""

    peer: str
    uin: int
    seq: str
    echo: str  # "VER=1.1&CMD=<canonical>&SEQ=<seq>&UIN=<uin>"
    params: dict[str, Any]


@dataclass(frozen=True)
class Outcome:
    """A command's answer, without the echo. `fields` None is NULL; "" is the echo alone."""

    fields: str | None
    delay: float = 0.0
    extra: tuple[str, ...] = ()


# -- parameter kinds: each turns a raw value into a checked one or raises Malformed ----


def number(raw: str) -> int:
    if not is_digits(raw):
        raise Malformed(f"not a number: {raw[:20]!r}")
    if len(raw) > 15:  # far beyond any UIN; spares int() a huge conversion
        return 10**15
    return int(raw)


def text(raw: str) -> str:
    return raw


def password(raw: str) -> str:
    if not raw:
        raise Malformed("PS empty")
    return raw


def md5_flag(raw: str) -> int:
    if number(raw) != 1:
        raise Malformed("M5 is not 1")
    return 1


def login_code(raw: str) -> str:
    if not raw.isascii() or raw.upper() != LOGIN_CODE:
        raise Malformed("wrong LC")
    return raw


def status_code(raw: str) -> int:
    value = number(raw)
    if value not in STATUSES:
        raise Malformed(f"ST {value} is not a status")
    return value


def message_text(raw: str) -> str:
    if not raw or len(raw.encode("utf-8")) > MESSAGE_MAX_BYTES:
        raise Malformed("MG empty or longer than 700 bytes")
    return raw


@dataclass(frozen=True)
class Command:
    name: str  # canonical
    run: Callable[[World, Request], Outcome]
    required: dict[str, Callable[[str], object]] = field(default_factory=dict)
    optional: dict[str, Callable[[str], object]] = field(default_factory=dict)
    needs_session: bool = True
    remembered: bool = False  # SEQ memory applies (§4)
    target: str | None = None  # parameter naming an account that must exist (else RES=5)


COMMANDS: dict[str, Command] = {}  # by upper-case name


def command(name: str, **spec: object) -> Callable[[Callable[[World, Request], Outcome]], Callable]:
    def register(run: Callable[[World, Request], Outcome]) -> Callable:
        COMMANDS[name.upper()] = Command(name, run, **spec)  # type: ignore[arg-type]
        return run

    return register


# -- judging ---------------------------------------------------------------------


def answer(world: World, peer: str, body: bytes) -> Reply:
    """Judge one request body from client address `peer` and say what to reply."""
    try:
        cmd, request = _read(world, peer, body)
    except Malformed:
        return NULL
    if cmd.needs_session and not world.has_session(peer, request.uin):
        return Reply(request.echo + "&RES=20")
    if cmd.remembered:
        remembered = world.recall(request.uin, cmd.name, request.seq)
        if remembered is not None:
            return Reply(remembered)
    if world.in_penalty(request.uin, cmd.name):
        return Reply(request.echo + "&RES=3", world.timing.penalty)
    if cmd.target is not None and not world.exists(request.params[cmd.target]):
        outcome = Outcome("RES=5")
    else:
        outcome = cmd.run(world, request)
    if outcome.fields is None:
        return NULL
    body_text = request.echo + "&" + outcome.fields if outcome.fields else request.echo
    if cmd.remembered and outcome.fields.startswith(("RES=0", "RES=5")):  # final replies only
        world.remember(request.uin, cmd.name, request.seq, body_text)
    return Reply(body_text, outcome.delay, tuple(request.echo + "&" + f for f in outcome.extra))


def _read(world: World, peer: str, body: bytes) -> tuple[Command, Request]:
    fields = parse_body(body)
    if fields.get("VER") != "1.1":
        raise Malformed("VER is not 1.1")
    name = fields.get("CMD", "")
    cmd = COMMANDS.get(name.upper()) if name.isascii() else None  # "lıst".upper() is "LIST"
    if cmd is None:
        raise Malformed("unknown CMD")
    seq = fields.get("SEQ", "")
    if not (1 <= len(seq) <= 10 and is_digits(seq)):
        raise Malformed("SEQ is not 1 to 10 digits")
    uin_text = fields.get("UIN", "")
    uin = number(uin_text)
    params: dict[str, Any] = {}
    for key, kind in cmd.required.items():
        if key not in fields:
            raise Malformed(f"{key} missing")
        params[key] = kind(fields[key])
    for key, kind in cmd.optional.items():
        if key in fields:
            params[key] = kind(fields[key])
    if cmd.name == "CLTMSG" and "lowercase-h" in world.quirks and "h" in params["MG"]:
        raise Malformed("lowercase-h quirk")
    echo = f"VER=1.1&CMD={cmd.name}&SEQ={seq}&UIN={uin_text}"
    return cmd, Request(peer, uin, seq, echo, params)


def _page(items: list, params: dict[str, Any]) -> tuple[list, int]:
    """One page of `items` by TN (size) and UN (offset), and FN (1 when it reaches the end)."""
    offset = params.get("UN", 0)
    page = items[offset : offset + params["TN"]]
    return page, 1 if offset + len(page) >= len(items) else 0


# -- the commands ------------------------------------------------------------------


@command("Login", required={"PS": password, "M5": md5_flag, "LC": login_code}, needs_session=False)
def login(world: World, req: Request) -> Outcome:
    result = world.login(req.peer, req.uin, req.params["PS"])
    if result is None:
        return Outcome("RES=5")
    if not result:
        return Outcome("RES=0&RS=1&RA=" + encode("incorrect password"))
    return Outcome("RES=0&RS=0&HI=60&LI=300")


@command("Logout", needs_session=False)
def logout(world: World, req: Request) -> Outcome:
    world.logout(req.peer, req.uin)
    return Outcome("RES=0")


@command("List", optional={"TN": number, "UN": number})
def friend_list(world: World, req: Request) -> Outcome:
    friends = world.friends(req.uin)
    if not req.params.get("TN"):
        return Outcome(f"RES=0&FN={len(friends)}")
    page, end = _page(friends, req.params)
    return Outcome(f"RES=0&FN={end}&SN={len(page)}&UN={encode_list(page)}")


@command("Query_Stat", optional={"TN": number, "UN": number})
def query_stat(world: World, req: Request) -> Outcome:
    online = world.online_friends(req.uin)
    if not req.params.get("TN"):
        # The seed's quirk: the echo alone, then two more raw responses.
        return Outcome("", extra=(f"RES=0&FN={len(online)}", "RES=0&FC=&FN=1&SN=0&ST=&UN=&NK="))
    page, end = _page(online, req.params)
    return Outcome(
        f"RES=0&FC={encode_list(a.face for a in page)}&FN={end}&SN={len(page)}"
        f"&ST={encode_list(world.status(a.uin) for a in page)}"
        f"&UN={encode_list(a.uin for a in page)}&NK={encode_list(a.nick for a in page)}"
    )


_NORMAL = ("AD", "AG", "EM", "FC", "HP", "JB", "LV", "PC", "PH", "PR", "PV", "RN", "SC", "SX")
_DETAILED = (
    "AD", "AG", "BT", "CO", "CT", "CV", "CY", "EM", "FC", "HP", "ID", "JB", "LV",
    "MO", "MT", "MV", "PC", "PH", "PR", "PV", "RN", "SC", "SH", "SX",
)  # fmt: skip
_NONE_CODES = {"BT": "0", "CO": "0", "SH": "0"}  # unset codes read 0, "none"


@command("GetInfo", required={"LV": number, "UN": number}, target="UN")
def get_info(world: World, req: Request) -> Outcome:
    level = req.params["LV"]
    card = world.card(req.params["UN"])
    tail = f"UN={card.uin}&NK={encode(card.nick)}"
    if level <= 1:
        return Outcome(f"RES=0&LV={level}&{tail}")
    values = {**_NONE_CODES, **card.profile, "FC": str(card.face), "LV": str(level)}
    keys = _NORMAL if level == 2 else _DETAILED
    return Outcome("RES=0&" + "".join(f"{k}={encode(values.get(k, ''))}&" for k in keys) + tail)


@command("AddToList", required={"UN": number}, remembered=True, target="UN")
def add_to_list(world: World, req: Request) -> Outcome:
    other = req.params["UN"]
    if other == req.uin:
        return Outcome("RES=5")
    return Outcome(f"RES=0&CD={world.add_friend(req.uin, other)}&UN={other}")


@command("Ack_AddToList", required={"UN": number, "CD": number, "RS": text}, remembered=True, target="UN")
def ack_add_to_list(world: World, req: Request) -> Outcome:
    other, code, reason = req.params["UN"], req.params["CD"], req.params["RS"]
    if other == req.uin:
        return Outcome("RES=5")
    if code >= 3:
        return Outcome("RES=3", world.timing.penalty)
    if code == 2:
        if not world.ask_friend(req.uin, other, reason):
            return Outcome("RES=3", world.timing.penalty)
    else:
        world.answer_friend(req.uin, other, accept=code == 0, reason=reason)
    return Outcome("RES=0")


@command("DelFromList", required={"UN": number}, remembered=True, target="UN")
def del_from_list(world: World, req: Request) -> Outcome:
    if not world.delete_friend(req.uin, req.params["UN"]):
        return Outcome("RES=3", world.timing.delete_repeat)
    return Outcome("RES=0")


@command("Change_Stat", required={"ST": status_code}, remembered=True)
def change_stat(world: World, req: Request) -> Outcome:
    if not world.change_status(req.uin, req.params["ST"]):
        return Outcome("RES=3", world.timing.penalty)
    return Outcome("RES=0")


@command("GetMsgEx", remembered=True)
def get_msg_ex(world: World, req: Request) -> Outcome:
    batch = world.fetch(req.uin)
    return Outcome(
        f"RES=0&MN={len(batch)}&MT={encode_list(m.kind for m in batch)}"
        f"&UN={encode_list(m.sender for m in batch)}&MG={encode_list(m.text for m in batch)}"
    )


@command("CLTMSG", required={"UN": number, "MG": message_text}, remembered=True, target="UN")
def clt_msg(world: World, req: Request) -> Outcome:
    if not world.send_message(req.uin, req.params["UN"], req.params["MG"]):
        return Outcome("RES=3", world.timing.penalty)
    return Outcome("RES=0")
