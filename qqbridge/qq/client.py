"""The async QQ client: moves the codec's bytes over HTTP with httpx.

One `QQClient` speaks for one QQ account (its UIN) from one local address; the server
keys sessions by (client address, UIN), so `local_address` lets a test be "another
computer" (127.0.0.2). Every method takes an optional `seq`: a caller that stored the
SEQ before sending can retry after `OutcomeUnknown` with the same one, and the server
answers the repeat without acting twice (PROTOCOL.md §4).

    caller ──command──▶ codec.encode ──POST──▶ QQ server
    caller ◀──value──── codec.decode ◀──body──┘   (errors: qqbridge.qq.errors)
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable
from typing import Any

import httpx

from qqbridge.qq import codec, model
from qqbridge.qq.errors import OutcomeUnknown, RemoteProtocolError, ServerUnavailable

# The slowest legal reply is a RES=3 after a repeated delete: 30 s. Wait longer than that.
DEFAULT_TIMEOUT = 45.0
FRIENDS_PAGE = 160  # the seed's own TN for List
ONLINE_PAGE = 50  # the seed's own TN for Query_Stat
_HEADERS_KEPT = {"host", "content-type", "content-length", "connection"}


def seq_counter(start: int | None = None) -> Callable[[], int]:
    """SEQs for one client: a counter from a random start, wrapping within 1..MAX_SEQ, so
    two requests of one session within the server's 10-minute memory never share one."""
    numbers = itertools.count(secrets.randbelow(codec.MAX_SEQ) if start is None else start - 1)
    return lambda: next(numbers) % codec.MAX_SEQ + 1


class QQClient:
    def __init__(
        self,
        server_url: str,
        uin: int,
        *,
        local_address: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        next_seq: Callable[[], int] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.server_url = server_url
        self.uin = uin
        self.next_seq = next_seq or seq_counter()
        if transport is None:
            transport = httpx.AsyncHTTPTransport(local_address=local_address, retries=0)
        # Writes and pool waits are short; the read waits out the slow RES=3 replies.
        self._http = httpx.AsyncClient(
            transport=transport, timeout=httpx.Timeout(timeout, connect=10.0), follow_redirects=False
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> QQClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- one request -------------------------------------------------------------------

    async def request(self, command: codec.Command) -> Any:
        """Send one command and return its decoded reply (or raise its error)."""
        request = self._http.build_request(
            "POST",
            self.server_url,
            content=codec.encode(command),
            headers={"Content-Type": "text/plain; charset=UTF-8", "Connection": "close"},
        )
        for name in list(request.headers):  # send exactly the headers of PROTOCOL.md §1
            if name.lower() not in _HEADERS_KEPT:
                del request.headers[name]
        try:
            response = await self._http.send(request)
        except httpx.ConnectError as exc:
            raise ServerUnavailable(f"cannot reach the QQ server at {self.server_url}: {exc}") from exc
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            raise OutcomeUnknown(command.CMD, command.seq, type(exc).__name__) from exc
        if response.status_code != 200:
            raise RemoteProtocolError(f"{command.CMD}: HTTP {response.status_code} from the QQ server")
        return codec.decode(command, response.content)

    def _seq(self, seq: int | None) -> int:
        return self.next_seq() if seq is None else seq

    # ---- the commands ------------------------------------------------------------------

    async def login(self, password_md5: str, *, seq: int | None = None) -> model.LoginOk:
        """Open a session; raises WrongPassword or IllegalAccount."""
        return await self.request(codec.Login(self.uin, self._seq(seq), password_md5=password_md5))

    async def logout(self, *, seq: int | None = None) -> None:
        await self.request(codec.Logout(self.uin, self._seq(seq)))

    async def count_friends(self) -> int:
        return await self.request(codec.ListFriends(self.uin, self._seq(None), page_size=0))

    async def friends(self, page_size: int = FRIENDS_PAGE) -> list[int]:
        """Every friend's UIN, asking page after page until FN=1."""
        uins: list[int] = []
        while True:
            page = await self.request(codec.ListFriends(self.uin, self._seq(None), page_size, len(uins)))
            uins.extend(page.uins)
            if page.last:
                return uins
            if not page.uins:
                raise RemoteProtocolError("List: an empty page that is not the last")

    async def online_friends(self, page_size: int = ONLINE_PAGE) -> list[model.OnlineFriend]:
        """Every online or busy friend, page after page until FN=1."""
        friends: list[model.OnlineFriend] = []
        while True:
            command = codec.QueryStat(self.uin, self._seq(None), page_size, len(friends))
            page = await self.request(command)
            friends.extend(page.friends)
            if page.last:
                return friends
            if not page.friends:
                raise RemoteProtocolError("Query_Stat: an empty page that is not the last")

    async def profile(self, target: int, level: int = 3) -> model.Profile:
        return await self.request(codec.GetInfo(self.uin, self._seq(None), target=target, level=level))

    async def add_friend(self, target: int, *, seq: int | None = None) -> model.AddResult:
        return await self.request(codec.AddToList(self.uin, self._seq(seq), target=target))

    async def request_friendship(self, target: int, reason: str, *, seq: int | None = None) -> None:
        """Ack_AddToList CD=2: ask `target` to accept us, with a reason."""
        await self.request(codec.AckAddToList(self.uin, self._seq(seq), target, model.AckKind.REQUEST, reason))

    async def accept_request(self, target: int, *, seq: int | None = None) -> None:
        await self.request(codec.AckAddToList(self.uin, self._seq(seq), target, model.AckKind.ACCEPT, ""))

    async def reject_request(self, target: int, reason: str = "", *, seq: int | None = None) -> None:
        await self.request(codec.AckAddToList(self.uin, self._seq(seq), target, model.AckKind.REJECT, reason))

    async def remove_friend(self, target: int, *, seq: int | None = None) -> None:
        await self.request(codec.DelFromList(self.uin, self._seq(seq), target=target))

    async def set_status(self, status: model.Status, *, seq: int | None = None) -> None:
        await self.request(codec.ChangeStat(self.uin, self._seq(seq), status=status))

    async def fetch_messages(self, *, seq: int | None = None) -> model.MessageBatch:
        """One GetMsgEx. Repeating a `seq` within 10 minutes fetches the same batch again."""
        return await self.request(codec.GetMsgEx(self.uin, self._seq(seq)))

    async def drain_messages(self, next_seq: Callable[[], int] | None = None) -> list[model.Event]:
        """GetMsgEx again while a reply is full; every event, oldest first."""
        events: list[model.Event] = []
        while True:
            batch = await self.fetch_messages(seq=next_seq() if next_seq else None)
            events.extend(batch.events)
            if not batch.full:
                return events

    async def send_message(self, target: int, text: str, *, seq: int | None = None) -> None:
        """One CLTMSG of at most 700 bytes (codec.split_message cuts longer text)."""
        await self.request(codec.CltMsg(self.uin, self._seq(seq), target=target, text=text))
