"""The codec against fixed wire strings: docs/protocol.md §5 and the seed's own example replies
(with the translation's stray spaces removed, as docs/protocol.md §2 reads them)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qqbridge.qq import codec, model, wire
from qqbridge.qq.errors import (
    IllegalAccount,
    LocalProtocolError,
    NotLoggedIn,
    NullReply,
    RateLimited,
    RemoteProtocolError,
    WrongPassword,
)

ECHO = "VER=1.1&CMD={cmd}&SEQ=7&UIN=106814"


def reply(command: codec.Command, rest: str) -> object:
    body = ECHO.format(cmd=command.CMD) + ("&" + rest if rest else "")
    return codec.decode(command, body.encode())


# ---- requests ----------------------------------------------------------------------------


def test_login_request_sends_md5_m5_and_lc() -> None:
    body = codec.encode(codec.Login(106814, 7, password_md5=codec.password_md5("secret")))
    assert body == b"VER=1.1&CMD=Login&SEQ=7&UIN=106814&PS=5EBE2294ECD0E0F08EAB7690D2A6EE69&M5=1&LC=9326B87B234E7235"


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (codec.ListFriends(1, 2, 160, 0), "CMD=List&SEQ=2&UIN=1&TN=160&UN=0"),
        (codec.QueryStat(1, 2, 50, 50), "CMD=Query_Stat&SEQ=2&UIN=1&TN=50&UN=50"),
        (codec.GetInfo(1, 2, target=106814, level=3), "CMD=GetInfo&SEQ=2&UIN=1&LV=3&UN=106814"),
        (codec.AddToList(1, 2, target=3), "CMD=AddToList&SEQ=2&UIN=1&UN=3"),
        (codec.AckAddToList(1, 2, 3, model.AckKind.REQUEST, "hi, it's me"),
         "CMD=Ack_AddToList&SEQ=2&UIN=1&UN=3&CD=2&RS=hi%2C%20it%27s%20me"),
        (codec.AckAddToList(1, 2, 3, model.AckKind.ACCEPT, ""), "CMD=Ack_AddToList&SEQ=2&UIN=1&UN=3&CD=0&RS="),
        (codec.DelFromList(1, 2, target=3), "CMD=DelFromList&SEQ=2&UIN=1&UN=3"),
        (codec.ChangeStat(1, 2, status=model.Status.INVISIBLE), "CMD=Change_Stat&SEQ=2&UIN=1&ST=40"),
        (codec.GetMsgEx(1, 2), "CMD=GetMsgEx&SEQ=2&UIN=1"),
        (codec.CltMsg(1, 2, target=3, text="a&b=c,d%e+f g\n中😀~"),
         "CMD=CLTMSG&SEQ=2&UIN=1&UN=3&MG=a%26b%3Dc%2Cd%25e%2Bf%20g%0A%E4%B8%AD%F0%9F%98%80~"),
        (codec.Logout(1, 2), "CMD=Logout&SEQ=2&UIN=1"),
    ],
)  # fmt: skip
def test_requests_on_the_wire(command: codec.Command, expected: str) -> None:
    assert codec.encode(command) == ("VER=1.1&" + expected).encode()


@pytest.mark.parametrize("seq", [0, 10_000_000_000, -1])
def test_seq_outside_one_to_ten_digits_is_our_error(seq: int) -> None:
    with pytest.raises(LocalProtocolError):
        codec.encode(codec.Logout(1, seq))


def test_message_over_700_bytes_or_empty_is_refused_before_sending() -> None:
    with pytest.raises(LocalProtocolError):
        codec.encode(codec.CltMsg(1, 2, target=3, text="中" * 234))  # 702 bytes
    with pytest.raises(LocalProtocolError):
        codec.encode(codec.CltMsg(1, 2, target=3, text=""))
    codec.encode(codec.CltMsg(1, 2, target=3, text="中" * 233 + "a"))  # exactly 700


def test_login_refuses_a_password_that_is_not_an_md5() -> None:
    with pytest.raises(LocalProtocolError):
        codec.encode(codec.Login(1, 2, password_md5="secret"))


# ---- replies: the seed's examples --------------------------------------------------------


def test_login_replies() -> None:
    login = codec.Login(106814, 7, password_md5="0" * 32)
    assert reply(login, "RES=0&RS=0&HI=60&LI=300") == model.LoginOk(heartbeat=60, idle_timeout=300)
    with pytest.raises(WrongPassword) as wrong:
        reply(login, "RES=0&RS=1&RA=%E5%AF%86%E7%A0%81%E9%94%99%E8%AF%AF")
    assert wrong.value.reason == "密码错误"
    with pytest.raises(IllegalAccount):
        reply(login, "RES=5")
    with pytest.raises(NullReply):
        codec.decode(login, b"")


def test_list_replies() -> None:
    assert reply(codec.ListFriends(106814, 7, 0), "RES=0&FN=9") == 9
    page = reply(codec.ListFriends(106814, 7, 160), "RES=0&FN=1&SN=3&UN=3814526,3814527,3814528,")
    assert page == model.Page(uins=(3814526, 3814527, 3814528), last=True)
    assert reply(codec.ListFriends(106814, 7, 2), "RES=0&FN=0&SN=2&UN=1,2,") == model.Page((1, 2), last=False)
    with pytest.raises(NotLoggedIn):
        reply(codec.ListFriends(106814, 7, 160), "RES=20")
    with pytest.raises(RemoteProtocolError):
        reply(codec.ListFriends(106814, 7, 160), "RES=0&FN=1&SN=2&UN=1,")


def test_query_stat_reply_of_the_seed() -> None:
    page = reply(codec.QueryStat(106814, 7), "RES=0&FC=0,&FN=1&SN=1&ST=10,&UN=106814,&NK=hackfan good,")
    assert page == model.OnlinePage(
        friends=(model.OnlineFriend(uin=106814, nick="hackfan good", status=model.Status.ONLINE, face=0),), last=True
    )
    empty = reply(codec.QueryStat(106814, 7), "RES=0&FC=&FN=1&SN=0&ST=&UN=&NK=")
    assert empty == model.OnlinePage(friends=(), last=True)


def test_query_stat_quirk_reply_without_res_is_a_protocol_error() -> None:
    # docs/protocol.md §5: TN=0 makes the body only the echo.
    with pytest.raises(RemoteProtocolError, match="no RES"):
        codec.decode(codec.QueryStat(106814, 7, 0), ECHO.format(cmd="Query_Stat").encode())


def test_getinfo_simple_normal_and_detailed_replies_of_the_seed() -> None:
    simple = reply(codec.GetInfo(106814, 7, target=106814, level=0), "RES=0&LV=0&UN=106814&NK=hackfan")
    assert (simple.uin, simple.nick, simple.level, simple.age) == (106814, "hackfan", 0, None)
    normal = reply(
        codec.GetInfo(106814, 7, target=106814, level=2),
        "RES=0&AD=address&AG=19&EM=hackfan@qq.com&FC=0&HP=http://blog.hackfan.net&JB=student&LV=2"
        "&PC=zip code&PH=phone&PR=the guy is updating .net framework......&PV=Jiangsu&RN=Hu Jiyang"
        "&SC=Graduate School&SX=0&UN=106814&NK=hackfan",
    )
    assert normal.age == 19 and normal.email == "hackfan@qq.com" and normal.homepage == "http://blog.hackfan.net"
    assert normal.gender is model.Gender.MALE and normal.real_name == "Hu Jiyang" and normal.blood_type is None
    detailed = reply(
        codec.GetInfo(106814, 7, target=106814, level=3),
        "RES=0&AD=address&AG=19&BT=2&CO=6&CT=Suzhou&CV=%01&CY=People's Republic of China&EM=hackfan@qq.com"
        "&FC=0&HP=http://blog.hackfan.net&ID=-&JB=student&LV=3&MO=136*&MT=0&MV=&PC=zip code&PH=phone"
        "&PR=intro&PV=Jiangsu&RN=Hu Jiyang&SC=Graduate School&SH=3&SX=0&UN=106814&NK=hackfan",
    )
    assert detailed.blood_type is model.BloodType.B and detailed.constellation is model.Constellation.CANCER
    assert detailed.zodiac is model.Zodiac.TIGER and detailed.city == "Suzhou"
    assert detailed.country == "People's Republic of China" and detailed.mobile == "136*"
    assert detailed.extra == {"CV": "\x01", "ID": "-", "MT": "0", "MV": ""}


def test_code_tables_are_spelled_out() -> None:
    assert [model.BloodType(i).label for i in range(6)] == ["", "A", "B", "O", "AB", "other"]
    assert model.Constellation(1).label == "Aquarius" and model.Constellation(12).label == "Capricorn"
    assert model.Zodiac(1).label == "Rat" and model.Zodiac(12).label == "Pig"
    assert model.Gender(1).label == "female"
    assert model.avatar_file(270) == "91.bmp"


def test_add_and_ack_and_delete_and_status_replies() -> None:
    for cd, policy in [(0, model.AddPolicy.ADDED), (1, model.AddPolicy.NEEDS_VERIFICATION), (2, model.AddPolicy.REFUSES_ALL)]:
        assert reply(codec.AddToList(106814, 7, target=5), f"RES=0&CD={cd}&UN=5") == model.AddResult(5, policy)
    assert reply(codec.AckAddToList(106814, 7, target=5), "RES=0") is None
    with pytest.raises(RateLimited):
        reply(codec.AckAddToList(106814, 7, target=5), "RES=3")
    assert reply(codec.DelFromList(106814, 7, target=5), "RES=0&") is None  # the seed's trailing &
    assert reply(codec.ChangeStat(106814, 7), "RES=0&") is None
    assert reply(codec.CltMsg(106814, 7, target=5, text="x"), "RES=0&") is None
    assert reply(codec.Logout(106814, 7), "RES=0") is None


def test_getmsgex_reply_of_the_seed() -> None:
    batch = reply(
        codec.GetMsgEx(106814, 7),
        "RES=0&MN=4&MT=99,99,99,9,&UN=36791785,99833581,99833581,106814,&MG=20,30,10,hi,",
    )
    assert batch == model.MessageBatch(
        events=(
            model.StatusChange(36791785, model.Status.OFFLINE),
            model.StatusChange(99833581, model.Status.BUSY),
            model.StatusChange(99833581, model.Status.ONLINE),
            model.Message(106814, "hi"),
        ),
        full=False,
    )
    assert reply(codec.GetMsgEx(106814, 7), "RES=0&MN=0&MT=&UN=&MG=") == model.MessageBatch((), full=False)


def test_getmsgex_every_event_kind_and_an_unknown_one() -> None:
    batch = reply(codec.GetMsgEx(106814, 7), "RES=0&MN=5&MT=2,3,4,9,77,&UN=5,6,7,8,9,&MG=let%20me%20in,,no,%2C,?,")
    assert batch.events == (
        model.FriendRequest(5, "let me in"),
        model.RequestAccepted(6),
        model.RequestRejected(7, "no"),
        model.Message(8, ","),
        model.UnknownEvent(77, 9, "?"),
    )


def test_full_getmsgex_reply_says_there_may_be_more() -> None:
    rest = "RES=0&MN=50&MT=" + "9," * 50 + "&UN=" + "5," * 50 + "&MG=" + "x," * 50
    assert reply(codec.GetMsgEx(106814, 7), rest).full


@pytest.mark.parametrize(
    "rest",
    [
        "RES=0&MN=2&MT=9,&UN=5,&MG=a,",  # MN disagrees with the lists
        "RES=0&MN=1&MT=9,&UN=x,&MG=a,",  # a sender that is not a number
        "RES=0&MN=1&MT=9,&UN=5,&MG=%E4,",  # not UTF-8
        "RES=0&MN=1&MT=9,&UN=5,&MG=%zz,",  # broken escape
        "RES=0&RES=0&MN=0&MT=&UN=&MG=",  # a key twice
        "RES=7",  # an unknown RES
        "RES=0&garbage",  # not KEY=VALUE
    ],
)
def test_malformed_replies_are_remote_protocol_errors(rest: str) -> None:
    with pytest.raises(RemoteProtocolError):
        reply(codec.GetMsgEx(106814, 7), rest)


def test_reply_for_another_request_is_refused() -> None:
    with pytest.raises(RemoteProtocolError, match="SEQ"):
        codec.decode(codec.GetMsgEx(106814, 7), b"VER=1.1&CMD=GetMsgEx&SEQ=8&UIN=106814&RES=0&MN=0&MT=&UN=&MG=")
    with pytest.raises(RemoteProtocolError, match="CMD"):
        codec.decode(codec.GetMsgEx(106814, 7), b"VER=1.1&CMD=List&SEQ=7&UIN=106814&RES=0&FN=0")


def test_lower_case_keys_and_hex_are_accepted() -> None:
    body = b"ver=1.1&cmd=cltmsg&seq=7&uin=106814&res=0"
    assert codec.decode(codec.CltMsg(106814, 7, target=5, text="x"), body) is None
    assert wire.decode_value("%e4%b8%ad") == "中"


# ---- list fields and text ----------------------------------------------------------------


def test_list_fields_have_one_comma_per_item() -> None:
    assert wire.encode_list([]) == ""
    assert wire.encode_list([""]) == ","
    assert wire.encode_list(["a,b", "c"]) == "a%2Cb,c,"
    assert wire.decode_list(",") == [""]
    assert wire.decode_list("a,b") == ["a", "b"]  # a decoder also accepts a missing last comma


@given(st.lists(st.text()))
def test_any_list_of_text_round_trips(items: list[str]) -> None:
    assert wire.decode_list(wire.encode_list(items)) == items


@given(st.text())
def test_encoded_values_use_only_unreserved_bytes_and_escapes(text: str) -> None:
    encoded = wire.encode_value(text)
    assert set(encoded) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~%")
    assert wire.decode_value(encoded) == text


@given(st.text(min_size=1), st.integers(min_value=4, max_value=700))
def test_split_message_keeps_order_characters_and_limit(text: str, limit: int) -> None:
    pieces = codec.split_message(text, limit)
    assert "".join(pieces) == text
    assert all(0 < len(p.encode()) <= limit for p in pieces)


def test_split_message_of_1000_bytes_cuts_on_a_character_boundary() -> None:
    text = "中" * 333 + "a"  # 1,000 bytes
    first, second = codec.split_message(text)
    assert first == "中" * 233 and len(first.encode()) == 699 and second == "中" * 100 + "a"
