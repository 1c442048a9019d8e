"""Where a QQ session stands (what `ping` and the metrics show), and the kind of a
failure met talking to QQ (the metrics' label)."""

from __future__ import annotations

import enum

from qqbridge.qq import errors


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
