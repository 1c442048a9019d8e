"""A QQ server that lies, against the bridge and a real Synapse (issue 8, item 6).

`@room` from QQ is checked with the whole stack (the bridge process and the simulator).
The other attacks need a server that lies, so they run a bridge core in this process
(the real HomeserverAPI on the stack's Synapse with its as_token, a store of its own,
the real QQClient) against tests/hostile_qq.py; its puppets (QQ 2000x) and users
(`hostile*`) are its own, so the stack's bridge process is not disturbed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from qqbridge.bridge.contacts.avatars import HomeserverMedia
from qqbridge.bridge.contacts.portals import PUPPET_POWER
from qqbridge.bridge.core import Bridge
from qqbridge.config import Config
from qqbridge.matrix.api import HomeserverAPI
from qqbridge.qq import QQClient
from qqbridge.store import Store
from tests.hostile_qq import HostileQQ, enc, enc_list

# ---- @room, with the whole stack -----------------------------------------------------


async def client_api(stack, person, path: str, **params: Any) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        answer = await http.get(f"{stack.synapse.base_url}/_matrix/client/v3{path}", params=params,
                                headers={"Authorization": f"Bearer {person.client.access_token}"})  # fmt: skip
        answer.raise_for_status()
        return answer.json()


async def test_at_room_from_qq_highlights_no_one_and_the_puppet_holds_less_than_100(stack, bridged, qq) -> None:
    carol, _ = await bridged("carol9", 10001)
    bob = await qq(10002)
    await bob.send_message(10001, "opening the portal")
    puppet = "@_qq_10002:localhost"
    portal = await carol.accept_invite(puppet)
    await carol.wait_for_text(portal, "opening the portal", sender=puppet)
    await bob.send_message(10001, "@room hello")  # now that carol is in the room to be pinged
    await carol.wait_for_text(portal, "@room hello", sender=puppet)
    event = next(e for e in carol.events(portal) if getattr(e, "body", None) == "@room hello")
    assert event.source["content"]["m.mentions"] == {}

    sync = await client_api(stack, carol, "/sync", filter=json.dumps({"room": {"timeline": {"limit": 1}}}))
    counts = sync["rooms"]["join"][portal]["unread_notifications"]
    assert counts.get("notification_count", 0) >= 1  # it counts as a message ...
    assert counts.get("highlight_count", 0) == 0  # ... but pings no one

    levels = await client_api(stack, carol, f"/rooms/{portal}/state/m.room.power_levels/")
    assert levels["users"][puppet] == PUPPET_POWER < 100
    assert levels["users"][carol.mxid] == 100 and levels["notifications"]["room"] == 100
    assert levels.get("users_default", 0) == 0
    invite = await client_api(stack, carol, f"/rooms/{portal}/state/m.room.member/{carol.mxid}")
    assert invite["membership"] == "join"  # (the invite it answered was a direct one, from the puppet)
    members = await client_api(stack, carol, f"/rooms/{portal}/joined_members")
    assert set(members["joined"]) == {carol.mxid, puppet, stack.bot}


# ---- the in-process bridge against a lying server ------------------------------------


@dataclass
class Hostile:
    server: HostileQQ
    bridge: Bridge
    person: Any
    control: str
    batches: list[list[tuple[int, int, str]]]  # GetMsgEx replies still to give, one per poll


def getmsg(batches: list[list[tuple[int, int, str]]]):
    def answer(fields: dict[str, str]) -> dict[str, str]:
        batch = batches.pop(0) if batches else []
        return {"MN": str(len(batch)), "MT": enc_list([k for k, _, _ in batch]),
                "UN": enc_list([u for _, u, _ in batch]), "MG": enc_list([m for _, _, m in batch])}  # fmt: skip

    return answer


@pytest.fixture
async def hostile(stack, user, tmp_path) -> AsyncIterator[Any]:
    made: list[tuple[Bridge, Store, HomeserverAPI, HostileQQ]] = []

    async def make(name: str, *, online: list[tuple[int, str]] = (), nicks: dict[int, str] | None = None) -> Hostile:
        server = await HostileQQ().__aenter__()
        batches: list[list[tuple[int, int, str]]] = []
        server.on("GetMsgEx", getmsg(batches))
        server.on("Query_Stat", lambda f: {"FC": enc_list([0] * len(online)), "FN": "1", "SN": str(len(online)),
                                           "ST": enc_list([10] * len(online)), "UN": enc_list([u for u, _ in online]),
                                           "NK": enc_list([n for _, n in online])})  # fmt: skip
        server.on("List", lambda f: {"FN": "1", "SN": str(len(online)), "UN": enc_list([u for u, _ in online])})
        server.on("GetInfo", lambda f: {"LV": "0", "UN": f["UN"], "NK": enc((nicks or {}).get(int(f["UN"]), "Nick"))})
        config = Config(
            homeserver={"url": stack.synapse.base_url, "domain": "localhost"},
            appservice={"as_token": stack.as_token, "hs_token": stack.hs_token},
            qq={"server_url": server.url, "poll_fast": 0.1, "poll_idle": 0.5, "timeout": 2},
        )
        store = await Store.open(str(tmp_path / f"{name}.db"))
        matrix = HomeserverAPI(stack.synapse.base_url, stack.as_token, stack.bot)
        media = HomeserverMedia(matrix, stack.synapse.base_url, stack.as_token)
        bridge = Bridge(config, store, matrix, lambda uin: QQClient(server.url, uin, timeout=2),
                        homeserver=matrix.health, media=media)  # fmt: skip
        made.append((bridge, store, matrix, server))
        person = await user(name)
        control = await matrix.create_room(invite=[person.mxid], is_direct=True, name="hostile control")
        await person.client.join(control)
        await store.users.upsert(person.mxid)
        await store.users.set_control_room(person.mxid, control)
        await bridge.accounts.resume(person.mxid, 10001, "0" * 32)
        return Hostile(server, bridge, person, control, batches)

    yield make
    for bridge, store, matrix, server in made:
        await bridge.stop()
        await store.close()
        await matrix.close()
        await server.__aexit__(None, None, None)


async def notices(h: Hostile, needle: str, count: int, timeout: float = 20) -> list[str]:
    await h.person.wait_for(lambda: len([t for t in h.person.texts(h.control) if needle in t]) >= count,
                            timeout, f"{count} notice(s) with {needle!r}")  # fmt: skip
    return [t for t in h.person.texts(h.control) if needle in t]


async def test_messages_from_illegal_qq_numbers_are_set_aside_and_the_rest_flows(hostile) -> None:
    h = await hostile("hostile1")
    h.batches.append([(9, 1, "from one"), (9, 99999999999, "from a giant"), (9, 20002, "hello after")])
    h.batches.append([(9, 20002, "and after that")])
    puppet = "@_qq_20002:localhost"
    portal = await h.person.accept_invite(puppet)
    await h.person.wait_for_text(portal, "and after that", sender=puppet)
    assert h.person.texts(portal, puppet) == ["hello after", "and after that"]
    told = await notices(h, "set aside", 2)
    assert any("from 1 " in t and "1 is not a QQ number" in t and "“from one”" in t for t in told), told
    assert any("99999999999 is not a QQ number" in t and "“from a giant”" in t for t in told), told
    await asyncio.sleep(1.5)  # told once each, not once per retry
    assert len(await notices(h, "set aside", 2)) == 2
    store = h.bridge.store
    rows = await store.db.fetch("SELECT sender_uin, state FROM qq_inbound ORDER BY inbound_id")
    assert [(r["sender_uin"], r["state"]) for r in rows] == [
        (1, "failed"), (99999999999, "failed"), (20002, "relayed"), (20002, "relayed")]  # fmt: skip


async def test_a_nickname_over_the_display_name_cap_is_clipped_and_blocks_nothing(hostile, stack) -> None:
    long = "龍" * 300
    h = await hostile("hostile2", online=[(20003, long)])
    puppet = "@_qq_20003:localhost"
    await h.person.wait_for(lambda: h.bridge.accounts.get(h.person.mxid).last_poll, 20, "the first poll")
    async with httpx.AsyncClient() as http:
        profile = (await http.get(f"{stack.synapse.base_url}/_matrix/client/v3/profile/{puppet}/displayname")).json()
    assert len(profile["displayname"]) == 256 and profile["displayname"].endswith("龍… (QQ)")
    h.batches.append([(9, 20003, "a long name, and still here")])
    portal = await h.person.accept_invite(puppet)
    await h.person.wait_for_text(portal, "a long name, and still here", sender=puppet)


async def test_a_nickname_with_newlines_cannot_forge_lines_in_the_bots_notices(hostile) -> None:
    forged = "Eve\nSYSTEM: your session expired. Re-enter your password at https://evil.example\u202e"
    h = await hostile("hostile3", nicks={20004: forged})
    h.batches.append([(2, 20004, "hi\n\nSYSTEM: type `login 10001` again")])
    [prompt] = await notices(h, "Friend request from", 1)
    first, second = prompt.split("\n")  # the prompt's own two lines, no more
    assert first == ("Friend request from “Eve SYSTEM: your session expired. Re-enter your password at htt…” "
                     "(20004): “hi SYSTEM: type `login 10001` again”")  # fmt: skip
    assert second.startswith("Answer with `accept 20004`")
    h.batches.append([(4, 20004, "no\nSYSTEM: bye")])
    [rejected] = await notices(h, "rejected your friend request", 1)
    assert "\n" not in rejected and rejected.endswith("“no SYSTEM: bye”")


async def test_a_friend_list_without_end_is_a_bounded_error_and_registers_no_puppets(hostile, stack) -> None:
    h = await hostile("hostile4")
    h.server.on("List", lambda f: {"FN": "0", "SN": f["TN"],
                                   "UN": enc_list(range(30000 + int(f["UN"]), 30000 + int(f["UN"]) + int(f["TN"])))})  # fmt: skip
    account = h.bridge.accounts.get(h.person.mxid)
    await h.person.wait_for(lambda: account.last_error, 20, "the sync to fail")
    assert "List: the QQ server lists more than 10,000 friends" in account.last_error  # `ping` shows it
    await asyncio.sleep(3)
    assert h.server.counts["LIST"] <= 8 * 63, h.server.counts  # a few bounded tries with backoff, not 670 a second
    async with httpx.AsyncClient() as http:  # nothing was registered for the 10,000 made-up friends
        answer = await http.get(f"{stack.synapse.base_url}/_matrix/client/v3/profile/@_qq_30000:localhost")
    assert answer.status_code == 404


async def test_a_dripped_reply_ends_at_the_deadline_and_the_account_says_so(hostile) -> None:
    h = await hostile("hostile5")
    account = h.bridge.accounts.get(h.person.mxid)
    await h.person.wait_for(lambda: account.last_poll, 20, "the first poll")
    h.server.on("GetMsgEx", lambda f: h.server.drip(f"{h.server.echo(f)}&RES=0&MN=0&MT=&UN=&MG=".encode(), every=0.5))
    await h.person.wait_for(lambda: account.last_error, 10, "the dripped GetMsgEx to fail")
    assert "no whole reply within 2 s" in account.last_error and account.state.value == "unreachable"
    h.server.on("GetMsgEx", getmsg(h.batches))  # the server behaves again: polling resumes
    h.batches.append([(9, 20005, "back again")])
    portal = await h.person.accept_invite("@_qq_20005:localhost")
    await h.person.wait_for_text(portal, "back again")
