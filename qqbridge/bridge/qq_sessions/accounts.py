"""Each bridged QQ account's session with the QQ server, and its poller.

    ┌────────────┐ login ok ┌────────┐  RES=20 (session lost): quiet re-login; after
    │ connecting │─────────▶│ online │──────────────┐  SESSION_LOSSES in a row, a pause
    └────────────┘◀─────────└────────┘◀─────────────┘
      │  ▲  server down /       │ GetMsgEx, drained while full (at most DRAIN_ROUNDS a
      │  │  no answer / garbled │ poll); fast while a chat is active, backing off when
      ▼  │                      ▼ idle, never slower than HI
    ┌─────────────┐         events handed to `deliver`, which stores them before the
    │ unreachable │         GetMsgEx SEQ is released (a lost reply is fetched again
    └─────────────┘         with the same SEQ, docs/protocol.md §4)
      wrong password at any login ──▶ bad_password: the poller stops, the user is told

While the QQ server is out, the account waits on its `QQServer` (qq_sessions/outages.py),
which probes it once a second for every account on it, and polls again the moment it
answers; the person is told once that QQ is out (after OUTAGE_NOTICE_AFTER) and once
that it is back. An unreachable account stays unreachable through the logins it
tries meanwhile, until a poll goes through (`_reached`). The friend sync after a login
(`on_login`) failing for a reason other than an outage does not stop polling: it is
tried again later, with backoff, and the person is told once per distinct problem.

Every login (at start-up, after a lost session) waits for a token of the `Pace` all
accounts share (`qq.logins_per_second`), so a restart with 1,000 accounts is no login
storm; each account polls as soon as its own login is through.

One account's failure never touches another's: each runs in its own task, and
everything it raises is caught there.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator

import structlog

from qqbridge.bridge.notices import one_line
from qqbridge.bridge.ports import QQ
from qqbridge.bridge.qq_sessions.account_state import AccountState, failure_kind
from qqbridge.bridge.qq_sessions.backoff import Backoff
from qqbridge.bridge.qq_sessions.outages import (
    OutageNotice,
    QQServer,
    clock_time,
    duration,
    outage_reason,
)
from qqbridge.bridge.qq_sessions.pacing import Pace
from qqbridge.bridge.qq_sessions.poll_scheduler import PollScheduler
from qqbridge.metrics import Metrics
from qqbridge.qq import errors, model
from qqbridge.store import Store
from qqbridge.store.rows import LoginState

log = structlog.get_logger(__name__)

Deliver = Callable[[str, int, list[model.Event]], Awaitable[None]]
Notify = Callable[[str, str], Awaitable[None]]
LoginHook = Callable[["QQAccount"], Awaitable[object]]
Sender = Callable[["QQAccount"], Coroutine[object, object, None]]

# In protocol seconds, multiplied by qq.time_scale:
OUTAGE_NOTICE_AFTER = 60.0  # an account out of reach this long is told, once
OUTAGE_QUIET = 600.0  # at most one pair of outage notices per account in this time
DRAIN_ROUNDS = 20  # full GetMsgEx replies fetched back to back before a pause (1,000 messages)
STATUS_RETRY = 21.0  # after QQ refused a status change as too fast: its 20 s penalty, and a little
SEQ_BLOCK = 100  # GetMsgEx SEQs reserved in the store with one write
SESSION_LOSSES = 3  # RES=20 this often in a row, with no good poll between: pause with backoff
LOGINS_PER_SECOND = 200.0  # all accounts together (qq.logins_per_second): 1,000 in 5 s, no storm


@dataclasses.dataclass(frozen=True)
class SessionOptions:
    """How every QQ session polls and backs off (the config's `qq` section; seconds,
    multiplied by `time_scale` where they are protocol time)."""

    poll_fast: float = 1.0
    poll_idle: float = 30.0
    backoff_cap: float = 60.0
    time_scale: float = 1.0


@dataclasses.dataclass(frozen=True)
class SessionHooks:
    """Where a session's events and words go (the core wires them): `deliver` the QQ
    events it fetched; `notify` the person (`alert` for what needs their answer: it
    rings); `on_login` after each login (the friend sync); `sender` the outbox's task
    for this account, started and stopped with the poller."""

    deliver: Deliver
    notify: Notify
    alert: Notify | None = None
    on_login: LoginHook | None = None
    sender: Sender | None = None


class QQAccount:
    def __init__(
        self, mxid: str, uin: int, password_md5: str, *, qq: QQ, store: Store, hooks: SessionHooks,
        options: SessionOptions = SessionOptions(), server: QQServer | None = None, metrics: Metrics | None = None,
        logins: Pace | None = None, scheduler: PollScheduler | None = None,
    ) -> None:  # fmt: skip
        """`server`: the health of the QQ server, shared by the accounts on it; `logins`:
        the login pace, and `scheduler`: the poll budget, both shared by every account."""
        self.mxid, self.uin = mxid, uin
        self._scheduler = scheduler  # shared: decides when this account polls (None: its own timer)
        self._urgent = False  # poked: the next poll goes without waiting for a turn
        self._got_message = False  # the latest poll fetched a user's message
        self._logins = logins  # shared by every account: no login storm at start-up
        self._password_md5 = password_md5
        self.qq = qq
        self._store = store
        poll_idle, backoff_cap, time_scale = options.poll_idle, options.backoff_cap, options.time_scale
        self._deliver = hooks.deliver
        self._notify = hooks.notify
        self._alert = hooks.alert or hooks.notify  # for what needs the person's answer: it rings
        self._poll_fast, self._poll_idle = options.poll_fast, poll_idle
        self._scale = time_scale
        self._backoff = Backoff(min(1.0, poll_idle), backoff_cap)
        self._sync_backoff = Backoff(min(1.0, poll_idle), backoff_cap * 5)
        self.server = server or QQServer(f"QQ {uin}", None)  # shared by the accounts of one server
        self.state = AccountState.CONNECTING
        self.status = model.Status.OFFLINE
        self.wanted_status = model.Status.ONLINE  # what the user chose with `status`
        self.logged_in = False
        self.last_poll: float | None = None  # wall-clock time of the last good GetMsgEx
        self.fetched = 0
        self._poll_error: str | None = None  # why the latest poll failed; None after a good one
        self._sync_error: str | None = None  # why the friend sync failed; None once it worked
        self.friends: set[int] = set()  # as QQ last listed them; strangers are the rest
        self._on_login = hooks.on_login
        self._sender = hooks.sender
        self._metrics = metrics
        self._synced = False  # has on_login run since the latest login?
        self._sync_due = 0.0  # monotonic time before which a failed sync is not tried again
        self._status_due = 0.0  # monotonic time before which the chosen status is not set again
        self._sync_told: set[str] = set()  # sync problems the person was told about
        self._losses = 0  # RES=20 in a row, with no good poll between
        self._pending_seq: int | None = None  # the GetMsgEx SEQ sent and not yet released
        self._pending_read = False  # the one stored before a restart was looked at
        self._seqs: Iterator[int] = iter(())  # reserved in the store, not yet used
        self._losses_since = 0.0
        self._session_lost_meanwhile = False  # during the current outage: for the "back" notice
        self.outage = OutageNotice(
            lambda text: self._notify(self.mxid, text), self._down_text, self._back_text,
            after=OUTAGE_NOTICE_AFTER * time_scale, quiet=OUTAGE_QUIET * time_scale,
        )  # fmt: skip
        self._login_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._send_task: asyncio.Task[None] | None = None
        self._chores: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()

    @property
    def last_error(self) -> str | None:
        """The problem `ping` shows: the latest poll's, else the friend sync's."""
        return self._poll_error or self._sync_error

    @property
    def unreachable_since(self) -> float | None:
        """Wall time since which this account cannot reach QQ, or None."""
        return self.outage.since

    # ---- life cycle --------------------------------------------------------------------

    async def login(self) -> model.LoginOk:
        """Log in now; WrongPassword, IllegalAccount and connection errors reach the caller."""
        out = self.outage.since is not None  # then the account stays unreachable until a good poll
        if not out:
            self.state = AccountState.CONNECTING
        if self._logins is not None:
            await self._logins.take()
        answer = await self.qq.login(self._password_md5)
        self.logged_in = True
        if not out:
            self.state = AccountState.ONLINE
        self.status = model.Status.ONLINE  # what QQ sets at login; `wanted_status` is restored after
        self._synced = False
        heartbeat = answer.heartbeat * self._scale  # the server's HI is in protocol seconds
        self._poll_idle = min(self._poll_idle, max(heartbeat, self._poll_fast, 0.5))  # HI=0 must not flood
        return answer

    async def session_lost(self) -> None:
        """Called on RES=20 by whoever met it: log in again once, whoever asks first."""
        if self.outage.since is not None:
            self._session_lost_meanwhile = True
        async with self._login_lock:
            if self.logged_in:
                log.info("QQ session lost; logging in again", uin=self.uin)
                self.logged_in = False
                await self.login()

    @property
    def poll_idle(self) -> float:
        """The slowest this account may be polled: poll_idle, capped by the server's HI."""
        return self._poll_idle

    def start(self) -> None:
        if self._scheduler is not None:
            self._scheduler.add(self)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"poller {self.uin}")
        if self._sender is not None and (self._send_task is None or self._send_task.done()):
            self._send_task = asyncio.create_task(self._sender(self), name=f"sender {self.uin}")

    def poke(self) -> None:
        """Poll now (a chat just became active)."""
        if self._scheduler is not None:
            self._scheduler.chatted(self)
        self._urgent = True
        self._wake.set()

    async def stop(self, *, logout: bool) -> None:
        tasks = [task for task in (self._task, self._send_task, *self._chores) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._scheduler is not None:
            self._scheduler.remove(self)
        await self.outage.close()
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
            if self.server.down:  # only the server's probe talks to it until it answers
                self._out(self.server.why, self.server.down_since or time.time())
                await self.server.until_up()
            mark, began = self.server.recoveries, time.time()
            try:
                if not self.logged_in:
                    async with self._login_lock:
                        if not self.logged_in:
                            await self.login()
                    log.info("QQ session open", uin=self.uin)
                    self._urgent = True  # the logins are paced already: poll as soon as one is in
                await self._restore_status_when_due()
                await self._sync_when_due()
                if self._scheduler is not None:
                    await self._scheduler.turn(self, urgent=self._urgent)
                self._urgent = False
                had_events = await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._count("error", exc)
                if not await self._recover(exc, mark, began):
                    return
                idle = self._poll_fast  # back from trouble: what waited on QQ comes soon
                continue
            self._count("ok")
            self._reached()
            if self._scheduler is not None:
                if self._got_message:
                    self._scheduler.chatted(self)
                await self._pause(self._scheduler.interval(self))
                continue
            idle = self._poll_fast if had_events else min(idle * 2, self._poll_idle)
            await self._pause(idle)

    def _reached(self) -> None:
        """A good poll: whatever was wrong with reaching QQ is over."""
        self._backoff.reset()
        self._poll_error = None
        self._losses = 0
        self.state = AccountState.ONLINE
        self.outage.recovered()

    def _out(self, why: str, since: float) -> None:
        """The account cannot reach QQ (since wall time `since`, if this begins it)."""
        if self.outage.since is None:
            self._session_lost_meanwhile = False
            log.info("QQ out of reach for this account", uin=self.uin, why=why)
        self.state = AccountState.UNREACHABLE
        self.outage.failed(why, since)

    async def _recover(self, exc: Exception, mark: int, began: float) -> bool:
        """What the poller does about a failure; False when it must stop. `mark` and
        `began`: the server's recoveries and the wall time when the attempt began."""
        if isinstance(exc, errors.NotLoggedIn):
            await self._session_gone(began)
            return True
        if isinstance(exc, errors.WrongPassword):
            await self._stop_for_password(exc)
            return False
        self._poll_error = str(exc) if isinstance(exc, errors.QQError) else f"{type(exc).__name__}: {exc}"
        why = outage_reason(exc)
        if why is not None:  # cannot connect, no whole reply, garbled: is the server out?
            self._out(why, began)
            await self.server.failed(exc, began, mark, self._backoff.next())
        elif isinstance(exc, errors.QQError):  # the server answers, but not with messages
            self._out(f"the QQ server refuses to hand over your messages ({one_line(str(exc), 120)})", began)
            await asyncio.sleep(self._backoff.next())
        else:  # a bug or the store: must not kill the poller or touch other accounts
            log.error("poller failure", uin=self.uin, exc_info=exc)
            await asyncio.sleep(self._backoff.next())
        return True

    async def _session_gone(self, began: float) -> None:
        """RES=20: log in again at once; but a server that ends every new session at
        once must not get a login and a GetMsgEx in a loop without pause."""
        self.logged_in = False
        self._synced = False
        if self.outage.since is not None:
            self._session_lost_meanwhile = True
        self._losses += 1
        if self._losses == 1:
            self._losses_since = began
        if self._losses < SESSION_LOSSES:
            log.info("QQ session lost; logging in again", uin=self.uin)
            return
        self._poll_error = f"QQ ended the session {self._losses} times in a row, each right after a new login (RES=20)"
        if self._losses == SESSION_LOSSES:
            log.warning("QQ ends every new session at once; logging in again with backoff", uin=self.uin)
        self._out("QQ ends your session right after every login", self._losses_since)
        await asyncio.sleep(self._backoff.next())

    async def _getmsg_seq(self) -> int:
        """The SEQ of the next GetMsgEx: the one a failed poll left (asked again, so a
        reply that was lost is fetched again, docs/protocol.md §4), else a new one, stored
        under `getmsg-pending:<mxid>` before it is sent. One write a poll: SEQs come
        from a block reserved in the store (SEQ_BLOCK at a time), and the stored one is
        not cleared after a good poll but replaced by the next. At start, the stored
        one is asked again unless its batch was stored before a crash (after the
        server's 10 minutes, it would answer with new messages under it)."""
        key = f"getmsg-pending:{self.mxid}"
        if not self._pending_read:
            stored = await self._store.state.get(key)
            if stored and not await self._store.inbound.batch_stored(self.mxid, int(stored)):
                self._pending_seq = int(stored)
            self._pending_read = True
        if self._pending_seq is None:
            seq = next(self._seqs, None)
            if seq is None:
                self._seqs = iter(await self._store.seqs.reserve(self.mxid, "getmsg", SEQ_BLOCK))
                seq = next(self._seqs)
            await self._store.state.set(key, str(seq))
            self._pending_seq = seq
        return self._pending_seq

    def _count(self, result: str, exc: BaseException | None = None) -> None:
        if self._metrics is None:
            return
        self._metrics.polls.labels(result).inc()
        if exc is not None:
            self._metrics.failures.labels(failure_kind(exc)).inc()

    async def _pause(self, seconds: float) -> None:
        self._wake.clear()
        try:
            async with asyncio.timeout(seconds):  # not wait_for: no task a pause
                await self._wake.wait()
        except TimeoutError:
            pass

    async def _stop_for_password(self, exc: errors.WrongPassword) -> None:
        self.logged_in, self.state = False, AccountState.BAD_PASSWORD
        self._poll_error = str(exc)
        await self.outage.close()  # the notice below says what there is to say
        await self._store.users.set_login_state(self.mxid, LoginState.BAD_PASSWORD)
        await self._alert(self.mxid, f"QQ refused the stored password for {self.uin} ({exc.reason or 'no reason given'}); "
                           f"polling stopped. Type `login {self.uin}` to log in again.")

    # ---- after a login: the chosen status, the friend sync ----------------------------

    async def _restore_status_when_due(self) -> None:
        """The status the user chose (`status busy`), which a new login set back to
        online. QQ refuses a change too soon after the last one (RES=3, and 20 s of
        penalty): it is tried again once that has passed."""
        if self.status == self.wanted_status or time.monotonic() < self._status_due:
            return
        try:
            await self.qq.set_status(self.wanted_status)
        except errors.RateLimited:
            self._status_due = time.monotonic() + STATUS_RETRY * self._scale
            log.info("status not restored yet: QQ says too fast", uin=self.uin)
            return
        self.status = self.wanted_status

    async def _sync_when_due(self) -> None:
        """`on_login` (friends, nicknames, presence, the chosen status) once per login.
        An outage or a lost session raises, as a poll would; any other failure (a server
        that lies in List, a homeserver that refuses a puppet) leaves polling alone and
        is tried again later, with backoff."""
        if self._synced or self._on_login is None or time.monotonic() < self._sync_due:
            return
        started = time.monotonic()
        try:
            await self._on_login(self)
            log.debug("friend sync done", uin=self.uin, seconds=round(time.monotonic() - started, 3))
        except asyncio.CancelledError:
            raise
        except (errors.NotLoggedIn, errors.WrongPassword, errors.ServerUnavailable, errors.OutcomeUnknown, OSError):
            raise
        except Exception as exc:
            self._sync_failed(exc)
            return
        self._synced = True
        self._sync_error = None
        self._sync_backoff.reset()
        self._sync_due = 0.0

    def _sync_failed(self, exc: Exception) -> None:
        problem = str(exc) if isinstance(exc, errors.QQError) else f"{type(exc).__name__}: {exc}"
        self._sync_error = f"friend sync: {problem}"
        pause = self._sync_backoff.next()
        self._sync_due = time.monotonic() + pause
        if self._metrics is not None:
            self._metrics.failures.labels(failure_kind(exc)).inc()
        log.warning("friend sync failed; polling goes on, the sync is tried again later", uin=self.uin,
                    error=problem, retry_in=round(pause, 1))  # fmt: skip
        if problem in self._sync_told:
            return
        self._sync_told.add(problem)
        text = (f"⚠ Your QQ friend list could not be refreshed: {one_line(problem, 200)}. Your messages still "
                "flow both ways; I will try again in a while.")  # fmt: skip
        self._chore(self._tell_sync_problem(problem, text))

    async def _tell_sync_problem(self, problem: str, text: str) -> None:
        try:
            await self._notify(self.mxid, text)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # not told: the next failure tries again
            self._sync_told.discard(problem)
            log.warning("could not tell a person their friend sync failed", uin=self.uin, error=str(exc))

    def _chore(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    # ---- what the person is told about an outage ---------------------------------------

    def _down_text(self, since: float, why: str) -> str:
        if self.server.down:  # what the probe finds now says more than the first failure
            why = self.server.why
        return (f"⚠ QQ is out of reach for {self.uin} since {clock_time(since)} ({duration(time.time() - since)}): "
                f"{why}. Your messages wait here and will be sent, in order, when QQ answers again; what your QQ "
                "friends send meanwhile waits for you on the QQ server. I will tell you when QQ is back.")  # fmt: skip

    async def _back_text(self, since: float, lasted: float) -> str:
        waiting = None
        try:
            waiting = await self._store.outbox.count_pending(self.mxid)
        except Exception as exc:  # a nicety: the notice goes without the number
            log.info("could not count the waiting messages", uin=self.uin, error=str(exc))
        if waiting:
            sent = f"the {waiting} message(s) you wrote meanwhile are being sent now, in order"
        else:
            sent = "what you wrote meanwhile has been sent, in order"
        text = (f"✅ QQ is back for {self.uin}, after {duration(lasted)} out of reach (since {clock_time(since)}). "
                f"Nothing was lost: {sent}, and what your QQ friends sent arrives here now.")  # fmt: skip
        if self._session_lost_meanwhile:
            text += (" QQ had ended your session meanwhile, so your friends saw you offline for a while. If the "
                     "QQ server itself restarted, what it held for you when it stopped is gone with it; "
                     "the bridge cannot fetch that.")  # fmt: skip
        return text

    # ---- one round of polling ----------------------------------------------------------

    async def poll_once(self) -> bool:
        """One round of GetMsgEx, drained while full, for at most DRAIN_ROUNDS replies
        (a server whose replies are always full must not hold the poller for ever). The
        SEQ is stored before it is sent (`_getmsg_seq`) and handed to `deliver`, which
        stores the events under it before the next SEQ replaces it."""
        got_any = False
        self._got_message = False
        for _ in range(DRAIN_ROUNDS):
            seq = await self._getmsg_seq()
            batch = await self.qq.fetch_messages(seq=seq)
            if batch.events:
                await self._deliver(self.mxid, seq, list(batch.events))
                got_any = True
                self._got_message = self._got_message or any(isinstance(e, model.Message) for e in batch.events)
                self.fetched += len(batch.events)
            self._pending_seq = None  # released; the store keeps it until the next one overwrites it
            self.last_poll = time.time()
            if not batch.full:
                return got_any
        log.info("GetMsgEx replies stay full; pausing before fetching more", uin=self.uin, rounds=DRAIN_ROUNDS)
        return got_any
