"""QQAccount's poller with a scripted QQ and an in-memory store: quiet re-login, the
stored GetMsgEx SEQ, a wrong password stopping only that account."""

from __future__ import annotations

import asyncio
from typing import Any

from qqbridge.bridge.qq_sessions.account_state import AccountState
from qqbridge.bridge.qq_sessions.registry import Accounts
from qqbridge.qq import errors, model


class _MemoryState(dict[str, str]):
    """The bridge state as a dict, with the async `get`/`set` of `BridgeStateStore`."""

    async def get(self, key: str) -> str | None:  # type: ignore[override]
        return dict.get(self, key)

    async def set(self, key: str, value: str | None) -> None:
        if value is None:
            self.pop(key, None)
        else:
            self[key] = value


class MemoryStore:
    """The repositories a QQ session uses (state, inbound, seqs, users), in memory."""

    def __init__(self) -> None:
        self.state = _MemoryState()
        self.login_state: dict[str, str] = {}
        self.seq = 0
        self.stored_batches: set[int] = set()  # GetMsgEx SEQs whose events are stored
        self.inbound = self.seqs = self.users = self  # one object plays those three

    async def batch_stored(self, mxid: str, seq: int) -> bool:
        return seq in self.stored_batches

    async def reserve(self, mxid: str, purpose: str, count: int) -> range:
        first, self.seq = self.seq + 1, self.seq + count
        return range(first, first + count)

    async def set_login_state(self, mxid: str, state: str) -> None:
        self.login_state[mxid] = state


class ScriptedQQ:
    """Answers GetMsgEx from a script: an exception to raise or a batch to return."""

    def __init__(self, uin: int, script: list[Any], login_script: list[Any] | None = None) -> None:
        self.uin, self.script, self.login_script = uin, script, login_script or []
        self.logins = 0
        self.seqs: list[int | None] = []

    async def login(self, password_md5: str, *, seq: int | None = None) -> model.LoginOk:
        self.logins += 1
        if self.login_script:
            step = self.login_script.pop(0)
            if isinstance(step, Exception):
                raise step
        return model.LoginOk(60, 300)

    async def fetch_messages(self, *, seq: int | None = None) -> model.MessageBatch:
        self.seqs.append(seq)
        step = self.script.pop(0) if self.script else model.MessageBatch((), False)
        if isinstance(step, Exception):
            raise step
        return step

    async def logout(self, *, seq: int | None = None) -> None: ...
    async def set_status(self, status: model.Status, *, seq: int | None = None) -> None: ...
    async def aclose(self) -> None: ...


def batch(*texts: str, full: bool = False) -> model.MessageBatch:
    return model.MessageBatch(tuple(model.Message(10002, t) for t in texts), full)


async def until(condition: Any, timeout: float = 5) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


async def test_lost_session_logs_in_again_quietly_and_full_batches_are_drained() -> None:
    store, delivered, told = MemoryStore(), [], []
    qq = ScriptedQQ(10001, [errors.NotLoggedIn("GetMsgEx"), batch("a", full=True), batch("b")])

    async def deliver(mxid: str, seq: int, events: list[model.Event]) -> None:
        delivered.append((seq, [e.text for e in events]))

    async def notify(mxid: str, text: str) -> None:
        told.append(text)

    accounts = Accounts(lambda uin: qq, store, deliver, notify, poll_fast=0.01, poll_idle=0.05)
    await accounts.resume("@u:x", 10001, "0" * 32)
    await until(lambda: len(delivered) == 2)
    await accounts.close()
    assert qq.logins == 2 and told == []
    # The first SEQ got RES=20 and was reused once logged in again; then a new one per batch.
    assert qq.seqs[:3] == [1, 1, 2] and delivered == [(1, ["a"]), (2, ["b"])]
    # One write a poll: the last SEQ sent stays stored until the next replaces it.
    assert store.state["getmsg-pending:@u:x"] == str(qq.seqs[-1])


async def test_a_failed_delivery_keeps_the_seq_for_the_next_try() -> None:
    store, delivered = MemoryStore(), []
    qq = ScriptedQQ(10001, [batch("a"), batch("a")])
    failures = [RuntimeError("homeserver down")]

    async def deliver(mxid: str, seq: int, events: list[model.Event]) -> None:
        if failures:
            raise failures.pop()
        delivered.append(seq)

    async def notify(mxid: str, text: str) -> None: ...

    accounts = Accounts(lambda uin: qq, store, deliver, notify, poll_fast=0.01, poll_idle=0.05, backoff_cap=0.05)
    await accounts.resume("@u:x", 10001, "0" * 32)
    await until(lambda: delivered)
    await accounts.close()
    assert qq.seqs[:2] == [1, 1] and delivered == [1]  # the same batch, fetched again by its SEQ


