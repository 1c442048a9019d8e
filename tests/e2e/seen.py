"""What the owner's Matrix client reads from the homeserver about puppets and portals:
presence, profiles, pictures and membership events, each straight from Synapse's
client API, as Element or nheko would read them."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import httpx

from qqbridge.qq import QQClient


def puppet(uin: int) -> str:
    return f"@_qq_{uin}:localhost"


async def get(stack, token: str, path: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.get(stack.synapse.base_url + path, headers={"Authorization": f"Bearer {token}"})


async def presence(stack, person, mxid: str) -> dict[str, Any]:
    """GET /presence/{mxid}/status, as `person` (who must share a room with `mxid`)."""
    answer = await get(stack, person.client.access_token, f"/_matrix/client/v3/presence/{quote(mxid)}/status")
    assert answer.status_code == 200, answer.text
    return answer.json()


async def wait_for_presence(stack, person, mxid: str, wanted: str, timeout: float = 20) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while (now := await presence(stack, person, mxid))["presence"] != wanted:
        assert asyncio.get_running_loop().time() < deadline, f"{mxid} stayed {now}, not {wanted}"
        await asyncio.sleep(0.2)
    return now


async def lapse(stack, mxid: str) -> None:
    """What Synapse does to a user who neither syncs nor speaks: offline. Set through the
    bridge's own registration (as_token), as if the homeserver had timed the puppet out."""
    async with httpx.AsyncClient(timeout=30) as http:
        answer = await http.put(
            f"{stack.synapse.base_url}/_matrix/client/v3/presence/{quote(mxid)}/status",
            params={"user_id": mxid}, json={"presence": "offline"},
            headers={"Authorization": f"Bearer {stack.as_token}"},
        )  # fmt: skip
    assert answer.status_code == 200, answer.text


async def avatar_url(stack, person, mxid: str) -> str | None:
    answer = await get(stack, person.client.access_token, f"/_matrix/client/v3/profile/{quote(mxid)}/avatar_url")
    return answer.json().get("avatar_url") if answer.status_code == 200 else None


async def download(stack, person, mxc: str) -> httpx.Response:
    server, media_id = mxc.removeprefix("mxc://").split("/", 1)
    return await get(stack, person.client.access_token, f"/_matrix/client/v1/media/download/{server}/{media_id}")


async def member_events(stack, person, room_id: str, user: str) -> list[dict[str, Any]]:
    """Every m.room.member event about `user` in the room's timeline, oldest first."""
    answer = await get(stack, person.client.access_token,
                       f"/_matrix/client/v3/rooms/{quote(room_id)}/messages?dir=b&limit=500")  # fmt: skip
    assert answer.status_code == 200, answer.text
    chunk = answer.json()["chunk"]
    return [e for e in reversed(chunk) if e["type"] == "m.room.member" and e.get("state_key") == user]


class KeptAlive:
    """QQ clients that keep their sessions (the test's QQ server expires one silent for
    15 s): each fetches its messages every second until closed."""

    def __init__(self, *clients: QQClient) -> None:
        self.clients = clients
        self._task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        while True:
            for client in self.clients:
                try:
                    await client.drain_messages()
                except Exception:  # a refused poll must not end the test's QQ sessions
                    pass
            await asyncio.sleep(1)

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
