"""Each bridged QQ account's session with the QQ server, and its poller.

    ┌────────────┐ login ok ┌────────┐  RES=20 (session lost): quiet re-login
    │ connecting │─────────▶│ online │──────────────┐
    └────────────┘◀─────────└────────┘◀─────────────┘
      │  ▲  server down /       │ GetMsgEx, drained while full; fast while a chat is
      │  │  no answer           │ active, backing off when idle, never slower than HI
      ▼  │                      ▼
    ┌─────────────┐         events handed to `deliver`, which stores them before the
    │ unreachable │         GetMsgEx SEQ is released (a lost reply is fetched again
    └─────────────┘         with the same SEQ, PROTOCOL.md §4)
      wrong password at any login ──▶ bad_password: the poller stops, the user is told

One account's failure never touches another's: each runs in its own task, and
everything it raises is caught there.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from qqbridge.bridge.ports import QQ, QQFactory
from qqbridge.metrics import Metrics
from qqbridge.qq import errors, model

log = structlog.get_logger(__name__)

Deliver = Callable[[str, int, list[model.Event]], Awaitable[None]]
Notify = Callable[[str, str], Awaitable[None]]
Hook = Callable[["QQAccount"], Awaitable[None]]


class AccountState(enum.StrEnum):
    CONNECTING = "connecting"
    ONLINE = "online"
    UNREACHABLE = "unreachable"
    BAD_PASSWORD = "bad_password"
    STOPPED = "stopped"


def failure_kind(exc: BaseException) -> str:
    """The `kind` label of qqbridge_failures_total for a failure met talking to QQ."""
    kinds: list[tuple[type[BaseException] | tuple[type[BaseException], ...], str]] = [
        (errors.NotLoggedIn, "qq_session_lost"), (errors.WrongPassword, "qq_bad_password"),
        ((errors.ServerUnavailable, errors.OutcomeUnknown), "qq_unreachable"), (errors.RateLimited, "qq_rate_limited"),
        ((errors.RemoteProtocolError, errors.NullReply), "qq_protocol"), (errors.IllegalAccount, "qq_refused"),
    ]  # fmt: skip
    return next((kind for types, kind in kinds if isinstance(exc, types)), "internal")


class Backoff:
    """Doubling waits with jitter, capped; `reset` after a success."""

    def __init__(self, first: float = 1.0, cap: float = 60.0) -> None:
        self.first, self.cap, self._next = first, cap, first

    def next(self) -> float:
        wait = self._next * (0.5 + random.random() / 2)
        self._next = min(self._next * 2, self.cap)
        return wait

    def reset(self) -> None:
        self._next = self.first


class QQAccount:
    def __init__(
        self,
        mxid: str,
        uin: int,
        password_md5: str,
        *,
        qq: QQ,
        store: Any,
        deliver: Deliver,
        notify: Notify,
        poll_fast: float = 1.0,
        poll_idle: float = 30.0,
        backoff_cap: float = 60.0,
        on_login: Hook | None = None,
        sender: Hook | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.mxid, self.uin = mxid, uin
        self._password_md5 = password_md5
        self.qq = qq
        self._store = store
        self._deliver = deliver
        self._notify = notify
        self._poll_fast, self._poll_idle = poll_fast, poll_idle
        self._backoff = Backoff(min(1.0, poll_idle), backoff_cap)
        self.state = AccountState.CONNECTING
        self.status = model.Status.OFFLINE
        self.wanted_status = model.Status.ONLINE  # what the user chose with `status`
        self.logged_in = False
        self.last_poll: float | None = None  # wall-clock time of the last good GetMsgEx
        self.fetched = 0
        self.last_error: str | None = None
        self.friends: set[int] = set()  # as QQ last listed them; strangers are the rest
        self._on_login = on_login
        self._sender = sender
        self._metrics = metrics
        self._synced = False  # has on_login run since the latest login?
        self._login_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._send_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # ---- life cycle --------------------------------------------------------------------

    async def login(self) -> model.LoginOk:
        """Log in now; WrongPassword, IllegalAccount and connection errors reach the caller."""
        self.state = AccountState.CONNECTING
        answer = await self.qq.login(self._password_md5)
        self.logged_in, self.state = True, AccountState.ONLINE
        self.status = model.Status.ONLINE  # what QQ sets at login; `wanted_status` is restored after
        self._synced = False
        self._poll_idle = min(self._poll_idle, max(answer.heartbeat, self._poll_fast, 0.5))  # HI=0 must not flood
        return answer

    async def session_lost(self) -> None:
        """Called on RES=20 by whoever met it: log in again once, whoever asks first."""
        async with self._login_lock:
            if self.logged_in:
                log.info("QQ session lost; logging in again", uin=self.uin)
                self.logged_in = False
                await self.login()

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"poller {self.uin}")
        if self._sender is not None and (self._send_task is None or self._send_task.done()):
            self._send_task = asyncio.create_task(self._sender(self), name=f"sender {self.uin}")

    def poke(self) -> None:
        """Poll now (a chat just became active)."""
        self._wake.set()

    async def stop(self, *, logout: bool) -> None:
        tasks = [task for task in (self._task, self._send_task) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if logout and self.logged_in:
            try:
                await self.qq.logout()
            except errors.QQError as exc:
                log.info("logout not confirmed by QQ", uin=self.uin, error=str(exc))
        self.logged_in, self.state, self.status = False, AccountState.STOPPED, model.Status.OFFLINE
        await self.qq.aclose()

    # ---- the poller --------------------------------------------------------------------

    async def _run(self) -> None:
        idle = self._poll_fast
        while True:
            try:
                if not self.logged_in:
                    async with self._login_lock:
                        if not self.logged_in:
                            await self.login()
                    log.info("QQ session open", uin=self.uin)
                if not self._synced and self._on_login is not None:
                    await self._on_login(self)
                self._synced = True
                had_events = await self.poll_once()
                self._count("ok")
                self._backoff.reset()
                self.last_error = None
                idle = self._poll_fast if had_events else min(idle * 2, self._poll_idle)
                await self._pause(idle)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._count("error", exc)
                if not await self._recover(exc):
                    return

    async def _recover(self, exc: Exception) -> bool:
        """What the poller does about a failure; False when it must stop."""
        if isinstance(exc, errors.NotLoggedIn):
            log.info("QQ session lost; logging in again", uin=self.uin)
            self.logged_in = False
            self._synced = False
        elif isinstance(exc, errors.WrongPassword):
            await self._stop_for_password(exc)
            return False
        elif isinstance(exc, errors.QQError):  # unreachable, no answer, too fast, garbled: wait
            await self._trouble(str(exc))
        else:  # a bug must not kill the poller or touch other accounts
            log.error("poller failure", uin=self.uin, exc_info=exc)
            await self._trouble(f"{type(exc).__name__}: {exc}")
        return True

    def _count(self, result: str, exc: BaseException | None = None) -> None:
        if self._metrics is None:
            return
        self._metrics.polls.labels(result).inc()
        if exc is not None:
            self._metrics.failures.labels(failure_kind(exc)).inc()

    async def _pause(self, seconds: float) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass

    async def _trouble(self, why: str) -> None:
        self.last_error = why
        if self.state is not AccountState.UNREACHABLE:
            log.warning("QQ server trouble; retrying with backoff", uin=self.uin, error=why)
        self.state = AccountState.UNREACHABLE
        await asyncio.sleep(self._backoff.next())

    async def _stop_for_password(self, exc: errors.WrongPassword) -> None:
        self.logged_in, self.state = False, AccountState.BAD_PASSWORD
        self.last_error = str(exc)
        await self._store.set_login_state(self.mxid, "bad_password")
        await self._notify(self.mxid, f"QQ refused the stored password for {self.uin} ({exc.reason or 'no reason given'}); "
                           f"polling stopped. Type `login {self.uin}` to log in again.")

    async def poll_once(self) -> bool:
        """One round of GetMsgEx, drained while full. The SEQ is stored before it is
        sent and released only after `deliver` has stored the events."""
        got_any = False
        while True:
            key = f"getmsg-pending:{self.mxid}"
            pending = await self._store.get_state(key)
            if pending and await self._store.inbound_batch_stored(self.mxid, int(pending)):
                # Stored before a crash: never fetch again under that SEQ, since after the
                # server's 10 minutes it would answer with new messages.
                pending = None
            seq = int(pending) if pending else await self._store.next_seq(self.mxid, "getmsg")
            if not pending:
                await self._store.set_state(key, str(seq))
            batch = await self.qq.fetch_messages(seq=seq)
            if batch.events:
                await self._deliver(self.mxid, seq, list(batch.events))
                got_any = True
                self.fetched += len(batch.events)
            await self._store.set_state(key, None)
            self.last_poll = time.time()
            self.state = AccountState.ONLINE
            if not batch.full:
                return got_any


class Accounts:
    """Every running QQAccount, by Matrix user."""

    def __init__(self, qq_factory: QQFactory, store: Any, deliver: Deliver, notify: Notify, **options: Any) -> None:
        self._factory = qq_factory
        self._store = store
        self._deliver = deliver
        self._notify = notify
        self._options = options
        self.running: dict[str, QQAccount] = {}

    def get(self, mxid: str) -> QQAccount | None:
        return self.running.get(mxid)

    def new(self, mxid: str, uin: int, password_md5: str) -> QQAccount:
        return QQAccount(
            mxid, uin, password_md5, qq=self._factory(uin), store=self._store,
            deliver=self._deliver, notify=self._notify, **self._options,
        )  # fmt: skip

    async def begin(self, account: QQAccount) -> None:
        """Take over an account that has logged in, and start polling for it."""
        old = self.running.pop(account.mxid, None)
        if old is not None:
            await old.stop(logout=old.uin != account.uin)
        self.running[account.mxid] = account
        account.start()

    async def resume(self, mxid: str, uin: int, password_md5: str) -> None:
        """At start-up: poll again for an account that was logged in (it logs in quietly)."""
        account = self.new(mxid, uin, password_md5)
        self.running[mxid] = account
        account.start()

    async def end(self, mxid: str, *, logout: bool = True) -> QQAccount | None:
        account = self.running.pop(mxid, None)
        if account is not None:
            await account.stop(logout=logout)
        return account

    async def close(self) -> None:
        """Shutdown: stop every poller; sessions stay open on QQ so a restart resumes them."""
        await asyncio.gather(*(self.end(mxid, logout=False) for mxid in list(self.running)))
