"""The simulator's rules over a stepped clock: judging order, sessions, windows, memory.

These drive `commands.answer` directly (no sockets) with time in the protocol's own
seconds, so every boundary of §3-§5 can be hit exactly.
"""

from __future__ import annotations

import hashlib
from urllib.parse import quote

import pytest

from qqbridge.qqsim import World, load_fixture
from qqbridge.qqsim.commands import answer
from tests.sim.accounts import ACCOUNTS, ALICE, BOB, CAROL, DAVE, EVE, PASSWORDS
from tests.sim.simclient import LC, LIST_FIELDS, read_fields

HOME, AWAY = "127.0.0.1", "127.0.0.2"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Driver:
    """Sends bodies straight to `answer` and reads replies as the wire shows them."""

    def __init__(self, time_scale: float = 1.0, quirks: tuple[str, ...] = ()) -> None:
        self.clock = Clock()
        self.world = World(load_fixture(ACCOUNTS), time_scale=time_scale, quirks=quirks, clock=self.clock)
        self.seq = 0
        self.delay = 0.0

    def at(self, t: float) -> Driver:
        self.clock.now = 1000.0 + t
        return self

    def __call__(self, cmd: str, uin: int, seq: int | None = None, ip: str = HOME, **params: object) -> dict | None:
        if seq is None:
            self.seq += 1
            seq = self.seq
        fields = {"VER": "1.1", "CMD": cmd, "SEQ": seq, "UIN": uin, **params}
        body = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in fields.items()).encode()
        reply = answer(self.world, ip, body)
        self.delay = reply.delay
        if reply.body is None:
            return None
        return read_fields(reply.body.encode(), LIST_FIELDS.get(cmd.lower(), set()))

    def res(self, cmd: str, uin: int, **kw: object) -> str | None:
        reply = self(cmd, uin, **kw)
        return None if reply is None else reply["RES"]

    def login(self, uin: int, ip: str = HOME) -> None:
        md5 = hashlib.md5(PASSWORDS[uin].encode()).hexdigest()
        assert self.res("Login", uin, ip=ip, PS=md5, M5=1, LC=LC) == "0"

    def inbox(self, uin: int) -> list[tuple[int, int, str]]:
        return [(m.kind, m.sender, m.text) for m in self.world.queued(uin)]


@pytest.fixture
def qq() -> Driver:
    return Driver()


# -- judging order (§3) -----------------------------------------------------------


def test_malformed_comes_before_the_session(qq: Driver) -> None:
    assert qq("CLTMSG", ALICE, UN="x", MG="hi") is None
    assert qq.res("CLTMSG", ALICE, UN=BOB, MG="hi") == "20"


def test_no_session_comes_before_an_unknown_target(qq: Driver) -> None:
    assert qq.res("GetInfo", ALICE, LV=1, UN=99999) == "20"


def test_a_remembered_seq_comes_before_a_penalty_window(qq: Driver) -> None:
    qq.login(ALICE)
    for i in range(5):
        assert qq.at(i * 0.1).res("CLTMSG", ALICE, seq=100 + i, UN=BOB, MG=f"m{i}") == "0"
    assert qq.at(1).res("CLTMSG", ALICE, seq=200, UN=BOB, MG="too fast") == "3"
    assert qq.at(2).res("CLTMSG", ALICE, seq=104, UN=BOB, MG="m4") == "0"
    assert qq.delay == 0


def test_a_penalty_window_comes_before_an_unknown_target(qq: Driver) -> None:
    qq.login(ALICE)
    for i in range(5):
        qq.at(i * 0.1)("CLTMSG", ALICE, UN=BOB, MG=f"m{i}")
    assert qq.at(1).res("CLTMSG", ALICE, UN=BOB, MG="six") == "3"
    assert qq.at(2).res("CLTMSG", ALICE, UN=99999, MG="x") == "3"
    assert qq.at(22).res("CLTMSG", ALICE, UN=99999, MG="x") == "5"


# -- sessions (§4) ------------------------------------------------------------------


def test_a_session_expires_after_li_without_requests_and_friends_are_told(qq: Driver) -> None:
    qq.login(ALICE)
    qq.at(299).res("List", ALICE)  # refreshes
    assert qq.at(598).res("List", ALICE) == "0"
    assert qq.at(898.5).res("List", ALICE) == "20"
    assert qq.world.status(ALICE) == 20
    assert qq.inbox(BOB) == [(99, ALICE, "10"), (99, ALICE, "20")]


def test_the_sweep_tells_friends_without_any_request(qq: Driver) -> None:
    qq.login(ALICE)
    qq.at(300).world.sweep()
    assert qq.world.status(ALICE) == 10
    qq.at(301).world.sweep()
    assert qq.world.status(ALICE) == 20
    assert qq.world.sessions() == []
    assert qq.inbox(CAROL)[-1] == (99, ALICE, "20")


