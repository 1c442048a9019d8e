"""Every command's replies and errors (docs/protocol.md §5), over real HTTP with raw bytes."""

from __future__ import annotations

import asyncio

import pytest

from qqbridge.qqsim import Simulator
from tests.sim.accounts import ALICE, BOB, CAROL, DAVE, EVE, PASSWORDS
from tests.sim.conftest import SimFactory
from tests.sim.simclient import LC, QQ, body_of, md5


@pytest.fixture
async def qq(sim: Simulator) -> QQ:
    return QQ(sim.port)


async def login(qq: QQ, *uins: int) -> None:
    for uin in uins:
        assert (await qq.login(uin, PASSWORDS[uin]))["RES"] == "0"


async def text_of(qq: QQ, **fields: object) -> bytes:
    """The exact reply body for a request whose fields are given in order."""
    return (await qq.raw(body_of({"VER": "1.1", **fields}))).body


# -- transport (§1) ------------------------------------------------------------------


async def test_replies_carry_exactly_the_protocol_headers(qq: QQ) -> None:
    response = await qq.raw(b"VER=1.1&CMD=Logout&SEQ=1&UIN=10001")
    assert response.status == b"HTTP/1.1 200 OK"
    assert response.headers == [
        (b"Server", b"Tencent imserver/1.0.0"),
        (b"Content-Type", b"text/plain; charset=UTF-8"),
        (b"Content-Length", b"40"),
    ]
    assert response.body == b"VER=1.1&CMD=Logout&SEQ=1&UIN=10001&RES=0"
    assert response.rest == b""


# -- Login ---------------------------------------------------------------------------


async def test_login_success_reads_the_unscaled_hi_and_li(qq: QQ) -> None:
    body = await text_of(qq, CMD="login", SEQ="0042", UIN=ALICE, PS=md5("alice-pw").upper(), M5=1, LC=LC.lower())
    assert body == b"VER=1.1&CMD=Login&SEQ=0042&UIN=10001&RES=0&RS=0&HI=60&LI=300"


async def test_login_with_a_wrong_password(qq: QQ) -> None:
    reply = await qq.login(ALICE, "wrong")
    assert (reply["RES"], reply["RS"]) == ("0", "1") and reply["RA"]
    assert (await qq.call("List", ALICE))["RES"] == "20"


@pytest.mark.parametrize("uin", [100, 9999, 4294967296, 99999])
async def test_login_of_an_illegal_or_unknown_uin_is_res_5(qq: QQ, uin: int) -> None:
    assert (await qq.login(uin, "x"))["RES"] == "5"


@pytest.mark.parametrize(
    "change",
    [{"UIN": "abc"}, {"PS": ""}, {"LC": "9326B87B234E7236"}, {"M5": 0}, {"M5": "x"}, {"M5": None}, {"LC": None}, {"PS": None}],
)
async def test_login_null_cases(qq: QQ, change: dict) -> None:
    fields = {"VER": "1.1", "CMD": "Login", "SEQ": 1, "UIN": ALICE, "PS": md5("alice-pw"), "M5": 1, "LC": LC, **change}
    response = await qq.raw(body_of({k: v for k, v in fields.items() if v is not None}))
    assert response.body == b""
    assert (await qq.call("List", ALICE))["RES"] == "20"


# -- List -------------------------------------------------------------------------------


async def test_list_counts_and_pages_friends(qq: QQ) -> None:
    await login(qq, ALICE)
    assert await text_of(qq, CMD="List", SEQ=1, UIN=ALICE) == b"VER=1.1&CMD=List&SEQ=1&UIN=10001&RES=0&FN=2"
    assert (await qq.call("List", ALICE, TN=0))["FN"] == "2"
    assert await text_of(qq, CMD="List", SEQ=2, UIN=ALICE, TN=160, UN=0) == (
        b"VER=1.1&CMD=List&SEQ=2&UIN=10001&RES=0&FN=1&SN=2&UN=10002,10003,"
    )
    first = await qq.call("List", ALICE, TN=1, UN=0)
    assert (first["FN"], first["SN"], first["UN"]) == ("0", "1", ["10002"])
    second = await qq.call("List", ALICE, TN=1, UN=1)
    assert (second["FN"], second["SN"], second["UN"]) == ("1", "1", ["10003"])
    past = await text_of(qq, CMD="List", SEQ=3, UIN=ALICE, TN=5, UN=9)
    assert past == b"VER=1.1&CMD=List&SEQ=3&UIN=10001&RES=0&FN=1&SN=0&UN="


