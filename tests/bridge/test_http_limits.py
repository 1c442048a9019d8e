"""The appservice port's connection limits, in process over real sockets: who makes room
at the cap, the total header deadline, the keep-alive timeout, the body deadline, and
the open-file arithmetic. The flood itself, against the real process: tests/e2e/
test_slow_connections.py."""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from qqbridge.matrix import http_limits
from qqbridge.matrix.http_limits import ConnectionGuard, HttpLimits, fit_to_open_file_limit

GET = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"

Serve = Callable[..., Awaitable[ConnectionGuard]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """`await serve(max_connections=3, ...)`: a guarded aiohttp app on a free port."""
    running: list[tuple[ConnectionGuard, web.AppRunner]] = []
    release = asyncio.Event()

    async def start(**limits: float) -> ConnectionGuard:
        async def health(request: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        async def block(request: web.Request) -> web.Response:
            await release.wait()
            return web.json_response({})

        async def echo(request: web.Request) -> web.Response:
            return web.Response(body=await request.read())

        @web.middleware
        async def authenticate(request: web.Request, handler: object) -> web.StreamResponse:
            if request.path == "/echo" and request.headers.get("Authorization") != "Bearer right":
                return web.json_response({"errcode": "M_FORBIDDEN"}, status=403)
            return await handler(request)  # type: ignore[operator]

        app = web.Application(middlewares=[authenticate])
        app.router.add_get("/health", health)
        app.router.add_get("/block", block)
        app.router.add_put("/echo", echo)
        guard = ConnectionGuard(HttpLimits(**limits))  # type: ignore[arg-type]
        guard.install(app)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await guard.listen(runner.server, "127.0.0.1", 0)
        guard.release = release  # type: ignore[attr-defined]
        guard.clients = []  # type: ignore[attr-defined]  # the test's own connections, closed at the end
        running.append((guard, runner))
        return guard

    yield start
    release.set()
    for guard, runner in running:
        for writer in guard.clients:  # type: ignore[attr-defined]
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass  # the server closed it first
        guard.stop_listening()
        await runner.cleanup()
        guard.close_all()


async def connect(guard: ConnectionGuard) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", guard.port)
    guard.clients.append(writer)  # type: ignore[attr-defined]
    await asyncio.sleep(0.02)  # let the server accept it, so that the order is known
    return reader, writer


async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes = GET) -> bytes:
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
                 .split(b":")[1])  # fmt: skip
    return head + await reader.readexactly(length)


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Whether the server closes the connection within `seconds` (what it sent is ignored)."""
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(4096):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


async def test_at_the_cap_the_oldest_unserved_connection_makes_room(serve: Serve) -> None:
    guard = await serve(max_connections=3)
    kept = await connect(guard)
    assert (await ask(*kept)).startswith(b"HTTP/1.1 200")  # served once: kept alive
    first, second = await connect(guard), await connect(guard)
    newcomer = await connect(guard)
    assert await closed_within(first[0], 1), "the oldest unserved connection should have gone"
    assert not await closed_within(second[0], 0.2) and not await closed_within(kept[0], 0.01)
    assert (await ask(*newcomer)).startswith(b"HTTP/1.1 200")
    assert (await ask(*kept)).startswith(b"HTTP/1.1 200"), "a served connection goes last"
    assert guard.evicted == 1 and guard.open_connections == 3


async def test_at_the_cap_with_every_connection_busy_a_newcomer_gets_503(serve: Serve) -> None:
    guard = await serve(max_connections=2)
    busy = [await connect(guard) for _ in range(2)]
    for _, writer in busy:
        writer.write(b"GET /block HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.sleep(0.1)
    reader, _ = await connect(guard)
    answer = await asyncio.wait_for(reader.read(), 1)
    assert answer.startswith(b"HTTP/1.1 503") and guard.refused == 1
    guard.release.set()  # type: ignore[attr-defined]
    for reader, _ in busy:
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)).startswith(b"HTTP/1.1 200")


async def test_a_dripped_head_gets_header_timeout_in_all(serve: Serve) -> None:
    guard = await serve(header_timeout=0.5, idle_timeout=5)
    reader, writer = await connect(guard)
    started = time.monotonic()

    async def drip() -> None:
        for byte in b"GET /health HTTP/1.1\r\nX-Slow: " + b"a" * 1000:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)

    dripping = asyncio.create_task(drip())
    assert await closed_within(reader, 2)
    assert 0.4 < time.monotonic() - started < 1.0, "each byte must not restart the clock"
    dripping.cancel()
    await asyncio.gather(dripping, return_exceptions=True)
    assert guard.timed_out == 1


async def test_a_silent_new_connection_gets_header_timeout(serve: Serve) -> None:
    guard = await serve(header_timeout=0.3, idle_timeout=5)
    reader, _ = await connect(guard)
    assert await closed_within(reader, 1)


async def test_a_silent_keepalive_connection_gets_idle_timeout(serve: Serve) -> None:
    guard = await serve(header_timeout=0.3, idle_timeout=0.8)
    reader, writer = await connect(guard)
    assert (await ask(reader, writer)).startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    assert await closed_within(reader, 2)
    assert 0.7 < time.monotonic() - started < 1.3
    # a head begun after a quiet spell gets header_timeout from its first byte
    reader, writer = await connect(guard)
    assert (await ask(reader, writer)).startswith(b"HTTP/1.1 200")
    await asyncio.sleep(0.5)
    writer.write(b"GET /health HTTP/1.1\r\n")
    started = time.monotonic()
    assert await closed_within(reader, 2)
    assert 0.2 < time.monotonic() - started < 0.6


async def test_a_slow_body_gets_408_and_a_fast_one_arrives_whole(serve: Serve) -> None:
    guard = await serve(body_timeout=0.4)
    reader, writer = await connect(guard)
    body = b"x" * 100_000
    request = b"PUT /echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer right\r\nContent-Length: %d\r\n\r\n" % len(body)
    assert (await ask(reader, writer, request + body)).endswith(body)

    writer.write(request + b"x")
    started = time.monotonic()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    assert head.startswith(b"HTTP/1.1 408") and 0.3 < time.monotonic() - started < 1.0


async def test_the_body_is_not_read_before_authentication(serve: Serve) -> None:
    """A stranger's slow body is refused at once (403), never waited for."""
    guard = await serve(body_timeout=5)
    reader, writer = await connect(guard)
    writer.write(b"PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 16000000\r\n\r\nx")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 1)
    assert head.startswith(b"HTTP/1.1 403")


