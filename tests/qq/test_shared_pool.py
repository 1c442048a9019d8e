"""All QQ clients of the bridge share one `QQHttp` (`qqbridge.qq.pool`): an account
costs kilobytes, yet every request still goes on its own connection with
`Connection: close` (docs/protocol.md §1), each keeps its own deadline and reply cap, and
one account's `aclose` never closes the pool the others use.

The hostile-server tests run again below with a client that borrows the shared pool."""

from __future__ import annotations

import asyncio

import pytest

from qqbridge import app
from qqbridge.config import Config
from qqbridge.qq import QQClient, password_md5
from qqbridge.qq.pool import QQConnections
from qqbridge.qqsim import Simulator
from tests.hostile_qq import HostileQQ
from tests.qq.conftest import FIXTURE, PASSWORDS
from tests.qq.test_hostile_server import (  # noqa: F401  (collected again here, on the shared pool)
    server,
    test_a_200_mb_reply_is_refused_after_a_bounded_read,
    test_a_reply_dripped_a_byte_at_a_time_ends_at_the_deadline,
    test_a_server_that_never_answers_ends_at_the_deadline,
    test_an_honest_full_reply_fits_the_cap,
)


@pytest.fixture
async def client(server: HostileQQ):  # noqa: F811
    connections = QQConnections()
    neighbour = QQClient(server.url, 10009, timeout=2.0, http=connections.client())
    qq = QQClient(server.url, 10001, timeout=2.0, http=connections.client())
    await neighbour.aclose()  # another account stopping leaves this one's pool open
    yield qq
    await qq.aclose()
    await connections.aclose()


async def test_clients_share_one_qqhttp_per_address_and_aclose_leaves_it_open() -> None:
    config = Config(homeserver={"url": "http://127.0.0.1:1", "domain": "x"}, qq={"server_url": "http://127.0.0.1:9/"})
    connections = app.qq_connections(config)
    factory = app.qq_factory(config, connections)
    a, b = factory(10001), factory(10002)
    assert a._http is b._http
    assert connections.client("127.0.0.2") is not connections.client(None)
    await a.aclose()
    assert not b._http.is_closed
    await connections.aclose()
    assert b._http.is_closed


async def test_every_request_has_its_own_connection_and_connection_close() -> None:
    connections, requests = 0, []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        requests.append(head)
        length = int(next(line.split(":")[1] for line in head.split("\r\n") if line.lower().startswith("content-length")))
        body = (await reader.readexactly(length)).decode()
        fields = dict(pair.split("=", 1) for pair in body.split("&"))
        reply = (f"VER=1.1&CMD=GetMsgEx&SEQ={fields['SEQ']}&UIN={fields['UIN']}&RES=0&MN=0&MT=&UN=&MG=").encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(reply), reply))  # no close: the client's
        await writer.drain()
        try:
            await asyncio.sleep(0.3)  # keep the connection open: a pooled client could reuse it
        finally:
            writer.close()

    listener = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}/"
    connections_pool = QQConnections()
    clients = [QQClient(url, uin, timeout=2.0, http=connections_pool.client()) for uin in (10001, 10002)]
    try:
        for _ in range(3):
            for qq in clients:
                await qq.fetch_messages()
    finally:
        await connections_pool.aclose()
        await asyncio.sleep(0.4)  # every handler closes its side
        listener.close()
        await listener.wait_closed()
    assert connections == len(requests) == 6
    assert all("connection: close" in head.lower() for head in requests)


async def test_many_accounts_on_the_simulator_through_one_pool() -> None:
    connections = QQConnections(max_connections=4)  # fewer connections than requests in flight: they queue
    async with Simulator(FIXTURE, port=0, time_scale=0.01) as sim:
        clients = [QQClient(sim.url, uin, timeout=5.0, http=connections.client()) for uin in PASSWORDS]
        try:
            await asyncio.gather(*(qq.login(password_md5(PASSWORDS[qq.uin])) for qq in clients))
            for _ in range(3):
                batches = await asyncio.gather(*(qq.fetch_messages() for qq in clients))
                assert all(not batch.full for batch in batches)
        finally:
            for qq in clients:
                await qq.aclose()
            await connections.aclose()