async def test_lists_are_one_way(qq: QQ) -> None:
    await login(qq, DAVE, EVE)
    assert (await qq.call("List", DAVE, TN=10))["UN"] == [str(ALICE)]
    assert (await qq.call("List", EVE, TN=10))["UN"] == []


@pytest.mark.parametrize("change", [{"TN": "a"}, {"UN": "-1"}, {"TN": ""}])
async def test_list_null_cases(qq: QQ, change: dict) -> None:
    await login(qq, ALICE)
    assert await qq.call("List", ALICE, **change) is None


# -- Query_Stat --------------------------------------------------------------------------


async def test_query_stat_lists_online_and_busy_friends_only(qq: QQ) -> None:
    await login(qq, ALICE)
    assert await text_of(qq, CMD="Query_Stat", SEQ=1, UIN=ALICE, TN=50, UN=0) == (
        b"VER=1.1&CMD=Query_Stat&SEQ=1&UIN=10001&RES=0&FC=&FN=1&SN=0&ST=&UN=&NK="
    )
    await login(qq, BOB, CAROL)
    assert await text_of(qq, CMD="Query_Stat", SEQ=2, UIN=ALICE, TN=50, UN=0) == (
        b"VER=1.1&CMD=Query_Stat&SEQ=2&UIN=10001&RES=0&FC=3,0,&FN=1&SN=2&ST=10,10,"
        b"&UN=10002,10003,&NK=Bob%2C%20the%20builder,%E5%8D%A1%E7%BD%97%E5%B0%94,"
    )
    assert (await qq.call("Change_Stat", BOB, ST=30))["RES"] == "0"
    assert (await qq.call("Change_Stat", CAROL, ST=40))["RES"] == "0"
    reply = await qq.call("Query_Stat", ALICE, TN=50, UN=0)
    assert (reply["SN"], reply["UN"], reply["ST"], reply["NK"]) == ("1", ["10002"], ["30"], ["Bob, the builder"])
    await asyncio.sleep(0.03)  # past the 2 s (x 0.01) between changes
    assert (await qq.call("Change_Stat", BOB, ST=20))["RES"] == "0"
    assert (await qq.call("Query_Stat", ALICE, TN=50))["SN"] == "0"


async def test_query_stat_pages(qq: QQ) -> None:
    await login(qq, ALICE, BOB, CAROL)
    first = await qq.call("Query_Stat", ALICE, TN=1, UN=0)
    second = await qq.call("Query_Stat", ALICE, TN=1, UN=1)
    assert (first["FN"], first["SN"], first["UN"], first["FC"]) == ("0", "1", ["10002"], ["3"])
    assert (second["FN"], second["SN"], second["UN"]) == ("1", "1", ["10003"])


async def test_query_stat_without_tn_writes_three_raw_responses(qq: QQ) -> None:
    await login(qq, ALICE, BOB)
    response = await qq.raw(b"VER=1.1&CMD=query_stat&SEQ=7&UIN=10001")
    echo = b"VER=1.1&CMD=Query_Stat&SEQ=7&UIN=10001"
    head = b"HTTP/1.1 200 OK\r\nServer: Tencent imserver/1.0.0\r\nContent-Type: text/plain; charset=UTF-8\r\n"
    assert response.body == echo
    assert response.rest == (
        head + b"Content-Length: 49\r\n\r\n" + echo + b"&RES=0&FN=1"
        + head + b"Content-Length: 70\r\n\r\n" + echo + b"&RES=0&FC=&FN=1&SN=0&ST=&UN=&NK="
    )  # fmt: skip
    assert (await qq.raw(b"VER=1.1&CMD=Query_Stat&SEQ=8&UIN=10001&TN=0")).rest.count(b"HTTP/1.1 200 OK") == 2


# -- GetInfo -------------------------------------------------------------------------------