def test_time_scale_shortens_the_session_life() -> None:
    qq = Driver(time_scale=0.5)
    qq.login(ALICE)
    assert qq.at(149).res("List", ALICE) == "0"
    assert qq.at(299.5).res("List", ALICE) == "20"


def test_the_account_goes_offline_when_its_last_session_ends(qq: Driver) -> None:
    qq.login(ALICE, HOME)
    qq.at(200).login(ALICE, AWAY)  # a second address: nothing is sent
    assert qq.inbox(BOB) == [(99, ALICE, "10")]
    qq.at(400).world.sweep()  # HOME expired, AWAY lives
    assert qq.world.status(ALICE) == 10
    assert qq.res("List", ALICE, ip=HOME) == "20"
    assert qq.res("List", ALICE, ip=AWAY) == "0"
    assert qq.res("Logout", ALICE, ip=AWAY) == "0"
    assert qq.world.status(ALICE) == 20
    assert qq.inbox(BOB) == [(99, ALICE, "10"), (99, ALICE, "20")]


def test_logging_in_again_keeps_the_status(qq: Driver) -> None:
    qq.login(ALICE)
    assert qq.at(5).res("Change_Stat", ALICE, ST=30) == "0"
    qq.at(10).login(ALICE)
    assert qq.world.status(ALICE) == 30
    assert qq.inbox(BOB) == [(99, ALICE, "10"), (99, ALICE, "30")]


def test_logout_without_a_session_is_still_res_0(qq: Driver) -> None:
    assert qq.res("Logout", ALICE) == "0"
    assert qq.res("Logout", 100) == "0"


# -- SEQ memory (§4) ----------------------------------------------------------------


def test_a_repeated_seq_gets_the_same_reply_and_no_second_delivery(qq: Driver) -> None:
    qq.login(ALICE)
    first = qq("CLTMSG", ALICE, seq=77, UN=BOB, MG="once")
    qq.at(299).res("List", ALICE)  # keep the session alive
    assert qq.at(599)("CLTMSG", ALICE, seq=77, UN=BOB, MG="once") == first
    assert [m for m in qq.inbox(BOB) if m[0] == 9] == [(9, ALICE, "once")]
    assert qq.at(601).res("CLTMSG", ALICE, seq=77, UN=BOB, MG="once") == "0"  # memory has lapsed
    assert [m for m in qq.inbox(BOB) if m[0] == 9] == [(9, ALICE, "once")] * 2


def test_seq_memory_is_per_uin_and_command(qq: Driver) -> None:
    qq.login(ALICE)
    qq.login(BOB)
    assert qq.res("AddToList", ALICE, seq=5, UN=DAVE) == "0"
    assert qq("DelFromList", ALICE, seq=5, UN=DAVE)["RES"] == "0"
    assert DAVE not in qq.world.friends(ALICE)
    assert qq("AddToList", BOB, seq=5, UN=99999)["RES"] == "5"


def test_a_lost_getmsgex_batch_can_be_fetched_again(qq: Driver) -> None:
    qq.login(ALICE)
    qq.login(BOB)
    qq("CLTMSG", ALICE, UN=BOB, MG="hello")
    first = qq("GetMsgEx", BOB, seq=9)
    assert first["MN"] == "2"
    assert qq("GetMsgEx", BOB, seq=9) == first
    assert qq("GetMsgEx", BOB, seq=10)["MN"] == "0"


def test_refusals_are_not_remembered(qq: Driver) -> None:
    qq.login(ALICE)
    assert qq.res("Change_Stat", ALICE, seq=1, ST=30) == "0"
    assert qq.at(1).res("Change_Stat", ALICE, seq=2, ST=10) == "3"
    assert qq.at(22).res("Change_Stat", ALICE, seq=2, ST=10) == "0"
    assert qq.world.status(ALICE) == 10
    qq.at(23).res("Logout", ALICE)
    assert qq.at(24).res("Change_Stat", ALICE, seq=3, ST=30) == "20"
    qq.at(25).login(ALICE)
    assert qq.at(26).res("Change_Stat", ALICE, seq=3, ST=30) == "0"


# -- rate limits and penalty windows (§5) -------------------------------------------


def test_a_sixth_delivered_message_within_5_s_opens_a_20_s_window(qq: Driver) -> None:
    qq.login(ALICE)
    for i in range(5):
        assert qq.at(i).res("CLTMSG", ALICE, UN=BOB, MG=f"m{i}") == "0"
    assert qq.at(4.9).res("CLTMSG", ALICE, UN=BOB, MG="six") == "3"
    assert qq.delay == 20
    assert qq.at(24.8).res("CLTMSG", ALICE, UN=BOB, MG="in window") == "3"  # does not extend it
    assert qq.at(24.9).res("CLTMSG", ALICE, UN=BOB, MG="after") == "0"
    assert [m[2] for m in qq.inbox(BOB) if m[0] == 9] == ["m0", "m1", "m2", "m3", "m4", "after"]


