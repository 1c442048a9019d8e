"""Issue 10, item 5: puppets and the bot have pictures, on the real Synapse.

QQ face ids name pictures (`FC/3 + 1`): Bob's face 3 is picture 2, Carol's and Dave's
face 0 is picture 1. The bridge draws each picture once, uploads it once, and every
puppet with that picture shows the same mxc://, which downloads as a PNG."""

from __future__ import annotations

import asyncio
import io
import sqlite3

from PIL import Image

from tests.e2e.seen import KeptAlive, avatar_url, download, puppet
from tests.e2e.test_control_room import command


async def wait_for_avatar(stack, person, mxid: str, timeout: float = 20) -> str:
    deadline = asyncio.get_running_loop().time() + timeout
    while not (mxc := await avatar_url(stack, person, mxid)):
        assert asyncio.get_running_loop().time() < deadline, f"{mxid} has no avatar"
        await asyncio.sleep(0.2)
    return mxc


async def png(stack, person, mxc: str) -> Image.Image:
    answer = await download(stack, person, mxc)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/png" and answer.content.startswith(b"\x89PNG")
    return Image.open(io.BytesIO(answer.content))


def uploads_remembered(stack) -> dict[str, str]:
    db = sqlite3.connect(f"file:{stack.config_path.parent / 'bridge.db'}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT key, value FROM bridge_state WHERE key LIKE 'avatar:face:%'").fetchall())
    finally:
        db.close()


async def test_puppets_and_the_bot_have_pictures_one_upload_per_face(stack, bridged, qq) -> None:
    bob = await qq(10002)  # online at the login sync, which brings his face (Query_Stat FC=3)
    alive = KeptAlive(bob)
    try:
        owner, room = await bridged("seen5", 10001)
        bob_mxc = await wait_for_avatar(stack, owner, puppet(10002))
    finally:
        await alive.close()
    for uin in (10003, 10004):  # face 0 both: GetInfo (whois) brings it
        await command(owner, room, f"whois {uin}", "Avatar: 1.bmp", stack)
    carol_mxc = await wait_for_avatar(stack, owner, puppet(10003))
    dave_mxc = await wait_for_avatar(stack, owner, puppet(10004))
    bot_mxc = await wait_for_avatar(stack, owner, stack.bot)

    assert carol_mxc == dave_mxc != bob_mxc != bot_mxc != carol_mxc  # one picture, one upload
    remembered = uploads_remembered(stack)
    assert remembered["avatar:face:1"] == carol_mxc and remembered["avatar:face:2"] == bob_mxc
    assert len(set(remembered.values())) == len(remembered)
    for mxc in (bob_mxc, carol_mxc, bot_mxc):
        image = await png(stack, owner, mxc)
        assert image.size == (256, 256)
    assert (await png(stack, owner, bob_mxc)).tobytes() != (await png(stack, owner, carol_mxc)).tobytes()