async def test_getinfo_simple_normal_and_detailed(qq: QQ) -> None:
    await login(qq, EVE)  # any account may be asked about, not only friends
    for level in (0, 1):
        assert await text_of(qq, CMD="GetInfo", SEQ=1, UIN=EVE, LV=level, UN=ALICE) == (
            b"VER=1.1&CMD=GetInfo&SEQ=1&UIN=10005&RES=0&LV=%d&UN=10001&NK=Alice" % level
        )
    assert await text_of(qq, CMD="GetInfo", SEQ=2, UIN=EVE, LV=2, UN=ALICE) == (
        b"VER=1.1&CMD=GetInfo&SEQ=2&UIN=10005&RES=0&AD=&AG=19&EM=alice%40example.org&FC=270&HP=&JB="
        b"&LV=2&PC=&PH=&PR=&PV=&RN=&SC=&SX=1&UN=10001&NK=Alice"
    )
    assert await text_of(qq, CMD="GetInfo", SEQ=3, UIN=EVE, LV=3, UN=ALICE) == (
        b"VER=1.1&CMD=GetInfo&SEQ=3&UIN=10005&RES=0&AD=&AG=19&BT=1&CO=0&CT=Suzhou&CV=&CY="
        b"&EM=alice%40example.org&FC=270&HP=&ID=&JB=&LV=3&MO=&MT=&MV=&PC=&PH=&PR=&PV=&RN=&SC=&SH=0"
        b"&SX=1&UN=10001&NK=Alice"
    )
    detailed = await qq.call("GetInfo", EVE, LV=9, UN=CAROL)
    assert (detailed["LV"], detailed["NK"], detailed["FC"], detailed["BT"], detailed["SX"]) == ("9", "卡罗尔", "0", "0", "")


async def test_getinfo_errors(qq: QQ) -> None:
    await login(qq, EVE)
    assert (await qq.call("GetInfo", EVE, LV=1, UN=99999))["RES"] == "5"
    assert (await qq.call("GetInfo", EVE, LV=1, UN=100))["RES"] == "5"
    assert await qq.call("GetInfo", EVE, LV="x", UN=ALICE) is None
    assert await qq.call("GetInfo", EVE, UN=ALICE) is None


# -- AddToList, Ack_AddToList, DelFromList ---------------------------------------------------


async def test_add_to_list_by_the_targets_setting(qq: QQ) -> None:
    await login(qq, EVE, ALICE)
    assert await text_of(qq, CMD="AddToList", SEQ=1, UIN=EVE, UN=BOB) == (
        b"VER=1.1&CMD=AddToList&SEQ=1&UIN=10005&RES=0&CD=0&UN=10002"
    )
    assert (await qq.call("List", EVE, TN=10))["UN"] == [str(BOB)]
    assert (await qq.call("AddToList", EVE, UN=ALICE))["CD"] == "1"
    assert (await qq.call("AddToList", EVE, UN=CAROL))["CD"] == "2"
    assert (await qq.call("List", EVE, TN=10))["UN"] == [str(BOB)]
    assert (await qq.call("AddToList", ALICE, UN=CAROL))["CD"] == "0"  # an existing friend


@pytest.mark.parametrize("target", [EVE, 99999, 100])
async def test_add_to_list_of_self_or_unknown_is_res_5(qq: QQ, target: int) -> None:
    await login(qq, EVE)
    assert (await qq.call("AddToList", EVE, UN=target))["RES"] == "5"


async def test_friend_request_accepted(qq: QQ) -> None:
    await login(qq, EVE, ALICE)
    assert (await qq.call("Ack_AddToList", EVE, UN=ALICE, CD=2, RS="I'm Eve, 你好"))["RES"] == "0"
    assert await qq.messages(ALICE) == [(2, EVE, "I'm Eve, 你好")]
    assert await text_of(qq, CMD="Ack_AddToList", SEQ=1, UIN=ALICE, UN=EVE, CD=0, RS="") == (
        b"VER=1.1&CMD=Ack_AddToList&SEQ=1&UIN=10001&RES=0"
    )
    assert await text_of(qq, CMD="GetMsgEx", SEQ=2, UIN=EVE) == (
        b"VER=1.1&CMD=GetMsgEx&SEQ=2&UIN=10005&RES=0&MN=1&MT=3,&UN=10001,&MG=,"
    )
    assert str(ALICE) in (await qq.call("List", EVE, TN=10))["UN"]
    assert str(EVE) in (await qq.call("List", ALICE, TN=10))["UN"]