def test_messages_spread_over_5_s_are_not_limited(qq: Driver) -> None:
    qq.login(ALICE)
    for i in range(12):
        assert qq.at(i * 1.01).res("CLTMSG", ALICE, UN=BOB, MG=f"m{i}") == "0"


def test_only_delivered_messages_count(qq: Driver) -> None:
    qq.login(ALICE)
    for i in range(4):
        qq("CLTMSG", ALICE, UN=BOB, MG=f"m{i}")
    for _ in range(3):
        assert qq.res("CLTMSG", ALICE, UN=99999, MG="nobody") == "5"
        assert qq("CLTMSG", ALICE, UN=BOB, MG="") is None
    assert qq.res("CLTMSG", ALICE, UN=BOB, MG="fifth") == "0"
    assert qq.res("CLTMSG", ALICE, UN=BOB, MG="sixth") == "3"


def test_windows_are_per_account_and_command(qq: Driver) -> None:
    qq.login(ALICE)
    qq.login(BOB)
    for i in range(6):
        qq("CLTMSG", ALICE, UN=BOB, MG=f"m{i}")
    assert qq.res("CLTMSG", BOB, UN=ALICE, MG="bob is fine") == "0"
    assert qq.res("Change_Stat", ALICE, ST=30) == "0"


def test_change_stat_within_2_s_opens_a_window(qq: Driver) -> None:
    qq.login(ALICE)
    assert qq.res("Change_Stat", ALICE, ST=30) == "0"  # Login is not a Change_Stat
    assert qq.at(1.9).res("Change_Stat", ALICE, ST=10) == "3"
    assert qq.delay == 20
    assert qq.at(21.8).res("Change_Stat", ALICE, ST=10) == "3"
    assert qq.at(21.9).res("Change_Stat", ALICE, ST=10) == "0"
    assert qq.at(23.95).res("Change_Stat", ALICE, ST=30) == "0"
    assert [m[2] for m in qq.inbox(BOB)] == ["10", "30", "10", "30"]


def test_a_repeated_delete_within_30_s_is_refused_slowly(qq: Driver) -> None:
    qq.login(ALICE)
    assert qq.res("DelFromList", ALICE, UN=BOB) == "0"
    assert qq.at(10).res("DelFromList", ALICE, UN=BOB) == "3"
    assert qq.delay == 30
    assert qq.res("DelFromList", ALICE, UN=CAROL) == "0"  # another UN is not a repeat
    assert qq.at(30).res("DelFromList", ALICE, UN=BOB) == "0"  # the refusal did not restart it
    assert qq.at(59).res("DelFromList", ALICE, UN=BOB) == "3"


# -- friend requests -----------------------------------------------------------------


def test_verification_round_trip(qq: Driver) -> None:
    qq.login(EVE)
    reply = qq("AddToList", EVE, UN=ALICE)
    assert (reply["RES"], reply["CD"], reply["UN"]) == ("0", "1", str(ALICE))
    assert ALICE not in qq.world.friends(EVE)
    assert qq.res("Ack_AddToList", EVE, UN=ALICE, CD=2, RS="hi, it's Eve") == "0"
    assert qq.inbox(ALICE) == [(2, EVE, "hi, it's Eve")]
    qq.login(ALICE)
    assert qq.res("Ack_AddToList", ALICE, UN=EVE, CD=0, RS="") == "0"
    assert ALICE in qq.world.friends(EVE) and EVE in qq.world.friends(ALICE)
    assert qq.inbox(EVE) == [(3, ALICE, "")]


def test_rejecting_a_request(qq: Driver) -> None:
    qq.login(EVE)
    qq.login(ALICE)
    qq("Ack_AddToList", EVE, UN=ALICE, CD=2, RS="please")
    assert qq.res("Ack_AddToList", ALICE, UN=EVE, CD=1, RS="no, sorry") == "0"
    assert qq.inbox(EVE) == [(4, ALICE, "no, sorry")]
    assert qq.res("Ack_AddToList", ALICE, UN=EVE, CD=0, RS="") == "0"  # nothing pending any more
    assert EVE not in qq.world.friends(ALICE)


def test_verify_twice_quirk_refuses_every_other_request() -> None:
    qq = Driver(quirks=("verify-twice",))
    qq.login(EVE)
    assert qq.res("Ack_AddToList", EVE, seq=1, UN=ALICE, CD=2, RS="one") == "3"
    assert qq.delay == 20
    assert qq.inbox(ALICE) == []
    assert qq.res("Ack_AddToList", EVE, seq=1, UN=ALICE, CD=2, RS="one") == "0"
    assert qq.inbox(ALICE) == [(2, EVE, "one")]
    assert qq.res("Ack_AddToList", EVE, UN=BOB, CD=2, RS="b") == "3"  # counted per target
    assert qq.res("Ack_AddToList", EVE, UN=ALICE, CD=2, RS="two") == "3"
