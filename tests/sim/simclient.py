"""A deliberately dumb raw-bytes QQ client for the simulator's tests.

It shares nothing with `qqbridge.qq` or `qqbridge.qqsim.wire`: requests are built with
`urllib.parse.quote` and replies read with `urllib.parse.unquote`, over plain asyncio
sockets, so the tests judge the simulator by its bytes alone.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from dataclasses import dataclass
from urllib.parse import quote, unquote

LC = "9326B87B234E7235"
# Which reply fields are comma lists, by command (docs/protocol.md §2).
LIST_FIELDS = {"list": {"UN"}, "query_stat": {"FC", "ST", "UN", "NK"}, "getmsgex": {"MT", "UN", "MG"}}


@dataclass
class Response:
    status: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    rest: bytes  # whatever followed the first response on the connection

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


def http_request(body: bytes) -> bytes:
    return (
        b"POST / HTTP/1.1\r\nHost: tqq.tencent.com:8000\r\n"
        b"Content-Type: text/plain; charset=UTF-8\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    ) + body


async def exchange(port: int, data: bytes, local: str = "127.0.0.1", half_close: bool = False) -> bytes:
    """Send `data` on a fresh connection from `local`; return every byte until EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0))
    writer.write(data)
    await writer.drain()
    if half_close:
        writer.write_eof()
    out = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return out


def parse_response(raw: bytes) -> Response:
    head, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep, f"no header end in {raw[:200]!r}"
    lines = head.split(b"\r\n")
    headers = [tuple(part.strip() for part in line.split(b":", 1)) for line in lines[1:]]
    length = int(dict((k.lower(), v) for k, v in headers)[b"content-length"])
    return Response(lines[0], headers, rest[:length], rest[length:])  # type: ignore[arg-type]


def body_of(params: dict[str, object]) -> bytes:
    return "&".join(f"{k}={quote(str(v), safe='')}" for k, v in params.items()).encode()


def read_fields(body: bytes, lists: set[str] = frozenset()) -> dict:
    """`KEY=VALUE&...` into a dict; fields named in `lists` become lists of decoded items."""
    out: dict[str, object] = {}
    for piece in body.decode("ascii").split("&"):
        key, _, value = piece.partition("=")
        if key in lists and (value.endswith(",") or value == ""):
            out[key] = [unquote(item, errors="strict") for item in value.split(",")[:-1]]
        else:
            out[key] = unquote(value, errors="strict")
    return out


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


class QQ:
    """One client address talking to one simulator port."""

    _seq = itertools.count(1000)

    def __init__(self, port: int, local: str = "127.0.0.1") -> None:
        self.port = port
        self.local = local
        self.last_elapsed = 0.0

    async def raw(self, body: bytes) -> Response:
        start = time.perf_counter()
        raw = await exchange(self.port, http_request(body), self.local)
        self.last_elapsed = time.perf_counter() - start
        return parse_response(raw)

    async def call(self, cmd: str, uin: int | str, seq: int | str | None = None, **params: object) -> dict | None:
        """A request with VER/CMD/SEQ/UIN first; the reply's fields, or None for NULL."""
        fields = {"VER": "1.1", "CMD": cmd, "SEQ": next(self._seq) if seq is None else seq, "UIN": uin, **params}
        response = await self.raw(body_of(fields))
        assert response.status == b"HTTP/1.1 200 OK"
        lists = LIST_FIELDS.get(cmd.lower(), set())
        return read_fields(response.body, lists) if response.body else None

    async def login(self, uin: int, password: str) -> dict | None:
        return await self.call("Login", uin, PS=md5(password), M5=1, LC=LC)

    async def messages(self, uin: int) -> list[tuple[int, int, str]]:
        """Every queued message (fetching until a reply is not full), as (MT, UN, MG)."""
        out: list[tuple[int, int, str]] = []
        while True:
            reply = await self.call("GetMsgEx", uin)
            assert reply is not None and reply["RES"] == "0", reply
            batch = list(zip(reply["MT"], reply["UN"], reply["MG"], strict=False))  # type: ignore[arg-type]
            assert int(reply["MN"]) == len(batch)  # type: ignore[arg-type]
            out += [(int(t), int(u), g) for t, u, g in batch]
            if len(batch) < 50:
                return out
