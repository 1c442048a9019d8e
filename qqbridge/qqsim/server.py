"""The simulator's HTTP side (docs/protocol.md §1) and its public `Simulator` object.

It owns the sockets: one request per TCP connection, parsed with h11, judged by
`commands.answer`, answered with the §1 headers and closed. Slow replies (RES=3) are
timers on the event loop, so they never hold up other connections. A periodic sweep
task expires idle sessions so friends learn of it even when nobody calls.

Anything that is not one well-formed `POST / HTTP/1.1` request gets an empty body (NULL).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import h11

from qqbridge.qqsim.commands import Reply, answer
from qqbridge.qqsim.fixture import Fixture, load_fixture
from qqbridge.qqsim.world import World

__all__ = ["Simulator", "http_response"]

log = logging.getLogger(__name__)

MAX_BODY = 16 * 1024  # the longest legal request (a 700-byte CLTMSG, escaped) is ~2.2 KiB
READ_TIMEOUT = 30.0  # seconds a client may take to send its request (real time)
LINGER = 5.0  # seconds to drain a client after a refusal before closing

_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: Tencent imserver/1.0.0\r\n"
    b"Content-Type: text/plain; charset=UTF-8\r\n"
    b"Content-Length: %d\r\n"
    b"\r\n"
)


def http_response(body: bytes) -> bytes:
    """One raw HTTP response with the headers of docs/protocol.md §1."""
    return _HEAD % len(body) + body


_NULL_RESPONSE = http_response(b"")


class Simulator:
    """A QQ HTTP 1.1 server on `host:port` serving one fixture's accounts.

    ``async with Simulator(fixture, port=0) as sim: ... sim.url ...`` or call
    `start()` / `stop()`. `fixture` is a YAML path, already-loaded data or a `Fixture`.
    `clock` (monotonic seconds) is injectable; `world` holds the live state.
    """

    def __init__(
        self,
        fixture: Fixture | Mapping[str, Any] | str | Path,
        host: str = "127.0.0.1",
        port: int = 0,
        time_scale: float = 1.0,
        quirks: Iterable[str] = (),
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fixture = load_fixture(fixture)
        self.world = World(self.fixture, time_scale=time_scale, quirks=quirks, clock=clock)
        self.host = host
        self.port = port
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._connections: set[_Connection] = set()

    @property
    def time_scale(self) -> float:
        return self.world.time_scale

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def banner(self) -> str:
        """The start line the CLI prints once listening."""
        return f"qq-sim listening on {self.url.rstrip('/')} (time scale {self.time_scale:g})"

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("simulator already started")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), self.host, self.port, reuse_address=True, backlog=1024
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="qq-sim sweep")

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            try:
                await self._sweeper
            except asyncio.CancelledError:
                pass
            self._sweeper = None
        for connection in list(self._connections):
            connection.abort()
        await server.wait_closed()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _sweep_forever(self) -> None:
        interval = min(1.0, max(0.005, self.world.timing.session_life / 50))
        while True:
            await asyncio.sleep(interval)
            try:
                self.world.sweep()
            except Exception:  # a bug here must not stop expiry for the rest of the run
                log.exception("qq-sim: sweep failed")


class _Connection(asyncio.Protocol):
    """One client connection: read one request, answer it (maybe later), close."""

    __slots__ = ("sim", "transport", "parser", "peer", "body", "bad", "state", "timer")

    READING, WAITING, DRAINING = "reading", "waiting", "draining"

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.transport: asyncio.Transport | None = None
        self.parser = h11.Connection(h11.SERVER)
        self.peer = ""
        self.body = b""
        self.bad = False  # the request line or headers make it NULL whatever the body
        self.state = self.READING  # then WAITING for a reply, or DRAINING after a refusal
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else ""
        self.sim._connections.add(self)
        self.timer = asyncio.get_running_loop().call_later(READ_TIMEOUT, self.abort)

    def data_received(self, data: bytes) -> None:
        if self.state == self.READING:
            self.parser.receive_data(data)
            self._advance()

    def eof_received(self) -> bool:
        if self.state == self.READING:
            self.parser.receive_data(b"")
            self._advance()
        # Keep the write side open for a (possibly slow) reply; close once drained.
        return self.state != self.DRAINING

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.sim._connections.discard(self)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _advance(self) -> None:
        parser = self.parser
        try:
            while True:
                event = parser.next_event()
                if event is h11.NEED_DATA:
                    return
                if type(event) is h11.Data:
                    self.body += event.data
                    if len(self.body) > MAX_BODY:
                        return self._refuse()
                elif type(event) is h11.Request:
                    if event.method != b"POST" or event.target != b"/" or event.http_version != b"1.1":
                        self.bad = True
                    for name, value in event.headers:
                        if name == b"content-length" and int(value) > MAX_BODY:
                            return self._refuse()
                elif type(event) is h11.EndOfMessage:
                    if self.bad or parser.trailing_data[0]:
                        return self._refuse()
                    return self._reply(answer(self.sim.world, self.peer, self.body))
                elif type(event) is h11.ConnectionClosed:
                    return self._close()  # closed before sending anything
                else:
                    return self._refuse()
        except h11.RemoteProtocolError:
            self._refuse()

    def _reply(self, reply: Reply) -> None:
        self.state = self.WAITING
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if reply.delay > 0:
            self.timer = asyncio.get_running_loop().call_later(reply.delay, self._send, reply)
        else:
            self._send(reply)

    def _send(self, reply: Reply) -> None:
        self.timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if reply.body is None:
            out = _NULL_RESPONSE
        else:
            out = http_response(reply.body.encode("utf-8"))
            for extra in reply.extra:
                out += http_response(extra.encode("utf-8"))
        transport.write(out)
        transport.close()

    def _refuse(self) -> None:
        """NULL for a request that is not well-formed HTTP: answer, then drain the
        client's input until it closes, so the kernel does not reset the connection
        (and lose our answer) over unread bytes."""
        self.state = self.DRAINING
        if self.timer is not None:
            self.timer.cancel()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(_NULL_RESPONSE)
        if transport.can_write_eof():
            transport.write_eof()
            self.timer = asyncio.get_running_loop().call_later(LINGER, self.abort)
        else:
            transport.close()

    def _close(self) -> None:
        self.state = self.DRAINING
        if self.transport is not None:
            self.transport.close()