@pytest.mark.parametrize(
    ("limits", "settable", "expected", "soft_after"),
    [
        ((1024, 1024), True, 1024 - http_limits.RESERVED_FDS, 1024),  # systemd's default: cannot raise
        ((1024, 524288), True, 1000, http_limits.OPEN_FILE_TARGET),  # raised to 65,536
        ((1024, 524288), False, 1024 - http_limits.RESERVED_FDS, 1024),  # a sandbox forbids setrlimit
        ((65536, 65536), True, 1000, 65536),  # LimitNOFILE=65536
        ((100, 100), True, 1, 100),  # absurdly low: still at least one
    ],
)
def test_fit_to_open_file_limit(
    monkeypatch: pytest.MonkeyPatch, limits: tuple[int, int], settable: bool, expected: int, soft_after: int
) -> None:
    current = list(limits)

    def setrlimit(which: int, value: tuple[int, int]) -> None:
        if not settable:
            raise OSError(1, "Operation not permitted")
        current[:] = value

    monkeypatch.setattr(resource, "getrlimit", lambda which: tuple(current))
    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    assert fit_to_open_file_limit(1000) == expected
    assert current[0] == soft_after and current[1] == limits[1]


def test_limits_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="max_connections"):
        HttpLimits(max_connections=0)
    with pytest.raises(ValueError, match="header_timeout"):
        HttpLimits(header_timeout=0)
