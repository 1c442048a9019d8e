"""The simulated QQ world: accounts, sessions, message queues, memories and windows.

It owns all mutable state and the rules that change it; it does no I/O and reads time
only from an injected clock (monotonic seconds), so tests can step time. Every duration
below is the protocol's figure multiplied by `time_scale`.

Rules (docs/protocol.md §4-§5, in the project's normative reading):

- Sessions are keyed by (client IP, UIN). A session with no request for LI (300 s)
  expires. An account is online while it has at least one session: the first Login
  sets status 10 and tells its friends (MT=99, MG=10); when its last session ends
  (Logout or expiry) it becomes 20 and its friends are told MG=20. A further Login (any
  address) only opens or refreshes that session.
- "Its friends" always means every account that has it in its (one-way) list. Status
  40 (invisible) is shown and sent as 20; Query_Stat lists only statuses 10 and 30.
- Every message for an account waits in its queue, online or not; the queue holds at
  most 1,000 (the oldest are dropped) and GetMsgEx takes at most 50, oldest first.
- SEQ memory: the final reply (RES=0/RES=5) to (UIN, CMD, SEQ) of the remembered
  commands is kept for 10 minutes; a repeat gets it again with no further effect.
- Penalty windows are per (UIN, command) and last 20 s from the refused request:
  * CLTMSG: a sixth delivered message within 5 s is refused and opens the window;
    only delivered messages count.
  * Change_Stat: a change less than 2 s after the last accepted one is refused and
    opens the window.
  Every request of that command inside the window is refused (RES=3, answered 20 s
  after it arrived).
- DelFromList: deleting the same UN again within 30 s of the last accepted delete is
  refused (RES=3, answered after 30 s); a refused repeat does not restart the 30 s.
- Friend requests: Ack_AddToList CD=2 leaves a pending request (requester -> target)
  unless the target accepts no one; CD=0 by the target makes each the other's friend,
  CD=1 drops it. With the `verify-twice` quirk, every other CD=2 per (sender, target),
  starting with the first, is refused and not delivered.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from qqbridge.qqsim.fixture import Account, Fixture

__all__ = ["Message", "Timing", "World", "QUIRKS", "MT_MESSAGE", "MT_STATUS", "MT_ASK", "MT_ACCEPTED", "MT_REJECTED"]

QUIRKS = ("verify-twice", "lowercase-h")

ONLINE, OFFLINE, BUSY, INVISIBLE = 10, 20, 30, 40
MT_MESSAGE, MT_STATUS, MT_ASK, MT_ACCEPTED, MT_REJECTED = 9, 99, 2, 3, 4

QUEUE_CAP = 1000
FETCH_CAP = 50
SEND_BURST = 5  # delivered CLTMSG allowed within one rate window


@dataclass(frozen=True)
class Timing:
    """The protocol's durations in seconds, already multiplied by the time scale."""

    session_life: float  # LI
    penalty: float  # RES=3 windows and their slow answer
    delete_repeat: float  # DelFromList repeat window and its slow answer
    send_window: float  # CLTMSG rate window
    change_gap: float  # minimum gap between accepted Change_Stat
    seq_memory: float

    @classmethod
    def scaled(cls, scale: float) -> Timing:
        return cls(300 * scale, 20 * scale, 30 * scale, 5 * scale, 2 * scale, 600 * scale)


@dataclass(frozen=True)
class Message:
    """One queued item for GetMsgEx: type (MT), sender (UN) and content (MG)."""

    kind: int
    sender: int
    text: str


class _Person:
    """The live state of one account (mutable; the fixture's `Account` is its start)."""

    __slots__ = ("card", "status", "friends", "followers", "queue", "addresses")

    def __init__(self, card: Account) -> None:
        self.card = card
        self.status = OFFLINE
        self.friends: set[int] = set(card.friends)
        self.followers: set[int] = set()  # accounts that have this one in their list
        self.queue: deque[Message] = deque(maxlen=QUEUE_CAP)
        self.addresses: set[str] = set()  # client IPs with a session


