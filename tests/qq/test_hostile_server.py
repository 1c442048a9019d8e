"""The client against a QQ server that lies (tests/hostile_qq.py), over real HTTP: a
reply dripped byte by byte ends at the request's deadline, a 200 MB reply is refused
after at most about 1 MiB read, paged lists that never end stop at 10,000 friends,
and numbers no column can hold are protocol errors, not crashes."""

from __future__ import annotations

import resource
import time

import pytest

from qqbridge.qq import codec, errors, model, password_md5
from qqbridge.qq.client import MAX_FRIENDS, MAX_REPLY_BYTES, QQClient
from tests.hostile_qq import HostileQQ, enc_list


@pytest.fixture
async def server():
    async with HostileQQ() as hostile:
        yield hostile


@pytest.fixture
async def client(server: HostileQQ):
    qq = QQClient(server.url, 10001, timeout=2.0)
    yield qq
    await qq.aclose()


def rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("command", ["GetMsgEx", "Login"])
async def test_a_reply_dripped_a_byte_at_a_time_ends_at_the_deadline(server, client, command) -> None:
    # A byte every 0.5 s: each read is quick, so only a deadline on the whole request ends it.
    reply = {"GetMsgEx": "RES=0&MN=0&MT=&UN=&MG=", "Login": "RES=0&RS=0&HI=60&LI=300"}[command]
    server.on(command, lambda f: server.drip(f"{server.echo(f)}&{reply}".encode(), every=0.5))
    started = time.monotonic()
    with pytest.raises(errors.OutcomeUnknown, match="no whole reply within 2 s"):
        if command == "Login":
            await client.login(password_md5("secret"))
        else:
            await client.fetch_messages()
    elapsed = time.monotonic() - started
    assert 1.9 <= elapsed < 2.5, elapsed
    assert 0 < server.sent_bytes < 10  # it was dripping, and the client did not wait for the rest


async def test_a_server_that_never_answers_ends_at_the_deadline(server, client) -> None:
    async def silent(fields):
        import asyncio

        await asyncio.sleep(30)

    server.on("GetMsgEx", silent)
    started = time.monotonic()
    with pytest.raises(errors.OutcomeUnknown):
        await client.fetch_messages(seq=7)
    assert time.monotonic() - started < 2.5


@pytest.mark.parametrize("declare", [False, True], ids=["chunked", "content-length"])
async def test_a_200_mb_reply_is_refused_after_a_bounded_read(server, client, declare) -> None:
    head = lambda f: f"{server.echo(f)}&RES=0&MN=1&MT=9,&UN=10002,&MG=".encode()  # noqa: E731
    server.on("GetMsgEx", lambda f: server.flood(head(f), 200 << 20, declare=declare))
    before = rss_peak_mb()
    started = time.monotonic()
    with pytest.raises(errors.RemoteProtocolError, match="refused past 1,048,576 bytes"):
        await client.fetch_messages()
    assert time.monotonic() - started < 2
    assert server.sent_bytes < 16 << 20  # the client stopped reading (socket buffers hold a few MB)
    assert rss_peak_mb() - before < 50


async def test_a_compressed_reply_is_refused(server, client) -> None:
    server.on("GetMsgEx", lambda f: server.flood(b"\x1f\x8b", 1 << 16, headers={"Content-Encoding": "gzip"}))
    with pytest.raises(errors.RemoteProtocolError, match="encoded"):
        await client.fetch_messages()


async def test_an_honest_full_reply_fits_the_cap(server, client) -> None:
    text = "長" * 233  # 699 bytes of UTF-8, 2,097 percent-encoded
    server.on("GetMsgEx", lambda f: {"MN": "50", "MT": enc_list([9] * 50), "UN": enc_list([10002] * 50),
                                     "MG": enc_list([text] * 50)})  # fmt: skip
    batch = await client.fetch_messages()
    assert len(batch.events) == 50 and batch.full and batch.events[0] == model.Message(10002, text)
    assert len(server.body({}, {"MG": enc_list([text] * 50)})) < MAX_REPLY_BYTES / 8


