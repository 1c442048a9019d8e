"""One QQ row that cannot be relayed never blocks the rows after it (issue 8, item 6):
a bad sender or a refusal for good is set aside at once with one notice, a bug after
a few tries, while a homeserver that is down keeps everything pending. The core with a
real store (SQLite) and a homeserver double that refuses on cue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from qqbridge.bridge.core import Bridge
from qqbridge.bridge.relay.inbound import UNKNOWN_TRIES
from qqbridge.config import Config
from qqbridge.matrix.api import MatrixError
from qqbridge.store import Store

OWNER, CONTROL = "@bob:example.org", "!control:example.org"


class Homeserver:
    bot_mxid = "@qqbridge:example.org"

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.refuse: dict[str, Exception] = {}  # message body → what sending it raises

    async def send(self, room_id: str, content: dict[str, Any], *, txn_id: str, **_: Any) -> str:
        if content.get("body") in self.refuse:
            raise self.refuse[content["body"]]
        self.sent.append((room_id, content))
        return f"$sent{len(self.sent)}"

    async def create_room(self, **_: Any) -> str:
        return "!portal:example.org"

    async def ensure_registered(self, mxid: str) -> None: ...
    async def join(self, room_id: str, **_: Any) -> None: ...
    async def put_state(self, *_: Any, **__: Any) -> None: ...
    async def set_displayname(self, user_id: str, name: str) -> None: ...


@pytest.fixture
async def bridge(tmp_path: Path):
    config = Config(homeserver={"url": "http://hs", "domain": "example.org"}, permissions={"example.org": "user"})
    store = await Store.open(str(tmp_path / "bridge.db"))
    await store.users.upsert(OWNER)
    await store.users.set_control_room(OWNER, CONTROL)
    yield Bridge(config, store, Homeserver(), qq_factory=lambda uin: None)
    await store.close()


async def states(bridge: Bridge) -> list[str]:
    return [row["state"] for row in await bridge.store.db.fetch("SELECT state FROM qq_inbound ORDER BY inbound_id")]


def said(bridge: Bridge, room: str) -> list[str]:
    return [content["body"] for room_id, content in bridge.matrix.sent if room_id == room]


async def test_bad_senders_and_refusals_for_good_are_set_aside_once_and_the_rest_flows(bridge: Bridge) -> None:
    bridge.matrix.refuse["too big"] = MatrixError(413, "M_TOO_LARGE", "event too large", "send")
    rows = [(9, 1, "from one"), (9, 99999999999, "from a giant"), (99, 7, "10"), (9, 20002, "too big"),
            (9, 20002, "hello after")]  # fmt: skip
    await bridge.store.inbound.add_batch(OWNER, 10001, 1, rows)
    await bridge.inbound.relay_pending(OWNER)
    assert await states(bridge) == ["failed", "failed", "failed", "failed", "relayed"]
    assert said(bridge, "!portal:example.org") == ["hello after"]
    notices = said(bridge, CONTROL)
    assert len(notices) == 4 and all("set aside" in n and "\n" not in n for n in notices)
    assert "1 is not a QQ number" in notices[0] and "“from one”" in notices[0]
    assert "status change from 7" in notices[2]
    assert "refused it (M_TOO_LARGE, HTTP 413)" in notices[3]
    await bridge.inbound.relay_pending(OWNER)  # nothing pending: nothing said again
    assert len(said(bridge, CONTROL)) == 4


async def test_a_homeserver_that_is_down_keeps_the_row_pending(bridge: Bridge) -> None:
    bridge.matrix.refuse["hello"] = MatrixError(502, "M_UNKNOWN", "bad gateway", "send")
    await bridge.store.inbound.add_batch(OWNER, 10001, 1, [(9, 20002, "hello")])
    for _ in range(UNKNOWN_TRIES + 2):
        with pytest.raises(MatrixError):
            await bridge.inbound.relay_pending(OWNER)
    assert await states(bridge) == ["pending"] and said(bridge, CONTROL) == []
    del bridge.matrix.refuse["hello"]
    await bridge.inbound.relay_pending(OWNER)
    assert await states(bridge) == ["relayed"]


async def test_a_row_that_meets_a_bug_gets_a_few_tries_then_is_set_aside(bridge: Bridge) -> None:
    bridge.matrix.refuse["bug"] = KeyError("nobody foresaw this")
    await bridge.store.inbound.add_batch(OWNER, 10001, 1, [(9, 20002, "bug"), (9, 20002, "after the bug")])
    for _ in range(UNKNOWN_TRIES - 1):
        with pytest.raises(KeyError):
            await bridge.inbound.relay_pending(OWNER)
    await bridge.inbound.relay_pending(OWNER)
    assert await states(bridge) == ["failed", "relayed"]
    [notice] = said(bridge, CONTROL)
    assert "KeyError" in notice and "“bug”" in notice
    assert said(bridge, "!portal:example.org") == ["after the bug"]