async def test_friend_request_rejected_or_refused(qq: QQ) -> None:
    await login(qq, EVE, ALICE, CAROL)
    await qq.call("Ack_AddToList", EVE, UN=ALICE, CD=2, RS="hi")
    assert (await qq.call("Ack_AddToList", ALICE, UN=EVE, CD=1, RS="who?"))["RES"] == "0"
    assert await qq.messages(EVE) == [(4, ALICE, "who?")]
    assert (await qq.call("Ack_AddToList", EVE, UN=CAROL, CD=2, RS="hi"))["RES"] == "0"
    assert [m for m in await qq.messages(CAROL) if m[0] != 99] == []  # accepts no one
    assert (await qq.call("Ack_AddToList", CAROL, UN=EVE, CD=0, RS=""))["RES"] == "0"  # nothing pending
    assert (await qq.call("List", CAROL, TN=10))["UN"] == [str(ALICE)]


async def test_ack_add_to_list_errors(qq: QQ) -> None:
    await login(qq, EVE)
    assert (await qq.call("Ack_AddToList", EVE, UN=99999, CD=2, RS="x"))["RES"] == "5"
    assert await qq.call("Ack_AddToList", EVE, UN=ALICE, CD="x", RS="x") is None
    assert await qq.call("Ack_AddToList", EVE, UN=ALICE, CD=2) is None  # RS missing
    response = await qq.raw(b"VER=1.1&CMD=Ack_AddToList&SEQ=1&UIN=10005&UN=10001&CD=2&RS=%FF")
    assert response.body == b""
    await login(qq, ALICE)
    assert await qq.messages(ALICE) == []


async def test_del_from_list_removes_one_direction(qq: QQ) -> None:
    await login(qq, ALICE, BOB)
    assert await text_of(qq, CMD="DelFromList", SEQ=1, UIN=ALICE, UN=BOB) == (
        b"VER=1.1&CMD=DelFromList&SEQ=1&UIN=10001&RES=0"
    )
    assert (await qq.call("List", ALICE, TN=10))["UN"] == [str(CAROL)]
    assert (await qq.call("List", BOB, TN=10))["UN"] == [str(ALICE)]
    assert (await qq.call("DelFromList", ALICE, UN=EVE))["RES"] == "0"  # not a friend
    assert (await qq.call("DelFromList", ALICE, UN=99999))["RES"] == "5"
    assert await qq.call("DelFromList", ALICE, UN="bob") is None


# -- Change_Stat -------------------------------------------------------------------------------


async def test_change_stat_tells_everyone_who_lists_you(make_sim: SimFactory) -> None:
    sim = await make_sim(time_scale=0.001)  # the 2 s gap becomes 2 ms
    qq = QQ(sim.port)
    await login(qq, ALICE, BOB, CAROL, DAVE)
    await qq.messages(BOB)
    for status in (30, 40, 20, 10):
        assert (await qq.call("Change_Stat", ALICE, ST=status))["RES"] == "0"
        await asyncio.sleep(0.005)
    expected = [(99, ALICE, "30"), (99, ALICE, "20"), (99, ALICE, "20"), (99, ALICE, "10")]
    assert await qq.messages(BOB) == expected
    assert (await qq.messages(DAVE))[-4:] == expected  # Dave lists Alice; Alice does not list Dave
    assert [m for m in await qq.messages(ALICE) if m[1] == DAVE] == []


@pytest.mark.parametrize("status", ["0", "50", "41", "x", ""])
async def test_change_stat_to_an_unknown_status_is_null(qq: QQ, status: str) -> None:
    await login(qq, ALICE)
    assert await qq.call("Change_Stat", ALICE, ST=status) is None


# -- GetMsgEx and CLTMSG ------------------------------------------------------------------------


async def test_getmsgex_empty(qq: QQ) -> None:
    await login(qq, EVE)
    assert await text_of(qq, CMD="GetMsgEx", SEQ=1, UIN=EVE) == b"VER=1.1&CMD=GetMsgEx&SEQ=1&UIN=10005&RES=0&MN=0&MT=&UN=&MG="


async def test_messages_wait_for_an_offline_account(qq: QQ) -> None:
    await login(qq, ALICE)
    for text in ["hi, Eve", "100% sure & =", "你好 🐧", "+plus+"]:
        assert (await qq.call("CLTMSG", ALICE, UN=EVE, MG=text))["RES"] == "0"
    await login(qq, EVE)
    assert await text_of(qq, CMD="GetMsgEx", SEQ=2, UIN=EVE) == (
        b"VER=1.1&CMD=GetMsgEx&SEQ=2&UIN=10005&RES=0&MN=4&MT=9,9,9,9,&UN=10001,10001,10001,10001,"
        b"&MG=hi%2C%20Eve,100%25%20sure%20%26%20%3D,%E4%BD%A0%E5%A5%BD%20%F0%9F%90%A7,%2Bplus%2B,"
    )
    assert await qq.messages(EVE) == []


