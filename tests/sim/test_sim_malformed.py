"""Malformed requests and non-HTTP input get NULL and change nothing (§2, §3)."""

from __future__ import annotations

import asyncio

import pytest

from qqbridge.qqsim import Simulator
from tests.sim.accounts import ALICE, BOB, PASSWORDS
from tests.sim.simclient import QQ, exchange, http_request, parse_response

NULL_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: Tencent imserver/1.0.0\r\n"
    b"Content-Type: text/plain; charset=UTF-8\r\nContent-Length: 0\r\n\r\n"
)

GOOD = "VER=1.1&CMD=CLTMSG&SEQ=55&UIN=10001&UN=10002&MG=hi"


@pytest.fixture
async def qq(sim: Simulator) -> QQ:
    qq = QQ(sim.port)
    for uin in (ALICE, BOB):
        assert (await qq.login(uin, PASSWORDS[uin]))["RES"] == "0"
    await qq.messages(BOB)  # Alice's login notice
    return qq


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"VER=1.1&CMD=CLTMSG&SEQ=55&UIN=10001&UN=10002&MG=hi%",  # bad escapes
        b"VER=1.1&CMD=CLTMSG&SEQ=55&UIN=10001&UN=10002&MG=hi%2",
        b"VER=1.1&CMD=CLTMSG&SEQ=55&UIN=10001&UN=10002&MG=hi%zz",
        b"VER=1.1&CMD=CLTMSG&SEQ=55&UIN=10001&UN=10002&MG=%FFhi",  # not UTF-8
        b"VER=1.1&CMD=CLTMSG&SEQ=55&UIN=10001&UN=10002&MG=\xc3(",
        b"VER=1.1&CMD=CLTMSG&SEQ=55&UIN=10001&UN=10002&MG=%ED%A0%80",
        b"VER=1.1&CMD=CLTMSG&SEQ=55&UIN=10001&UN=10002&MG=hi&mg=again",  # duplicate key
        b"VER=1.1&CMD=CLTMSG&SEQ=55&UIN=10001&UIN=10001&UN=10002&MG=hi",
        b"VER=1.1&CMD=CLTMSG&SEQ=55&UIN=10001&MG=hi",  # missing UN
        b"VER=1.1&CMD=CLTMSG&SEQ=55&UIN=10001&UN=10002",  # missing MG
        b"VER=1.1&CMD=CLTMSG&SEQ=55&UN=10002&MG=hi",  # missing UIN
        b"VER=1.1&CMD=CLTMSG&UIN=10001&UN=10002&MG=hi",  # missing SEQ
        b"CMD=CLTMSG&SEQ=55&UIN=10001&UN=10002&MG=hi",  # missing VER
        b"VER=1.1&SEQ=55&UIN=10001&UN=10002&MG=hi",  # missing CMD
        b"VER=1.1&CMD=CLTMSG&SEQ=55&UIN=1000l&UN=10002&MG=hi",  # non-numeric UIN
        b"VER=1.1&CMD=CLTMSG&SEQ=55&UIN=+10001&UN=10002&MG=hi",
        b"VER=1.1&CMD=CLTMSG&SEQ=55&UIN=10001&UN=1e5&MG=hi",
        b"VER=1.1&CMD=CLTMSG&SEQ=55&UIN=10001&UN=%2010002&MG=hi",
        b"VER=1.2&CMD=CLTMSG&SEQ=55&UIN=10001&UN=10002&MG=hi",
        b"VER=1.10&CMD=CLTMSG&SEQ=55&UIN=10001&UN=10002&MG=hi",
        b"VER=1.1&CMD=SENDMSG&SEQ=55&UIN=10001&UN=10002&MG=hi",  # unknown command
        "VER=1.1&CMD=CLTMſG&SEQ=55&UIN=10001&UN=10002&MG=hi".encode(),  # "ſ".upper() == "S"
        b"VER=1.1&CMD=CLTMSG&SEQ=12345678901&UIN=10001&UN=10002&MG=hi",  # SEQ of 11 digits
        b"VER=1.1&CMD=CLTMSG&SEQ=&UIN=10001&UN=10002&MG=hi",
        b"VER=1.1&CMD=CLTMSG&SEQ=5x&UIN=10001&UN=10002&MG=hi",
        b"VER=1.1&CMD=CLTMSG&SEQ=55&UIN=10001&UN=10002&MG=",  # empty message
        b"VER = 1.1 & CMD = CLTMSG & SEQ = 55 & UIN = 10001 & UN = 10002 & MG = hi",  # the seed's spaces
        b"VER=1.1&CMD=CLTMSG&SEQ=55&UIN=10001&UN=10002&MG=hi&",  # an empty piece
        b"VER=1.1&CMD=CLTMSG&SEQ=55&UIN=10001&UN=10002&MG=a=b",  # a literal '='
        b"VER=1.1&CMD=CLTMSG&SEQ=55&UIN=10001&UN=10002&M-G=hi",
        b'{"VER": "1.1", "CMD": "CLTMSG"}',
    ],
)
async def test_malformed_body_is_null_and_changes_nothing(qq: QQ, body: bytes) -> None:
    response = await qq.raw(body)
    assert (response.status, response.body, response.rest) == (b"HTTP/1.1 200 OK", b"", b"")
    assert await qq.messages(BOB) == []
    # The SEQ was not remembered: the same SEQ, well formed, is judged afresh.
    assert (await qq.raw(GOOD.encode())).body.endswith(b"&RES=0")
    assert await qq.messages(BOB) == [(9, ALICE, "hi")]


@pytest.mark.parametrize(
    "data",
    [
        b"hello\r\n\r\n",
        b"\x00\x01\x02\x03\xff\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost x\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcdef",  # bytes after the body
        http_request(GOOD.encode()).replace(b"POST / ", b"GET / "),
        http_request(GOOD.encode()).replace(b"POST / ", b"POST /qq "),
        http_request(GOOD.encode()).replace(b"HTTP/1.1", b"HTTP/2.0"),
    ],
)
async def test_input_that_is_not_one_good_http_request_is_null(sim: Simulator, qq: QQ, data: bytes) -> None:
    raw = await exchange(sim.port, data)
    assert raw == NULL_RESPONSE
    assert await qq.messages(BOB) == []


@pytest.mark.parametrize(
    "data",
    [b"garbage with no line end", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\nVER=1.1&CMD=CLTMSG"],
)
async def test_input_cut_short_is_null_when_the_client_stops_sending(sim: Simulator, qq: QQ, data: bytes) -> None:
    assert await exchange(sim.port, data, half_close=True) == NULL_RESPONSE
    assert await qq.messages(BOB) == []


async def test_a_connection_closed_at_once_is_harmless(sim: Simulator, qq: QQ) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.01)
    assert (await qq.call("List", ALICE))["RES"] == "0"


async def test_a_request_sent_in_pieces_is_read_whole(sim: Simulator, qq: QQ) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
    for byte in http_request(GOOD.encode()):
        writer.write(bytes([byte]))
        await writer.drain()
    response = parse_response(await reader.read())
    writer.close()
    assert response.body == b"VER=1.1&CMD=CLTMSG&SEQ=55&UIN=10001&RES=0"
    assert await qq.messages(BOB) == [(9, ALICE, "hi")]


async def test_a_client_that_half_closes_still_gets_its_reply(sim: Simulator, qq: QQ) -> None:
    raw = await exchange(sim.port, http_request(GOOD.encode()), half_close=True)
    assert parse_response(raw).body == b"VER=1.1&CMD=CLTMSG&SEQ=55&UIN=10001&RES=0"
