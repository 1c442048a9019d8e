"""The small interfaces through which the bridge core sees Matrix, QQ and its store.

The real ones are `qqbridge.matrix.api.HomeserverAPI`, `qqbridge.qq.QQClient` and
`qqbridge.store.Store`; unit tests may fill them with fakes, and the end-to-end tests
use the real ones against a real Synapse and the simulator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from qqbridge.qq import model


class Matrix(Protocol):
    bot_mxid: str

    async def ensure_registered(self, mxid: str) -> None: ...
    async def join(self, room_id: str, *, user_id: str | None = None) -> None: ...
    async def leave(self, room_id: str, *, user_id: str | None = None) -> None: ...
    async def send(
        self, room_id: str, content: dict[str, Any], *, txn_id: str, event_type: str = ...,
        user_id: str | None = None,
    ) -> str: ...
    async def redact(
        self, room_id: str, event_id: str, *, txn_id: str, reason: str | None = None, user_id: str | None = None
    ) -> None: ...


class QQ(Protocol):
    """One QQ account's connection to the QQ server (QQClient)."""

    uin: int

    async def login(self, password_md5: str, *, seq: int | None = None) -> model.LoginOk: ...
    async def logout(self, *, seq: int | None = None) -> None: ...
    async def fetch_messages(self, *, seq: int | None = None) -> model.MessageBatch: ...
    async def set_status(self, status: model.Status, *, seq: int | None = None) -> None: ...
    async def aclose(self) -> None: ...


QQFactory = Callable[[int], QQ]
