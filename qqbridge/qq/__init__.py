"""The QQ HTTP protocol 1.1 as the bridge speaks it (docs/protocol.md).

- `wire`: the body grammar (percent-encoding, list fields); no I/O.
- `codec`: one frozen dataclass per command; `encode` and `decode`; no I/O.
- `model`: the typed values replies and events become.
- `errors`: the one error tree.
- `client`: `QQClient`, the only module here that touches the network (httpx).
"""

from qqbridge.qq.client import QQClient
from qqbridge.qq.codec import password_md5, split_message
from qqbridge.qq.errors import (
    IllegalAccount,
    LocalProtocolError,
    NotLoggedIn,
    NullReply,
    OutcomeUnknown,
    QQError,
    RateLimited,
    Refused,
    RemoteProtocolError,
    ServerUnavailable,
    WrongPassword,
)

__all__ = [
    "IllegalAccount", "LocalProtocolError", "NotLoggedIn", "NullReply", "OutcomeUnknown",
    "QQClient", "QQError", "RateLimited", "Refused", "RemoteProtocolError", "ServerUnavailable",
    "WrongPassword", "password_md5", "split_message",
]  # fmt: skip