async def test_wrong_password_stops_that_account_only() -> None:
    store, told, delivered = MemoryStore(), [], []
    broken = ScriptedQQ(10001, [errors.NotLoggedIn("GetMsgEx")], [None, errors.WrongPassword("incorrect password")])
    healthy = ScriptedQQ(10002, [batch("still here")])
    clients = {10001: broken, 10002: healthy}

    async def deliver(mxid: str, seq: int, events: list[model.Event]) -> None:
        delivered.append(mxid)

    async def notify(mxid: str, text: str) -> None:
        told.append((mxid, text))

    alerted: list[tuple[str, str]] = []

    async def alert(mxid: str, text: str) -> None:  # what needs an answer rings (core: notify=True)
        alerted.append((mxid, text))

    accounts = Accounts(clients.__getitem__, store, deliver, notify, poll_fast=0.01, poll_idle=0.05, alert=alert)
    await accounts.resume("@a:x", 10001, "0" * 32)
    await accounts.resume("@b:x", 10002, "0" * 32)
    await until(lambda: accounts.get("@a:x").state is AccountState.BAD_PASSWORD and delivered)
    assert store.login_state == {"@a:x": "bad_password"}
    assert alerted and alerted[0][0] == "@a:x" and "incorrect password" in alerted[0][1]
    assert not [text for _, text in told if "incorrect password" in text]  # said once, and ringing
    assert accounts.get("@b:x").state is AccountState.ONLINE
    await accounts.close()


async def test_an_unreachable_server_backs_off_and_recovers() -> None:
    store, delivered = MemoryStore(), []
    qq = ScriptedQQ(10001, [errors.ServerUnavailable("down"), errors.OutcomeUnknown("GetMsgEx", 1, "timeout"), batch("back")])

    async def deliver(mxid: str, seq: int, events: list[model.Event]) -> None:
        delivered.append(seq)

    async def notify(mxid: str, text: str) -> None: ...

    accounts = Accounts(lambda uin: qq, store, deliver, notify, poll_fast=0.01, poll_idle=0.05, backoff_cap=0.05)
    await accounts.resume("@u:x", 10001, "0" * 32)
    await until(lambda: delivered)
    assert accounts.get("@u:x").state is AccountState.ONLINE
    await accounts.close()
    assert qq.seqs[:3] == [1, 1, 1]  # an unknown outcome is retried with the same SEQ


async def test_a_batch_stored_before_a_crash_is_not_fetched_again_under_its_seq() -> None:
    store, delivered = MemoryStore(), []
    store.seq = 41
    store.state["getmsg-pending:@u:x"] = "41"  # the crash came after storing, before release
    store.stored_batches.add(41)
    qq = ScriptedQQ(10001, [batch("new")])

    async def deliver(mxid: str, seq: int, events: list[model.Event]) -> None:
        delivered.append(seq)

    async def notify(mxid: str, text: str) -> None: ...

    accounts = Accounts(lambda uin: qq, store, deliver, notify, poll_fast=0.01, poll_idle=0.05)
    await accounts.resume("@u:x", 10001, "0" * 32)
    await until(lambda: delivered)
    await accounts.close()
    assert qq.seqs[0] == 42 and delivered == [42]


async def test_a_status_change_qq_refuses_as_too_soon_is_tried_again_after_its_penalty() -> None:
    """A new login sets QQ back to online; the status the user chose comes back, even
    when QQ refuses the first try as too soon after the user's own change (RES=3)."""

    class Refusing(ScriptedQQ):
        def __init__(self) -> None:
            super().__init__(10001, [errors.NotLoggedIn("GetMsgEx")])
            self.statuses: list[object] = []

        async def set_status(self, status: model.Status, *, seq: int | None = None) -> None:
            self.statuses.append(errors.RateLimited("Change_Stat") if not self.statuses else status)
            if isinstance(self.statuses[-1], Exception):
                raise self.statuses[-1]

    async def ignore(*args: Any) -> None: ...

    qq = Refusing()
    accounts = Accounts(lambda uin: qq, MemoryStore(), ignore, ignore, poll_fast=0.01, poll_idle=0.05,
                        time_scale=0.01)  # fmt: skip
    await accounts.resume("@u:x", 10001, "0" * 32)
    account = accounts.get("@u:x")
    assert account is not None
    account.wanted_status = account.status = model.Status.BUSY  # `status busy`, before the session was lost
    await until(lambda: account.status is model.Status.BUSY and len(qq.statuses) == 2)
    await accounts.close()
    assert qq.logins == 2 and isinstance(qq.statuses[0], errors.RateLimited) and qq.statuses[1] is model.Status.BUSY
