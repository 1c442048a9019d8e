"""HomeserverAPI against a small stand-in homeserver: the token travels in a header,
masquerading adds user_id, 429 waits retry_after_ms, 5xx is retried, 4xx raises."""

from __future__ import annotations

import time

import pytest
from aiohttp import web

BODY = web.RequestKey("body", str)
from aiohttp.test_utils import TestServer

from qqbridge.matrix.api import HomeserverAPI, MatrixError


async def serve(answers: list[tuple[int, dict]], seen: list[web.Request]) -> TestServer:
    async def handler(request: web.Request) -> web.Response:
        if request.path == "/_matrix/client/versions":  # the watcher's probe after a 502
            return web.json_response({"versions": ["v1.11"]})
        request[BODY] = await request.text()  # readable only while the request is live
        seen.append(request)
        status, body = answers.pop(0)
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = TestServer(app)
    await server.start_server()
    return server


async def test_send_masquerades_and_keeps_the_token_out_of_the_url() -> None:
    seen: list[web.Request] = []
    server = await serve([(200, {"event_id": "$1"})], seen)
    api = HomeserverAPI(str(server.make_url("")), "secret-as-token", "@bot:x")
    try:
        assert await api.send("!r:x", {"body": "hi"}, txn_id="t1", user_id="@_qq_10001:x") == "$1"
    finally:
        await api.close()
        await server.close()
    request = seen[0]
    assert request.query["user_id"] == "@_qq_10001:x" and "access_token" not in request.query
    assert request.headers["Authorization"] == "Bearer secret-as-token"
    assert request.path.endswith("/send/m.room.message/t1")


async def test_429_waits_as_told_and_5xx_is_retried() -> None:
    seen: list[web.Request] = []
    answers = [(429, {"errcode": "M_LIMIT_EXCEEDED", "retry_after_ms": 300}), (502, {}), (200, {"event_id": "$2"})]
    server = await serve(answers, seen)
    api = HomeserverAPI(str(server.make_url("")), "t", "@bot:x")
    started = time.monotonic()
    try:
        assert await api.send("!r:x", {"body": "hi"}, txn_id="t2") == "$2"
    finally:
        await api.close()
        await server.close()
    assert len(seen) == 3 and time.monotonic() - started >= 0.3


async def test_a_refusal_raises_at_once_and_user_in_use_is_fine_for_registration() -> None:
    seen: list[web.Request] = []
    answers = [(403, {"errcode": "M_FORBIDDEN", "error": "no"}), (400, {"errcode": "M_USER_IN_USE", "error": "taken"})]
    server = await serve(answers, seen)
    api = HomeserverAPI(str(server.make_url("")), "t", "@bot:x")
    try:
        with pytest.raises(MatrixError) as refused:
            await api.join("!r:x")
        assert refused.value.errcode == "M_FORBIDDEN" and len(seen) == 1
        await api.ensure_registered("@_qq_10001:x")
        await api.ensure_registered("@_qq_10001:x")  # known now: no second request
    finally:
        await api.close()
        await server.close()
    assert len(seen) == 2
    import json

    assert json.loads(seen[1][BODY]) == {"type": "m.login.application_service", "username": "_qq_10001", "inhibit_login": True}
