"""Every error the QQ codec and client raise, in one tree.

    QQError
    ├── LocalProtocolError      we asked for something the protocol cannot carry
    ├── RemoteProtocolError     the server's reply breaks docs/protocol.md (no RES, bad echo, ...)
    ├── NullReply               empty body: the server judged the request malformed; nothing changed
    ├── Refused                 a RES code other than 0
    │   ├── RateLimited         RES=3: too fast or a penalty window; wait it out, then retry
    │   ├── IllegalAccount      RES=5: illegal or unknown QQ number; give up on that target
    │   └── NotLoggedIn         RES=20: no session for this address and UIN; log in again
    ├── WrongPassword           Login answered RES=0&RS=1
    ├── ServerUnavailable       could not connect: the request was certainly not delivered
    └── OutcomeUnknown          sent, but no reply (timeout, dropped connection); retry with
                                the same SEQ, which the server remembers (docs/protocol.md §4)

Errors say whose fault they are, as h11's do: Local* is ours, Remote* is the server's.
"""

from __future__ import annotations


class QQError(Exception):
    """Base of everything the QQ layer raises."""


class LocalProtocolError(QQError):
    """The caller asked for a request the protocol cannot express (our fault)."""


class RemoteProtocolError(QQError):
    """The server sent something docs/protocol.md does not allow (the server's fault)."""


class NullReply(QQError):
    """The server answered with an empty body: malformed or unacceptable request."""

    def __init__(self, command: str) -> None:
        super().__init__(f"{command}: the QQ server refused the request (empty reply)")
        self.command = command


class Refused(QQError):
    """The server answered with a non-zero RES."""

    res: int = -1
    meaning = "refused"

    def __init__(self, command: str) -> None:
        super().__init__(f"{command}: RES={self.res} ({self.meaning})")
        self.command = command


class RateLimited(Refused):
    res = 3
    meaning = "too fast or inside a penalty window; wait and retry"


class IllegalAccount(Refused):
    res = 5
    meaning = "illegal or unknown QQ number"


class NotLoggedIn(Refused):
    res = 20
    meaning = "not logged in"


REFUSALS: dict[int, type[Refused]] = {cls.res: cls for cls in (RateLimited, IllegalAccount, NotLoggedIn)}


class WrongPassword(QQError):
    """Login was answered with RS=1; `reason` is the server's own text (RA)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"login refused: {reason}" if reason else "login refused")
        self.reason = reason


class ServerUnavailable(QQError):
    """The QQ server could not be reached; the request was not delivered."""


class OutcomeUnknown(QQError):
    """The request may or may not have taken effect: retry it with the same `seq`."""

    def __init__(self, command: str, seq: int, cause: str) -> None:
        super().__init__(f"{command} SEQ={seq}: outcome unknown ({cause})")
        self.command = command
        self.seq = seq