class World:
    """All state of one simulator run; see the module docstring for its rules."""

    def __init__(
        self,
        fixture: Fixture,
        *,
        time_scale: float = 1.0,
        quirks: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not time_scale > 0 or time_scale == float("inf"):
            raise ValueError(f"time_scale must be a positive number, got {time_scale!r}")
        self.quirks = frozenset(quirks)
        unknown = self.quirks - set(QUIRKS)
        if unknown:
            raise ValueError(f"unknown quirk(s): {', '.join(sorted(unknown))}; known: {', '.join(QUIRKS)}")
        self.time_scale = time_scale
        self.timing = Timing.scaled(time_scale)
        self.clock = clock
        self.people: dict[int, _Person] = {a.uin: _Person(a) for a in fixture.accounts}
        for person in self.people.values():
            for friend in person.friends:
                self.people[friend].followers.add(person.card.uin)
        self._sessions: dict[tuple[str, int], float] = {}  # (ip, uin) -> last request
        self._memory: dict[tuple[int, str, str], tuple[float, str]] = {}  # -> (expires, reply)
        self._windows: dict[tuple[int, str], float] = {}  # (uin, command) -> window end
        self._sent: dict[int, deque[float]] = {}  # uin -> times of delivered CLTMSG
        self._last_change: dict[int, float] = {}  # uin -> last accepted Change_Stat
        self._deleted: dict[tuple[int, int], float] = {}  # (uin, un) -> last accepted delete
        self._pending: set[tuple[int, int]] = set()  # (requester, target)
        self._asks: dict[tuple[int, int], int] = {}  # verify-twice attempt counts

    # -- accounts ------------------------------------------------------------------

    def exists(self, uin: int) -> bool:
        return uin in self.people

    def card(self, uin: int) -> Account:
        return self.people[uin].card

    def status(self, uin: int) -> int:
        """The account's own status (40 included); 20 when it has no session."""
        return self.people[uin].status

    def friends(self, uin: int) -> list[int]:
        """The account's list, ascending UIN."""
        return sorted(self.people[uin].friends)

    def online_friends(self, uin: int) -> list[Account]:
        """Friends whose status is 10 or 30 (not invisible, not offline), ascending UIN."""
        people = self.people
        return [people[f].card for f in sorted(people[uin].friends) if people[f].status in (ONLINE, BUSY)]

    def queued(self, uin: int) -> list[Message]:
        """A copy of the account's queue, oldest first (for tests and inspection)."""
        return list(self.people[uin].queue)

    # -- sessions ------------------------------------------------------------------

    def login(self, ip: str, uin: int, password_md5: str) -> bool | None:
        """None: no such account. False: wrong password. True: session opened/refreshed."""
        person = self.people.get(uin)
        if person is None:
            return None
        if not password_md5.isascii() or password_md5.lower() != person.card.password_md5:
            return False
        self._expire_sessions_of(person)
        self._sessions[(ip, uin)] = self.clock()
        first = not person.addresses
        person.addresses.add(ip)
        if first:
            self._set_status(person, ONLINE)
        return True

    def has_session(self, ip: str, uin: int) -> bool:
        """True (and the session refreshed) when (ip, uin) has a live session."""
        key = (ip, uin)
        last = self._sessions.get(key)
        if last is None:
            return False
        now = self.clock()
        if now - last > self.timing.session_life:
            self._end_session(ip, uin)
            return False
        self._sessions[key] = now
        return True

    def logout(self, ip: str, uin: int) -> None:
        if (ip, uin) in self._sessions:
            self._end_session(ip, uin)

    def sessions(self) -> list[tuple[str, int]]:
        return list(self._sessions)

    def _expire_sessions_of(self, person: _Person) -> None:
        now = self.clock()
        uin = person.card.uin
        for ip in list(person.addresses):
            if now - self._sessions[(ip, uin)] > self.timing.session_life:
                self._end_session(ip, uin)

    def _end_session(self, ip: str, uin: int) -> None:
        del self._sessions[(ip, uin)]
        person = self.people[uin]
        person.addresses.discard(ip)
        if not person.addresses:
            self._set_status(person, OFFLINE)

    # -- housekeeping --------------------------------------------------------------

    def sweep(self) -> None:
        """Expire idle sessions (telling friends) and forget whatever has run out."""
        now = self.clock()
        life = self.timing.session_life
        for (ip, uin), last in list(self._sessions.items()):
            if now - last > life:
                self._end_session(ip, uin)
        memory = self._memory
        while memory:  # insertion order is expiry order: the lifetime is constant
            key = next(iter(memory))
            if memory[key][0] > now:
                break
            del memory[key]
        self._windows = {k: end for k, end in self._windows.items() if end > now}
        self._deleted = {k: t for k, t in self._deleted.items() if now - t < self.timing.delete_repeat}
        self._last_change = {k: t for k, t in self._last_change.items() if now - t < self.timing.change_gap}
        window = self.timing.send_window
        self._sent = {k: q for k, q in self._sent.items() if q and now - q[-1] < window}

    # -- SEQ memory and penalty windows -------------------------------------------

    def recall(self, uin: int, command: str, seq: str) -> str | None:
        entry = self._memory.get((uin, command, seq))
        if entry is None or entry[0] <= self.clock():
            return None
        return entry[1]

    def remember(self, uin: int, command: str, seq: str, reply: str) -> None:
        key = (uin, command, seq)
        self._memory.pop(key, None)  # keep insertion order == expiry order
        self._memory[key] = (self.clock() + self.timing.seq_memory, reply)

    def in_penalty(self, uin: int, command: str) -> bool:
        end = self._windows.get((uin, command))
        return end is not None and self.clock() < end

    def _open_penalty(self, uin: int, command: str) -> None:
        self._windows[(uin, command)] = self.clock() + self.timing.penalty

    # -- commands' effects ---------------------------------------------------------

    def send_message(self, sender: int, recipient: int, text: str) -> bool:
        """Deliver a CLTMSG, or refuse it (False) and open the penalty window."""
        now = self.clock()
        sent = self._sent.get(sender)
        if sent is None:
            sent = self._sent[sender] = deque()
        horizon = now - self.timing.send_window
        while sent and sent[0] <= horizon:
            sent.popleft()
        if len(sent) >= SEND_BURST:
            self._open_penalty(sender, "CLTMSG")
            return False
        sent.append(now)
        self._deliver(recipient, MT_MESSAGE, sender, text)
        return True

    def change_status(self, uin: int, status: int) -> bool:
        """Set a status and tell friends, or refuse (False) and open the penalty window."""
        now = self.clock()
        last = self._last_change.get(uin)
        if last is not None and now - last < self.timing.change_gap:
            self._open_penalty(uin, "Change_Stat")
            return False
        self._last_change[uin] = now
        self._set_status(self.people[uin], status)
        return True

    def delete_friend(self, uin: int, other: int) -> bool:
        """Remove `other` from `uin`'s list; False for a repeat within the 30 s."""
        now = self.clock()
        last = self._deleted.get((uin, other))
        if last is not None and now - last < self.timing.delete_repeat:
            return False
        self._deleted[(uin, other)] = now
        if other in self.people[uin].friends:
            self.people[uin].friends.discard(other)
            self.people[other].followers.discard(uin)
        return True

    def add_friend(self, uin: int, other: int) -> int:
        """AddToList: the CD answer (0 added or already a friend, 1 verify, 2 refused)."""
        if other in self.people[uin].friends:
            return 0
        auth = self.people[other].card.auth
        if auth == 0:
            self._befriend(uin, other)
        return auth

    def ask_friend(self, uin: int, other: int, reason: str) -> bool:
        """Ack_AddToList CD=2. False only under the verify-twice quirk (refused try)."""
        if "verify-twice" in self.quirks:
            tries = self._asks.get((uin, other), 0) + 1
            self._asks[(uin, other)] = tries
            if tries % 2 == 1:
                return False
        if self.people[other].card.auth != 2:
            self._pending.add((uin, other))
            self._deliver(other, MT_ASK, uin, reason)
        return True

    def answer_friend(self, uin: int, requester: int, accept: bool, reason: str) -> None:
        """Ack_AddToList CD=0 (accept) or CD=1 (reject) of `requester`'s pending request."""
        if (requester, uin) not in self._pending:
            return
        self._pending.discard((requester, uin))
        if accept:
            self._pending.discard((uin, requester))
            self._befriend(uin, requester)
            self._befriend(requester, uin)
            self._deliver(requester, MT_ACCEPTED, uin, "")
        else:
            self._deliver(requester, MT_REJECTED, uin, reason)

    def fetch(self, uin: int) -> list[Message]:
        """Take up to 50 queued messages, oldest first."""
        queue = self.people[uin].queue
        count = min(len(queue), FETCH_CAP)
        return [queue.popleft() for _ in range(count)]

    # -- internals -----------------------------------------------------------------

    def _befriend(self, uin: int, other: int) -> None:
        self.people[uin].friends.add(other)
        self.people[other].followers.add(uin)

    def _deliver(self, recipient: int, kind: int, sender: int, text: str) -> None:
        self.people[recipient].queue.append(Message(kind, sender, text))

    def _set_status(self, person: _Person, status: int) -> None:
        person.status = status
        shown = str(OFFLINE if status == INVISIBLE else status)
        uin = person.card.uin
        for follower in person.followers:
            self._deliver(follower, MT_STATUS, uin, shown)
