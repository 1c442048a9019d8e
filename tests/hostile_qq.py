"""A QQ server that lies, in process, over real HTTP (aiohttp on loopback).

By default it answers every command honestly enough (Login with HI=60, empty lists,
no messages); a test replaces the answer to a command with `on(CMD, handler)`, where
the handler gets the request's fields and returns the reply's fields after the echo
(a dict, RES=0 added unless given), the whole body (bytes), or an aiohttp response of its own making (to
drip, flood or encode). Every request is counted by command, with its time.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, unquote

from aiohttp import web

Handler = Callable[[dict[str, str]], Awaitable[Any] | Any]


def enc(text: str) -> str:
    return quote(text, safe="")


def enc_list(items: list[Any]) -> str:
    return "".join(enc(str(item)) + "," for item in items)


class HostileQQ:
    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {
            "LOGIN": lambda f: {"RS": "0", "HI": "60", "LI": "300"},
            "GETMSGEX": lambda f: {"MN": "0", "MT": "", "UN": "", "MG": ""},
            "LIST": lambda f: {"FN": "1", "SN": "0", "UN": ""},
            "QUERY_STAT": lambda f: {"FC": "", "FN": "1", "SN": "0", "ST": "", "UN": "", "NK": ""},
            "GETINFO": lambda f: {"LV": f.get("LV", "0"), "UN": f.get("UN", "0"), "NK": enc(f"Nick{f.get('UN')}")},
        }
        self.counts: Counter[str] = Counter()
        self.times: dict[str, list[float]] = {}
        self.sent_bytes = 0  # what streaming handlers managed to write
        self._runner: web.AppRunner | None = None
        self.url = ""

    def on(self, command: str, handler: Handler) -> None:
        self.handlers[command.upper()] = handler

    @staticmethod
    def echo(fields: dict[str, str]) -> str:
        return f"VER=1.1&CMD={fields.get('CMD', '')}&SEQ={fields.get('SEQ', '')}&UIN={fields.get('UIN', '')}"

    def body(self, fields: dict[str, str], reply: dict[str, str]) -> bytes:
        reply = {"RES": "0", **reply}
        return ("&".join([self.echo(fields), *(f"{k}={v}" for k, v in reply.items())])).encode()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = (await request.read()).decode()
        fields = {k.upper(): unquote(v) for k, _, v in (p.partition("=") for p in raw.split("&"))}
        command = fields.get("CMD", "").upper()
        self.counts[command] += 1
        self.times.setdefault(command, []).append(time.monotonic())
        handler = self.handlers.get(command, lambda f: {})
        answer = handler(fields)
        if asyncio.iscoroutine(answer):
            answer = await answer
        if isinstance(answer, web.StreamResponse):
            return answer
        if callable(answer):  # a streaming handler: (request, fields) -> response
            return await answer(request, fields)
        body = answer if isinstance(answer, bytes) else self.body(fields, answer)
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    async def __aenter__(self) -> HostileQQ:
        app = web.Application()
        app.router.add_post("/", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    # ---- misbehaviours -----------------------------------------------------------------

    def drip(self, body: bytes, every: float) -> Callable[..., Awaitable[web.StreamResponse]]:
        """A reply whose bytes come one at a time, `every` seconds apart."""

        async def respond(request: web.Request, fields: dict[str, str]) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=UTF-8"})
            response.content_length = len(body)
            await response.prepare(request)
            try:
                for i in range(len(body)):
                    await response.write(body[i : i + 1])
                    self.sent_bytes += 1
                    await asyncio.sleep(every)
            except (ConnectionError, asyncio.CancelledError):
                pass
            return response

        return respond

    def flood(self, head: bytes, total: int, *, declare: bool = False, headers: dict[str, str] | None = None
              ) -> Callable[..., Awaitable[web.StreamResponse]]:  # fmt: skip
        """A reply of `total` bytes: `head`, then `A`s, written as fast as the client takes
        them; with `declare`, its Content-Length says so up front."""

        async def respond(request: web.Request, fields: dict[str, str]) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=UTF-8", **(headers or {})})
            if declare:
                response.content_length = total
            await response.prepare(request)
            chunk = b"A" * 65536
            sent = 0
            try:
                await response.write(head)
                sent = len(head)
                while sent < total:
                    await response.write(chunk)
                    sent += len(chunk)
                    self.sent_bytes = max(self.sent_bytes, sent)
            except (ConnectionError, asyncio.CancelledError):
                pass
            return response

        return respond
