"""The demo's QQ friends: scripted people on "another computer", each played through the
protocol with `QQClient` like any QQ user (docs/protocol.md §6), in the demo's event loop.

    Friend.run ──login──▶ GetMsgEx every `poll` s ──events──▶ on_message / on_status /
       ▲                  (a lost reply is fetched         on_request / on_accepted /
       │                   again with the same SEQ)        on_rejected, then tick()
       └── RES=20: log in again · RES=3: the server already made us wait, go on ·
           server down, no answer, anything unexpected: back off (doubling, jitter)

- `EchoBot` answers every message with "You said: …" and accepts friend requests.
- `Moody` goes busy and back online every `period` seconds (scaled by the time scale).
- `Newcomer` has your account in its (one-way) list, so it sees you come online; a few
  seconds later it asks to be your friend, asks once more if you leave it unanswered,
  and says what you decided.

Nothing leaves `run` but cancellation: a scripted friend never stops the demo.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from qqbridge.bridge.qq_sessions.backoff import Backoff
from qqbridge.qq import QQClient, errors, model, password_md5, split_message

log = logging.getLogger("qqbridge.demo")

YOU = 10001  # the user's QQ account in the demo fixture
REQUEST_REASON = "Hi! Shall we be friends?"
_ATTEMPTS = 5  # per request, before a friend gives up on it and says so


class Friend:
    """One scripted QQ account. Subclasses override the `on_*` hooks and `tick`."""

    name = "friend"

    def __init__(
        self,
        uin: int,
        password: str,
        *,
        server_url: str,
        local_address: str | None = None,
        time_scale: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.uin = uin
        self._password_md5 = password_md5(password)
        self.scale = time_scale
        self.clock = clock
        # Longer than the slowest RES=3 reply (30 s, scaled); a few seconds at the least.
        self.qq = QQClient(server_url, uin, local_address=local_address, timeout=max(5.0, 45 * time_scale))
        self.poll = max(0.1, min(0.5, 2.5 * time_scale))
        self.logged_in = False
        self._fetch_seq: int | None = None
        self._backoff = Backoff(first=max(0.2, min(1.0, 10 * time_scale)), cap=max(2.0, 30 * time_scale))

    def __str__(self) -> str:
        return f"{self.name} ({self.uin})"

    # ---- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while True:
                try:
                    if not self.logged_in:
                        await self.login()
                    await self._fetch()
                    await self.tick()
                    self._backoff.reset()
                    await asyncio.sleep(self.poll)
                except errors.NotLoggedIn:
                    log.info("%s: QQ session expired; logging in again", self)
                    self.logged_in = False
                except errors.RateLimited:
                    await asyncio.sleep(self.poll)  # the slow RES=3 reply was the wait
                except errors.QQError as exc:
                    await self._trouble(str(exc))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a bug in a script must not end the demo
                    log.exception("%s: unexpected error", self)
                    await self._trouble(f"{type(exc).__name__}: {exc}")
        finally:
            await self.close()

    async def _trouble(self, why: str) -> None:
        wait = self._backoff.next()
        log.warning("%s: %s; trying again in %.1f s", self, why, wait)
        await asyncio.sleep(wait)

    async def login(self) -> None:
        await self.qq.login(self._password_md5)
        await self.on_login()  # if this fails, the next turn logs in (and looks) again
        self.logged_in = True
        log.debug("%s: logged into QQ", self)

    async def _fetch(self) -> None:
        """Drain GetMsgEx, handling each batch as it comes. A SEQ is kept until its reply
        arrives, so a batch whose reply was lost is fetched again, not lost."""
        while True:
            if self._fetch_seq is None:
                self._fetch_seq = self.qq.next_seq()
            batch = await self.qq.fetch_messages(seq=self._fetch_seq)
            self._fetch_seq = None
            for event in batch.events:
                try:
                    await self._dispatch(event)
                except errors.QQError as exc:  # the batch is ours now: go on with the rest
                    log.warning("%s: could not act on %s: %s", self, event, exc)
            if not batch.full:
                return

    async def _dispatch(self, event: model.Event) -> None:
        if isinstance(event, model.Message):
            await self.on_message(event.sender, event.text)
        elif isinstance(event, model.StatusChange):
            await self.on_status(event.uin, event.status)
        elif isinstance(event, model.FriendRequest):
            await self.on_request(event.sender, event.reason)
        elif isinstance(event, model.RequestAccepted):
            await self.on_accepted(event.sender)
        elif isinstance(event, model.RequestRejected):
            await self.on_rejected(event.sender, event.reason)

    async def close(self) -> None:
        """Log out (briefly: the server may be gone already) and release the client."""
        try:
            if self.logged_in:
                await asyncio.wait_for(self.qq.logout(), 2)
        except (TimeoutError, errors.QQError):
            pass
        finally:
            self.logged_in = False
            await self.qq.aclose()

    # ---- requests that must get through ----------------------------------------------------

    async def call(self, what: str, request: Callable[[int], Awaitable[Any]]) -> bool:
        """Send `request(seq)` until it is answered, keeping one SEQ so that a retry
        never acts twice (docs/protocol.md §4). False, and a log line, if it never was."""
        seq = self.qq.next_seq()
        for _ in range(_ATTEMPTS):
            try:
                await request(seq)
                return True
            except errors.RateLimited:
                continue  # answered after the penalty window: go again at once
            except errors.NotLoggedIn:
                self.logged_in = False
                await self.login()
            except (errors.OutcomeUnknown, errors.ServerUnavailable) as exc:
                wait = self._backoff.next()
                log.warning("%s: %s: %s; retrying in %.1f s", self, what, exc, wait)
                await asyncio.sleep(wait)
            except (errors.NullReply, errors.IllegalAccount) as exc:
                log.warning("%s: QQ refused to %s: %s", self, what, exc)
                return False
        log.warning("%s: gave up trying to %s", self, what)
        return False

    async def say(self, target: int, text: str) -> bool:
        """CLTMSG, split into pieces QQ accepts, in order."""
        for piece in split_message(text):
            if not await self.call(f"message {target}", lambda seq, p=piece: self.qq.send_message(target, p, seq=seq)):
                return False
        return True

    # ---- what the script does (subclasses) -------------------------------------------------

    async def on_login(self) -> None:
        pass

    async def on_message(self, sender: int, text: str) -> None:
        pass

    async def on_status(self, uin: int, status: model.Status) -> None:
        pass

    async def on_request(self, sender: int, reason: str) -> None:
        log.info("%s: ignoring a friend request from %s", self, sender)

    async def on_accepted(self, sender: int) -> None:
        pass

    async def on_rejected(self, sender: int, reason: str) -> None:
        pass

    async def tick(self) -> None:
        """Called after every poll: the place for things done on a timer."""


class EchoBot(Friend):
    name = "Echo Bot"

    async def on_message(self, sender: int, text: str) -> None:
        if await self.say(sender, f"You said: {text}"):
            log.info("%s: echoed %s: %s", self, sender, _short(text))

    async def on_request(self, sender: int, reason: str) -> None:
        if await self.call(f"accept {sender}", lambda seq: self.qq.accept_request(sender, seq=seq)):
            log.info("%s: accepted the friend request of %s (“%s”)", self, sender, _short(reason))


class Moody(Friend):
    """Online → busy → online → …, one change every `period` seconds."""

    name = "Moody"

    def __init__(self, *args: Any, period: float = 30.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Change_Stat twice within 2 s is refused with RES=3 and a 20 s penalty.
        self.period = max(period * self.scale, 2.5 * self.scale)
        self.mood = model.Status.ONLINE
        self._next_change = self.clock() + self.period

    async def on_login(self) -> None:
        self.mood = model.Status.ONLINE  # Login sets the account online
        self._next_change = self.clock() + self.period

    async def tick(self) -> None:
        if self.clock() < self._next_change:
            return
        mood = model.Status.BUSY if self.mood is model.Status.ONLINE else model.Status.ONLINE
        self._next_change = self.clock() + self.period  # also after a failure: no hammering
        if await self.call(f"go {mood.name.lower()}", lambda seq: self.qq.set_status(mood, seq=seq)):
            self.mood = mood
            log.info("%s: now %s", self, mood.name.lower())

    async def on_message(self, sender: int, text: str) -> None:
        if self.mood is model.Status.BUSY:
            await self.say(sender, "Busy. Talk later. 😤")
        else:
            await self.say(sender, "Hey! I'm in a good mood right now 😊")


class Newcomer(Friend):
    """Asks `YOU` to be friends a little after seeing them online; asks once more if
    the request stays unanswered; says what came of it."""

    name = "Newcomer"

    def __init__(self, *args: Any, delay: float = 5.0, ask_again_after: float = 120.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.delay = delay * self.scale
        self.ask_again_after = ask_again_after * self.scale
        self.state = "waiting"  # → due → asked → answered
        self.asked = 0
        self._when = 0.0  # when the next step is due

    async def on_login(self) -> None:
        # You may have come online before we did: then no MT=99 will tell us.
        online = await self.qq.online_friends()
        if any(friend.uin == YOU for friend in online):
            self._saw_you()

    async def on_status(self, uin: int, status: model.Status) -> None:
        if uin == YOU and status in (model.Status.ONLINE, model.Status.BUSY):
            self._saw_you()

    def _saw_you(self) -> None:
        if self.state == "waiting":
            self.state, self._when = "due", self.clock() + self.delay
            log.info("%s: saw %s come online; will ask to be friends in %.1f s", self, YOU, self.delay)

    async def tick(self) -> None:
        if self.state not in ("due", "asked") or self.clock() < self._when:
            return
        if self.state == "asked" and self.asked >= 2:
            return  # asked twice; leave it there
        again = self.state == "asked"
        if await self.call(f"ask {YOU}", lambda seq: self.qq.request_friendship(YOU, REQUEST_REASON, seq=seq)):
            self.asked += 1
            log.info("%s: %s %s to be friends: “%s”", self, "asked again" if again else "asked", YOU, REQUEST_REASON)
        self.state, self._when = "asked", self.clock() + self.ask_again_after

    async def on_accepted(self, sender: int) -> None:
        if sender != YOU:
            return
        self.state = "answered"
        log.info("%s: %s accepted the friend request", self, sender)
        await self.say(sender, "Yay, thanks for accepting! 🎉 我们是朋友了。")

    async def on_rejected(self, sender: int, reason: str) -> None:
        if sender != YOU:
            return
        self.state = "answered"
        said = f" (“{reason}”)" if reason else ""
        log.info("%s: %s rejected the friend request%s", self, sender, said)

    async def on_message(self, sender: int, text: str) -> None:
        await self.say(sender, "Nice to meet you! I'm new here. 你好！")


def _short(text: str, limit: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
