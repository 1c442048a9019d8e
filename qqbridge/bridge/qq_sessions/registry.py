"""Every running QQ account of the bridge (`Accounts`), by Matrix user, and the one
`QQServer` per server URL whose probe the accounts on it share; the login pace and the
poll budget they all draw on. One account's session and poller is `accounts.QQAccount`."""

from __future__ import annotations

import asyncio

from qqbridge.bridge.ports import QQ, OnAServer, QQFactory
from qqbridge.bridge.qq_sessions.accounts import (
    LOGINS_PER_SECOND,
    Deliver,
    LoginHook,
    Notify,
    QQAccount,
    Sender,
    SessionHooks,
    SessionOptions,
)
from qqbridge.bridge.qq_sessions.outages import PROBE_INTERVAL, PROBE_UIN, QQServer
from qqbridge.bridge.qq_sessions.pacing import Pace
from qqbridge.bridge.qq_sessions.poll_scheduler import PollScheduler
from qqbridge.metrics import Metrics
from qqbridge.store import Store


class Accounts:
    """Every running QQAccount, by Matrix user; and one `QQServer` per server URL, whose
    probe the accounts on it share."""

    def __init__(
        self, qq_factory: QQFactory, store: Store, deliver: Deliver, notify: Notify, *,
        probe_interval: float = PROBE_INTERVAL, logins_per_second: float = LOGINS_PER_SECOND,
        max_requests_per_second: float | None = None, poll_fast: float = 1.0, poll_idle: float = 30.0,
        backoff_cap: float = 60.0, time_scale: float = 1.0, alert: Notify | None = None,
        on_login: LoginHook | None = None, sender: Sender | None = None, metrics: Metrics | None = None,
    ) -> None:  # fmt: skip
        """`max_requests_per_second`: the poll budget of one PollScheduler for every
        account (the bridge passes qq.max_requests_per_second); None, each account
        polls on its own timer (fast after events, doubling towards poll_idle). The
        rest is what every account gets: `SessionOptions` and `SessionHooks`."""
        self._factory = qq_factory
        self.logins = Pace(logins_per_second)
        self.scheduler = None if max_requests_per_second is None else PollScheduler(
            max_requests_per_second, poll_fast=poll_fast, time_scale=time_scale
        )  # fmt: skip
        self._store = store
        self._options = SessionOptions(poll_fast, poll_idle, backoff_cap, time_scale)
        self._hooks = SessionHooks(deliver, notify, alert, on_login, sender)
        self._metrics = metrics
        self._probe_interval = probe_interval
        self.running: dict[str, QQAccount] = {}
        self.servers: dict[str, QQServer] = {}

    def get(self, mxid: str) -> QQAccount | None:
        return self.running.get(mxid)

    def new(self, mxid: str, uin: int, password_md5: str) -> QQAccount:
        qq = self._factory(uin)
        return QQAccount(
            mxid, uin, password_md5, qq=qq, store=self._store, hooks=self._hooks, options=self._options,
            server=self.server_for(qq), metrics=self._metrics, logins=self.logins, scheduler=self.scheduler,
        )  # fmt: skip

    def server_for(self, qq: QQ) -> QQServer:
        """The health of `qq`'s server, shared by every account on it. A QQ that names
        no server (a test's fake) gets one of its own that is never probed."""
        if not isinstance(qq, OnAServer):
            return QQServer(f"QQ {qq.uin}", None)
        url = qq.server_url
        if url not in self.servers:
            self.servers[url] = QQServer(url, self._probe, interval=self._probe_interval)
        return self.servers[url]

    async def _probe(self) -> None:
        """Logout of UIN 1: every honest server answers RES=0 at once, and no one can be
        logged in as an illegal QQ number, so it ends no one's session."""
        client = self._factory(PROBE_UIN)
        try:
            await client.logout()
        finally:
            await client.aclose()

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
        await asyncio.gather(*(server.close() for server in self.servers.values()))
