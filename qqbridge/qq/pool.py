"""The QQ client's HTTP: one POST on its own connection, and `QQConnections`, which
bounds how many are in flight for all accounts together.

The protocol has one request per TCP connection (`POST / HTTP/1.1`, `Connection:
close`, docs/protocol.md §1): no keep-alive, redirects, cookies or compression. h11 (the
HTTP/1.1 parser under httpx) on an asyncio protocol is all that takes; httpx's client
and connection pool cost 1.5–2 ms of CPU a request for nothing the protocol uses, a
thread hop for getaddrinfo on every connect included, which made 1,000 idle accounts
cost half a core (issue 11). This costs about 0.4 ms.

    QQClient ──Target, body──▶ QQHttp.post ──connect, send, read──▶ QQ server
             ◀── reply body ──┘   raises CannotConnect · ExchangeBroken · BadReply

An account costs nothing here: every QQClient of one local address borrows the same
`QQHttp`, made by the composition root and closed at shutdown after the accounts are
stopped (a QQClient's `aclose` leaves a borrowed one open). The deadline of a request
is its caller's (`QQClient.request`); a reply is read as a stream and refused once it
passes the caller's cap, whatever its headers announce.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import h11

DEFAULT_MAX_CONNECTIONS = 256
MAX_HEAD_BYTES = 16 * 1024  # the status line and headers of a reply: a few hundred bytes honestly
CONNECT_SECONDS = 10.0  # a server that takes longer to accept is out; within the request's own deadline


class CannotConnect(Exception):
    """No connection to the server: the request was not sent."""


class ExchangeBroken(Exception):
    """The connection failed or the reply was not HTTP after the request may have gone out."""


class BadReply(Exception):
    """An HTTP reply that is not a QQ reply: its status or its encoding."""


class ReplyTooBig(BadReply):
    """A reply past the caller's cap: `how` it was found out."""


@dataclass(frozen=True)
class Target:
    """Where a QQ server is: from its URL, once per client."""

    host: str
    port: int
    path: str
    host_header: str
    tls: bool

    @classmethod
    def of(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http:// or https:// URL: {url!r}")
        tls = parts.scheme == "https"
        default = 443 if tls else 80
        port = parts.port or default
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        header = host if port == default else f"{host}:{port}"
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return cls(parts.hostname, port, path, header, tls)


class QQHttp:
    """POSTs leaving from one local address (None: any), at most `max_connections`
    connections open at once; a request waits for a free one within its deadline."""

    def __init__(self, local_address: str | None = None, *, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
        self.local_address = local_address
        self._slots = asyncio.Semaphore(max_connections)
        self._open: set[asyncio.Transport] = set()
        self._tls: ssl.SSLContext | None = None
        self.is_closed = False

    async def post(self, target: Target, body: bytes, max_reply_bytes: int) -> bytes:
        """Send `body` and return the whole reply body (HTTP 200, not encoded, at most
        `max_reply_bytes`)."""
        if self.is_closed:
            raise CannotConnect("the bridge is shutting down")
        loop = asyncio.get_running_loop()
        async with self._slots:
            exchange = _Exchange(target, body, max_reply_bytes, loop.create_future())
            transport: asyncio.Transport | None = None
            try:
                try:
                    async with asyncio.timeout(CONNECT_SECONDS):
                        transport, _ = await loop.create_connection(
                            lambda: exchange, target.host, target.port,
                            ssl=self._tls_context() if target.tls else None,
                            local_addr=(self.local_address, 0) if self.local_address else None,
                        )  # fmt: skip
                except TimeoutError as exc:
                    raise CannotConnect(f"no connection within {CONNECT_SECONDS:g} s") from exc
                except OSError as exc:  # ssl.SSLError included
                    raise CannotConnect(str(exc) or type(exc).__name__) from exc
                self._open.add(transport)
                return await exchange.reply
            finally:
                exchange.reply.cancel()  # when the deadline or shutdown came first: nothing more is read
                if transport is not None:
                    self._open.discard(transport)
                    if not transport.is_closing():  # a server dripping or flooding gets no more of our time
                        transport.abort()

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    async def aclose(self) -> None:
        self.is_closed = True
        for transport in list(self._open):
            transport.abort()
        self._open.clear()


class _Exchange(asyncio.Protocol):
    """One request and its reply, on the connection made for it: the request is
    written once connected; what arrives is fed to h11 as it comes, refused once past
    the cap; the whole reply body ends up in `reply`."""

    def __init__(self, target: Target, body: bytes, cap: int, reply: asyncio.Future[bytes]) -> None:
        self._http = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        head = h11.Request(method="POST", target=target.path, headers=[
            ("Host", target.host_header), ("Content-Type", "text/plain; charset=UTF-8"),
            ("Content-Length", str(len(body))), ("Connection", "close"),
        ])  # fmt: skip
        send = self._http.send
        self._request = b"".join((send(head) or b"", send(h11.Data(data=body)) or b"", send(h11.EndOfMessage()) or b""))
        self._cap = cap
        self._body = bytearray()
        self._transport: asyncio.Transport | None = None
        self.reply = reply

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # a TCP transport, asyncio's or uvloop's
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self._feed(data)

    def eof_received(self) -> bool:
        self._feed(b"")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.reply.done():
            why = f": {exc}" if exc else ""
            self.reply.set_exception(ExchangeBroken(f"the connection ended before the reply did{why}"))

    def _feed(self, data: bytes) -> None:
        if self.reply.done():
            return
        try:
            self._http.receive_data(data)
            while (event := self._http.next_event()) is not h11.NEED_DATA:
                if isinstance(event, h11.Response):
                    _check_head(event, self._cap)
                elif isinstance(event, h11.Data):
                    self._body += event.data
                    if len(self._body) > self._cap:
                        raise ReplyTooBig(f"passed {len(self._body):,} bytes")
                elif isinstance(event, h11.EndOfMessage):
                    self.reply.set_result(bytes(self._body))
                    if self._transport is not None:
                        self._transport.close()
                    return
                elif isinstance(event, h11.ConnectionClosed):
                    raise ExchangeBroken("the server closed the connection before its reply ended")
                # h11.InformationalResponse (a 1xx before the reply): read on
        except h11.ProtocolError as exc:
            self._fail(ExchangeBroken(f"{type(exc).__name__}: {exc}"))
        except (BadReply, ExchangeBroken) as exc:
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        self.reply.set_exception(exc)
        if self._transport is not None:
            self._transport.abort()


def _check_head(response: h11.Response, cap: int) -> None:
    if response.status_code != 200:
        raise BadReply(f"HTTP {response.status_code} from the QQ server")
    headers = {name.lower(): value for name, value in response.headers}
    encoding = headers.get(b"content-encoding", b"identity").strip().lower()
    if encoding not in (b"", b"identity"):  # also no decompression bombs
        raise BadReply(f"the reply is {encoding[:20].decode('latin-1')!r}-encoded, not plain text")
    declared = headers.get(b"content-length", b"")
    if declared.isdigit() and int(declared) > cap:
        raise ReplyTooBig(f"announces {int(declared):,} bytes")


class QQConnections:
    """The `QQHttp` of each local address, shared by every QQClient of the bridge."""

    def __init__(self, *, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
        self.max_connections = max_connections
        self._clients: dict[str | None, QQHttp] = {}

    def client(self, local_address: str | None = None) -> QQHttp:
        client = self._clients.get(local_address)
        if client is None or client.is_closed:
            client = QQHttp(local_address, max_connections=self.max_connections)
            self._clients[local_address] = client
        return client

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()
