"""Limits on the appservice port, so that idle or slow clients cannot take it down.

    accept ──▶ ConnectionGuard(aiohttp's Server)          one per listening socket
                 │ at max_connections, make room by closing, oldest first, a connection
                 │ that has not finished a request yet, else an idle keep-alive one;
                 │ if every one is busy, answer 503 to the new one
                 ▼
               _Guarded (an asyncio.Protocol in front of aiohttp's RequestHandler)
                 waiting for a request head, the deadline is (total, never per read):
                   a new connection      header_timeout from the accept
                   a silent keep-alive   idle_timeout from the end of the last response
                   a head arriving       header_timeout from its first byte
                 while a request is handled: no deadline, but its body must have
                 arrived within body_timeout (else 408, and the connection is not kept)

Why not aiohttp alone: it caps neither the number of connections nor the time a
request body may take, and its keep-alive timer is an implementation detail. Without a
cap, 1,024 idle sockets exhaust the default open-file limit; asyncio then logs a
traceback for every failed accept and pauses accepting, so `/health` and the
homeserver's transactions go unanswered. `fit_to_open_file_limit` keeps the cap (plus
a burst of accepts and the bridge's own outgoing connections) under that limit.

Closing the oldest waiter rather than refusing the newcomer keeps the port usable
under a flood: an honest client's request head arrives at once, so it never waits
long, while the flood's sockets, which never finish a request, are first in line to
go; a keep-alive connection that has been served (the homeserver's) goes only when
nothing else can. Closed connections are aborted (no lingering), counted, and logged
as one rate-limited warning, never a traceback each.
"""

from __future__ import annotations

import asyncio
import resource
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

log = structlog.get_logger(__name__)

BACKLOG = 128  # asyncio accepts up to this many sockets before any protocol runs
# The kernel's queue of connections not yet accepted: deep, so that a flood does not
# make it drop an honest client's SYN (which costs the client a 1 s retransmit). It
# holds no file descriptors. asyncio ties its accept batch to the backlog it is given,
# so `listen` passes BACKLOG to asyncio and deepens the queue afterwards.
LISTEN_QUEUE = 1024
# File descriptors kept free for an accept burst, the ones closed but not yet released
# (an abort takes effect on the next turn of the loop), the database, the homeserver
# and each QQ account's poller.
RESERVED_FDS = 2 * BACKLOG + 256
OPEN_FILE_TARGET = 65536  # what the soft open-file limit is raised to, if allowed
_BUSY_REPLY = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


@dataclass(frozen=True)
class HttpLimits:
    max_connections: int = 1000
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    body_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        for name in ("header_timeout", "idle_timeout", "body_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be more than 0 seconds")


def fit_to_open_file_limit(requested: int) -> int:
    """How many connections the process can hold: `requested`, or less if the open-file
    limit is too low. Raises the soft limit towards the hard one first (as Go's runtime
    does); a sandbox that forbids that (systemd's ~@resources) is not an error."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = OPEN_FILE_TARGET if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILE_TARGET)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError):
            pass
    if soft == resource.RLIM_INFINITY:
        return requested
    return max(1, min(requested, soft - RESERVED_FDS))


class _Guarded(asyncio.Protocol):
    """One connection: forwards every transport callback to aiohttp's handler and
    closes the connection when it has waited too long for a request."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard, self._inner = guard, inner
        self.transport: asyncio.Transport | None = None
        self.busy = 0  # requests being handled
        self._head_started = True  # a new connection's clock runs from the accept
        self._deadline: asyncio.TimerHandle | None = None
        self._lost = False

    # ---- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._guard.opened(self)
        self._inner.connection_made(transport)
        self._wait(self._guard.limits.header_timeout)

    def data_received(self, data: bytes) -> None:
        if not self.busy and not self._head_started:
            self._head_started = True
            self._wait(self._guard.limits.header_timeout)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._cancel_deadline()
        self._guard.closed(self)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # ---- requests --------------------------------------------------------------------

    def request_started(self) -> None:
        self.busy += 1
        self._cancel_deadline()
        self._guard.stopped_waiting(self)

    def request_finished(self) -> None:
        self.busy -= 1
        if not self.busy:
            self._head_started = False
            self._guard.started_waiting(self)
            self._wait(self._guard.limits.idle_timeout)

    def abort(self) -> None:
        self._cancel_deadline()
        if self.transport is not None:
            self.transport.abort()

    def _wait(self, seconds: float) -> None:
        self._cancel_deadline()
        if self._lost:
            return
        self._deadline = asyncio.get_running_loop().call_later(seconds, self._too_slow)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.busy:
            self._guard.timed_out += 1
            self.abort()