def list_page(start: int, size: int) -> dict[str, str]:
    uins = list(range(start, start + size))
    return {"FN": "0", "SN": str(size), "UN": enc_list(uins)}


async def test_a_friend_list_that_never_ends_stops_at_10000_friends(server, client) -> None:
    server.on("List", lambda f: list_page(10000 + int(f["UN"]), int(f["TN"])))  # FN=0 forever, new friends each page
    with pytest.raises(errors.RemoteProtocolError, match="more than 10,000 friends"):
        await client.friends()
    assert server.counts["LIST"] == -(-(MAX_FRIENDS + 1) // 160) == 63  # the page that passes 10,000


async def test_a_friend_list_that_repeats_its_page_stops_after_a_bounded_number_of_pages(server, client) -> None:
    server.on("List", lambda f: list_page(10000, int(f["TN"])))  # the offset ignored, FN=0 forever
    with pytest.raises(errors.RemoteProtocolError, match="did not end after 64 pages"):
        await client.friends()
    assert server.counts["LIST"] == 64


async def test_online_friends_that_never_end_stop_at_10000(server, client) -> None:
    def page(fields: dict[str, str]) -> dict[str, str]:
        start, size = 10000 + int(fields["UN"]), int(fields["TN"])
        return {"FC": enc_list([0] * size), "FN": "0", "SN": str(size), "ST": enc_list([10] * size),
                "UN": enc_list(range(start, start + size)), "NK": enc_list(["x"] * size)}  # fmt: skip

    server.on("Query_Stat", page)
    with pytest.raises(errors.RemoteProtocolError, match="Query_Stat: the QQ server lists more than 10,000"):
        await client.online_friends()
    assert server.counts["QUERY_STAT"] == 201


async def test_a_page_larger_than_asked_for_is_refused(server, client) -> None:
    server.on("List", lambda f: {**list_page(10000, 500), "FN": "1"})
    with pytest.raises(errors.RemoteProtocolError, match="a page of 500 friends, asked for 160"):
        await client.friends()


async def test_illegal_qq_numbers_in_the_friend_list_are_left_out(server, client) -> None:
    server.on("List", lambda f: {"FN": "1", "SN": "4", "UN": enc_list([1, 10002, 99999999999, 10002])})
    assert await client.friends() == [10002]


@pytest.mark.parametrize(
    "reply",
    ["RES=0&MN=1&MT=9,&UN=" + "9" * 5000 + ",&MG=x,", "RES=0&MN=1&MT=9,&UN=99999999999999999999,&MG=x,",
     "RES=0&MN=" + "1" * 30 + "&MT=9,&UN=10002,&MG=x,"],
    ids=["5000-digit sender", "sender past 2**63", "30-digit count"],
)  # fmt: skip
async def test_numbers_no_column_can_hold_are_protocol_errors(server, client, reply) -> None:
    server.on("GetMsgEx", lambda f: f"{server.echo(f)}&{reply}".encode())
    with pytest.raises(errors.RemoteProtocolError, match="not a number"):
        await client.fetch_messages()


def test_odd_digits_do_not_crash_the_codec() -> None:
    command = codec.GetMsgEx(10001, 5)
    batch = codec.decode(command, b"VER=1.1&CMD=GetMsgEx&SEQ=5&UIN=10001&RES=0&MN=1&MT=99,&UN=10002,&MG=%C2%B2,")
    assert batch.events == (model.UnknownEvent(99, 10002, "²"),)  # a superscript two is a digit, not a status
    profile = codec.decode(codec.GetInfo(10001, 6, target=10002, level=3),
                           b"VER=1.1&CMD=GetInfo&SEQ=6&UIN=10001&RES=0&LV=3&UN=10002&NK=B&AG=%C2%B2&SX=" + b"9" * 5000)  # fmt: skip
    assert profile.age is None and profile.gender is None and "SX" in profile.extra
