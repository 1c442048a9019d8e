"""The async QQ client: moves the codec's bytes over HTTP (`qqbridge.qq.pool`).

One `QQClient` speaks for one QQ account (its UIN) from one local address; the server
keys sessions by (client address, UIN), so `local_address` lets a test be "another
computer" (127.0.0.2). The bridge's clients share one `QQHttp` per local address
(`qqbridge.qq.pool.QQConnections`): an account costs kilobytes, not a megabyte.
Every method takes an optional `seq`: a caller that stored the SEQ before sending can
retry after `OutcomeUnknown` with the same one, and the server answers the repeat
without acting twice (docs/protocol.md §4).

    caller ──command──▶ codec.encode ──POST──▶ QQ server
    caller ◀──value──── codec.decode ◀──body──┘   (errors: qqbridge.qq.errors)

A server is trusted with nothing: each request has one deadline for connecting,
sending and reading the whole reply (`timeout`), however slowly the bytes drip; a
reply is read as a stream and refused past `max_reply_bytes`; paged lists stop at
`max_friends` and the pages that many friends take.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import Callable, Sequence
from typing import TypeVar

import structlog

from qqbridge.qq import codec, model
from qqbridge.qq.errors import LocalProtocolError, OutcomeUnknown, RemoteProtocolError, ServerUnavailable
from qqbridge.qq.pool import BadReply, CannotConnect, ExchangeBroken, QQHttp, ReplyTooBig, Target

log = structlog.get_logger(__name__)

# The slowest legal reply is a RES=3 after a repeated delete: 30 s. Wait longer than that.
DEFAULT_TIMEOUT = 45.0
FRIENDS_PAGE = 160  # the seed's own TN for List
ONLINE_PAGE = 50  # the seed's own TN for Query_Stat
# The largest honest reply is a full GetMsgEx: 50 messages of 700 bytes, percent-encoded
# (3 bytes a byte) with their lists, about 110 KB. Anything past 1 MiB is refused unread.
MAX_REPLY_BYTES = 1 << 20
MAX_FRIENDS = 10_000  # more than QQ ever allowed one account; a longer list is a lie

T = TypeVar("T")
P = TypeVar("P")  # a page of a paged list
R = TypeVar("R")  # a command's reply


def _friend_page(page: int | model.Page) -> tuple[Sequence[int], bool]:
    if not isinstance(page, model.Page):  # the codec answers page_size > 0 with a Page
        raise RemoteProtocolError("List: a page came back as a count")
    return page.uins, page.last


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
        max_reply_bytes: int = MAX_REPLY_BYTES,
        max_friends: int = MAX_FRIENDS,
        next_seq: Callable[[], int] | None = None,
        http: QQHttp | None = None,
    ) -> None:
        """`http`: the connections shared with other QQClients (`QQConnections`), which
        this one borrows and never closes; without it, the QQClient makes its own (from
        `local_address`) and closes it in `aclose`."""
        self.server_url = server_url
        self._target = Target.of(server_url)
        self.uin = uin
        self.timeout = timeout  # the whole request: connect, send, every byte of the reply
        self.max_reply_bytes = max_reply_bytes
        self.max_friends = max_friends
        self.next_seq = next_seq or seq_counter()
        self._owns_http = http is None
        self._http = http or QQHttp(local_address)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> QQClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- one request -------------------------------------------------------------------

    async def request(self, command: codec.Command[R]) -> R:
        """Send one command and return its decoded reply (or raise its error). The whole
        exchange has `timeout` seconds: a reply dripped byte by byte ends there as
        OutcomeUnknown (retry with the same SEQ), never later."""
        try:
            async with asyncio.timeout(self.timeout):
                body = await self._http.post(self._target, codec.encode(command), self.max_reply_bytes)
        except TimeoutError as exc:
            raise OutcomeUnknown(command.CMD, command.seq, f"no whole reply within {self.timeout:g} s") from exc
        except CannotConnect as exc:
            raise ServerUnavailable(f"cannot reach the QQ server at {self.server_url}: {exc}") from exc
        except ExchangeBroken as exc:
            raise OutcomeUnknown(command.CMD, command.seq, str(exc)) from exc
        except ReplyTooBig as exc:
            raise RemoteProtocolError(
                f"{command.CMD}: the QQ server's reply {exc}; refused past {self.max_reply_bytes:,} bytes"
                f" (the protocol's messages are at most {codec.MAX_MESSAGE_BYTES} bytes)"
            ) from exc
        except BadReply as exc:
            raise RemoteProtocolError(f"{command.CMD}: {exc}") from exc
        return codec.decode(command, body)

    async def _all_pages(
        self,
        name: str,
        page_size: int,
        ask: Callable[[int], codec.Command[P]],
        items: Callable[[P], tuple[Sequence[T], bool]],
        uin_of: Callable[[T], int],
    ) -> list[T]:
        """Every item of a paged list (List, Query_Stat), page after page until FN=1.
        Bounded: at most `max_friends` items, in at most the pages they take plus one;
        a page larger than asked for, or a list that goes on, is the server's error.
        An item listed twice (the list moved between pages) is kept once; an illegal
        QQ number is left out, as no one can have it as a friend."""
        if page_size < 1:
            raise LocalProtocolError(f"{name}: page_size must be at least 1, not {page_size}")
        max_pages = -(-self.max_friends // page_size) + 1
        found: dict[int, T] = {}
        offset = 0
        for _ in range(max_pages):
            page = await self.request(ask(offset))
            listed, last = items(page)
            if len(listed) > page_size:
                raise RemoteProtocolError(f"{name}: a page of {len(listed)} friends, asked for {page_size}")
            for item in listed:
                uin = uin_of(item)
                if model.legal_uin(uin):
                    found.setdefault(uin, item)
                else:
                    log.warning(
                        "the QQ server listed a number that is not a QQ number; left out", command=name, uin=uin
                    )
            if len(found) > self.max_friends:
                raise RemoteProtocolError(f"{name}: the QQ server lists more than {self.max_friends:,} friends")
            if last:
                return list(found.values())
            if not listed:
                raise RemoteProtocolError(f"{name}: an empty page that is not the last")
            offset += len(listed)
        raise RemoteProtocolError(
            f"{name}: the QQ server's list did not end after {max_pages:,} pages of {page_size}"
            f" (at most {self.max_friends:,} friends are read)"
        )

    def _seq(self, seq: int | None) -> int:
        return self.next_seq() if seq is None else seq

    # ---- the commands ------------------------------------------------------------------

    async def login(self, password_md5: str, *, seq: int | None = None) -> model.LoginOk:
        """Open a session; raises WrongPassword or IllegalAccount."""
        return await self.request(codec.Login(self.uin, self._seq(seq), password_md5=password_md5))

    async def logout(self, *, seq: int | None = None) -> None:
        await self.request(codec.Logout(self.uin, self._seq(seq)))

    async def count_friends(self) -> int:
        count = await self.request(codec.ListFriends(self.uin, self._seq(None), page_size=0))
        if not isinstance(count, int):  # the codec answers page_size 0 with the count
            raise RemoteProtocolError("List: the friend count came back as a page")
        return count

    async def friends(self, page_size: int = FRIENDS_PAGE) -> list[int]:
        """Every friend's UIN, asking page after page until FN=1 (bounded, see _all_pages)."""
        return await self._all_pages(
            "List", page_size, lambda offset: codec.ListFriends(self.uin, self._seq(None), page_size, offset),
            _friend_page, lambda uin: uin,
        )  # fmt: skip

    async def online_friends(self, page_size: int = ONLINE_PAGE) -> list[model.OnlineFriend]:
        """Every online or busy friend, page after page until FN=1 (bounded, see _all_pages)."""
        return await self._all_pages(
            "Query_Stat", page_size, lambda offset: codec.QueryStat(self.uin, self._seq(None), page_size, offset),
            lambda page: (page.friends, page.last), lambda friend: friend.uin,
        )  # fmt: skip

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