class _Refused(asyncio.Protocol):
    """A connection over the cap while every held one is busy: 503, then closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(_BUSY_REPLY)  # type: ignore[attr-defined]
        transport.close()


class ConnectionGuard:
    """The protocol factory for the listening socket, and the two middlewares that tell
    it when a request starts and ends and bound the time its body may take."""

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.evicted = self.refused = self.timed_out = 0
        self._open: dict[asyncio.BaseTransport, _Guarded] = {}
        # made by the factory, connection_made still to come (asyncio calls it a turn
        # later); weak, as asyncio drops a protocol whose transport it failed to make
        self._starting: weakref.WeakSet[_Guarded] = weakref.WeakSet()
        # Waiting for a request, in the order they started waiting: connections that
        # have not finished one yet, and kept-alive ones that have.
        self._fresh: dict[_Guarded, None] = {}
        self._kept: dict[_Guarded, None] = {}
        self._server: asyncio.AbstractServer | None = None
        self._inner: Callable[[], asyncio.Protocol] | None = None

    @property
    def open_connections(self) -> int:
        return len(self._open) + len(self._starting)

    def install(self, app: web.Application) -> None:
        """Add the middlewares; call before the app is frozen (`AppRunner.setup`)."""
        app.middlewares.insert(0, self._track)  # outermost: sees every request
        app.middlewares.append(self._bounded_body)  # innermost: after authentication

    async def listen(self, server: Callable[[], asyncio.Protocol], host: str, port: int) -> None:
        """Serve aiohttp's `server` (an `AppRunner.server`) on host:port."""
        self._inner = server
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self, host, port, backlog=BACKLOG, reuse_address=True)
        for listening in self._server.sockets:
            with listening.dup() as same:  # the same socket: listen() again resizes its queue
                same.listen(LISTEN_QUEUE)

    @property
    def port(self) -> int:
        """The port listened on (the one the OS chose, if `listen` was given 0)."""
        assert self._server is not None, "listen() first"
        return int(self._server.sockets[0].getsockname()[1])

    def stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()

    def close_all(self) -> None:
        """Abort whatever aiohttp's own shutdown left open."""
        for connection in list(self._open.values()):
            connection.abort()

    # ---- the protocol factory ---------------------------------------------------------

    def __call__(self) -> asyncio.Protocol:
        assert self._inner is not None, "listen() first"
        if self.open_connections >= self.limits.max_connections:
            line = self._fresh or self._kept
            if not line:
                self.refused += 1
                self._warn_full("every connection is busy; refusing a new one")
                return _Refused()
            oldest = next(iter(line))
            self.closed(oldest)  # forget it now: abort() reports the loss only later
            oldest.abort()
            self.evicted += 1
            self._warn_full("closing the oldest connection waiting for a request")
        connection = _Guarded(self, self._inner())
        self._starting.add(connection)
        return connection

    def _warn_full(self, action: str) -> None:
        log.warning("appservice connection cap reached", action=action, max_connections=self.limits.max_connections,
                    evicted=self.evicted, refused=self.refused, timed_out=self.timed_out)  # fmt: skip

    # ---- bookkeeping, called by _Guarded ---------------------------------------------

    def opened(self, connection: _Guarded) -> None:
        assert connection.transport is not None
        self._starting.discard(connection)
        self._open[connection.transport] = connection
        self._fresh[connection] = None

    def closed(self, connection: _Guarded) -> None:
        if connection.transport is not None and self._open.get(connection.transport) is connection:
            del self._open[connection.transport]
        self.stopped_waiting(connection)

    def started_waiting(self, connection: _Guarded) -> None:
        if connection.transport in self._open:
            self._kept.pop(connection, None)
            self._kept[connection] = None  # to the back of the line

    def stopped_waiting(self, connection: _Guarded) -> None:
        self._fresh.pop(connection, None)
        self._kept.pop(connection, None)

    # ---- middlewares -----------------------------------------------------------------

    @web.middleware
    async def _track(self, request: web.Request, handler: Any) -> web.StreamResponse:
        connection = self._open.get(request.transport) if request.transport is not None else None
        if connection is None:  # an in-process test client, or already evicted
            return await handler(request)
        connection.request_started()
        try:
            return await handler(request)
        finally:
            connection.request_finished()

    @web.middleware
    async def _bounded_body(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.body_exists:
            try:
                async with asyncio.timeout(self.limits.body_timeout):
                    await request.read()  # kept by aiohttp: the handler's read() returns it
            except TimeoutError:
                seconds = self.limits.body_timeout
                response = web.json_response(
                    {"errcode": "M_UNKNOWN", "error": f"the request body did not arrive within {seconds:g} s"},
                    status=408,
                )
                response.force_close()
                return response
        return await handler(request)