async def test_cltmsg_length_limit_is_700_bytes(qq: QQ) -> None:
    await login(qq, ALICE)
    assert (await qq.call("CLTMSG", ALICE, UN=EVE, MG="x" * 700))["RES"] == "0"
    assert (await qq.call("CLTMSG", ALICE, UN=EVE, MG="好" * 233 + "x"))["RES"] == "0"  # 700 bytes
    assert await qq.call("CLTMSG", ALICE, UN=EVE, MG="x" * 701) is None
    assert await qq.call("CLTMSG", ALICE, UN=EVE, MG="好" * 234) is None  # 702 bytes
    await login(qq, EVE)
    assert [len(m[2].encode()) for m in await qq.messages(EVE)] == [700, 700]


async def test_cltmsg_errors(qq: QQ) -> None:
    await login(qq, ALICE)
    assert (await qq.call("CLTMSG", ALICE, UN=99999, MG="x"))["RES"] == "5"
    assert await qq.call("CLTMSG", ALICE, UN="x", MG="x") is None
    assert await qq.call("CLTMSG", ALICE, UN=EVE, MG="") is None
    assert await qq.call("CLTMSG", ALICE, UN=EVE) is None
    assert (await qq.call("CLTMSG", ALICE, UN=EVE, MG="hello without the quirk"))["RES"] == "0"


async def test_lowercase_h_quirk(make_sim: SimFactory) -> None:
    sim = await make_sim(quirks=("lowercase-h",))
    qq = QQ(sim.port)
    await login(qq, ALICE, EVE)
    assert await qq.call("CLTMSG", ALICE, UN=EVE, MG="hello") is None
    assert (await qq.call("CLTMSG", ALICE, UN=EVE, MG="HELLO, 你好"))["RES"] == "0"
    assert await qq.messages(EVE) == [(9, ALICE, "HELLO, 你好")]


# -- sessions ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cmd", "params"),
    [
        ("List", {}),
        ("Query_Stat", {"TN": 1}),
        ("GetInfo", {"LV": 1, "UN": BOB}),
        ("AddToList", {"UN": BOB}),
        ("Ack_AddToList", {"UN": BOB, "CD": 2, "RS": ""}),
        ("DelFromList", {"UN": BOB}),
        ("Change_Stat", {"ST": 10}),
        ("GetMsgEx", {}),
        ("CLTMSG", {"UN": BOB, "MG": "x"}),
    ],
)
async def test_every_command_needs_a_session(qq: QQ, cmd: str, params: dict) -> None:
    body = await text_of(qq, CMD=cmd.upper(), SEQ=3, UIN=ALICE, **params)
    assert body == f"VER=1.1&CMD={cmd}&SEQ=3&UIN=10001&RES=20".encode()


async def test_logout_ends_the_session_and_tells_friends(qq: QQ) -> None:
    await login(qq, ALICE, BOB)
    await qq.messages(BOB)
    assert (await qq.call("Logout", ALICE))["RES"] == "0"
    assert (await qq.call("GetMsgEx", ALICE))["RES"] == "20"
    assert await qq.messages(BOB) == [(99, ALICE, "20")]
    assert (await qq.call("Logout", ALICE))["RES"] == "0"


async def test_two_addresses_hold_separate_sessions(sim: Simulator) -> None:
    home, away = QQ(sim.port, "127.0.0.1"), QQ(sim.port, "127.0.0.2")
    await login(home, ALICE)
    await login(away, BOB)
    assert (await away.call("List", ALICE))["RES"] == "20"
    assert (await home.call("List", BOB))["RES"] == "20"
    await login(away, ALICE)  # a second computer for Alice: status unchanged, nothing sent
    assert (await away.call("Logout", ALICE))["RES"] == "0"
    assert (await home.call("List", ALICE))["RES"] == "0"
    assert await away.messages(BOB) == [(99, ALICE, "10")]  # no offline: Alice is still on at home
