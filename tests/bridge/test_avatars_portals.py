"""Pictures (issue 10, item 5) and direct portals (item 2), without a homeserver.

A face's picture is drawn once, uploaded once and shared; a puppet's avatar is set only
when it changes; a face no QQ has gets none. `open` on a portal the owner is in or
invited to invites no one; an owner who is out is invited back, as to a direct chat."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from qqbridge.bridge.contacts.avatars import Avatars, draw_bot, draw_face, face_colour, picture_number
from qqbridge.bridge.contacts.portals import Portals
from qqbridge.bridge.contacts.puppets import Puppets
from qqbridge.config import Config
from qqbridge.matrix.api import MatrixError
from qqbridge.store import Store


def test_each_picture_number_is_a_png_disc_of_its_own_colour() -> None:
    seen = set()
    for number in (1, 2, 15, 91, 100, 3334):
        image = Image.open(io.BytesIO(draw_face(number)))
        assert image.format == "PNG" and image.size == (256, 256)
        assert image.getpixel((0, 0))[3] == 0  # outside the disc: transparent
        assert image.getpixel((128, 10))[:3] == face_colour(number)  # the disc, above the number
        seen.add(face_colour(number))
    assert len(seen) == 6
    assert Image.open(io.BytesIO(draw_bot())).size == (256, 256)
    assert draw_face(15) == draw_face(15)  # the same bytes each time


def test_the_picture_a_face_names() -> None:
    assert [picture_number(f) for f in (0, 2, 3, 42, 270, 272)] == [1, 1, 2, 15, 91, 91]
    assert picture_number(-1) is None and picture_number(10**9) is None


class Media:
    def __init__(self) -> None:
        self.uploads: list[str] = []
        self.avatars: list[tuple[str, str]] = []
        self.fail_uploads = False

    async def upload(self, data: bytes, content_type: str, filename: str) -> str:
        if self.fail_uploads:
            raise OSError("media repository down")
        assert content_type == "image/png" and data.startswith(b"\x89PNG")
        self.uploads.append(filename)
        return f"mxc://hs/{len(self.uploads)}"

    async def set_avatar_url(self, mxid: str, mxc: str) -> None:
        self.avatars.append((mxid, mxc))


@pytest.fixture
async def store(tmp_path: Path):
    store = await Store.open(str(tmp_path / "bridge.db"))
    yield store
    await store.close()


async def test_one_upload_per_picture_and_one_avatar_change_per_puppet(store: Store) -> None:
    media = Media()
    avatars = Avatars(store, media)
    assert await avatars.show_face("@_qq_1:x", 42)
    assert await avatars.show_face("@_qq_2:x", 43)  # 43 names the same picture as 42: 15.bmp
    assert await avatars.show_face("@_qq_1:x", 42)  # already shown: nothing to do
    assert media.uploads == ["qq-face-15.png"]
    assert media.avatars == [("@_qq_1:x", "mxc://hs/1"), ("@_qq_2:x", "mxc://hs/1")]
    assert await store.state.get("avatar:face:15") == "mxc://hs/1"

    again = Avatars(store, media)  # after a restart: the store remembers
    assert await again.show_face("@_qq_3:x", 44)
    assert media.uploads == ["qq-face-15.png"]

    assert await avatars.show_face("@_qq_1:x", 270)  # a new face: a new picture
    assert media.uploads == ["qq-face-15.png", "qq-face-91.png"] and media.avatars[-1] == ("@_qq_1:x", "mxc://hs/2")
    assert not await avatars.show_face("@_qq_1:x", -5)  # a lying server: passed over
    assert await avatars.show_bot("@qqbridge:x") and media.uploads[-1] == "qqbridge.png"


async def test_a_failed_upload_is_logged_and_tried_again(store: Store) -> None:
    media = Media()
    media.fail_uploads = True
    avatars = Avatars(store, media)
    assert not await avatars.show_face("@_qq_1:x", 3)
    media.fail_uploads = False
    assert await avatars.show_face("@_qq_1:x", 3)
    assert media.avatars == [("@_qq_1:x", "mxc://hs/1")]


class PortalMatrix:
    """Enough of a homeserver for Portals: rooms, state, and the owner's membership."""

    bot_mxid = "@qqbridge:x"

    def __init__(self) -> None:
        self.membership: str | None = None
        self.invites: list[tuple[str, dict[str, Any]]] = []
        self.rooms = 0

    async def ensure_registered(self, mxid: str) -> None: ...
    async def set_displayname(self, mxid: str, name: str) -> None: ...
    async def join(self, room_id: str, *, user_id: str | None = None) -> None: ...

    async def create_room(self, **_: Any) -> str:
        self.rooms += 1
        return f"!room{self.rooms}:x"

    async def put_state(self, room_id: str, event_type: str, content: dict[str, Any], state_key: str = "",
                        *, user_id: str | None = None) -> None:  # fmt: skip
        assert event_type == "m.room.member" and user_id == "@_qq_10002:x"
        self.invites.append((state_key, content))
        self.membership = content["membership"]

    async def request(self, method: str, path: str, body: Any = None, *, user_id: str | None = None,
                      what: str = "") -> dict[str, Any]:  # fmt: skip
        assert method == "GET" and path.endswith("/state/m.room.member/%40dan%3Ax") and user_id == "@_qq_10002:x"
        if self.membership is None:
            raise MatrixError(404, "M_NOT_FOUND", "no member event", what)
        return {"membership": self.membership}


async def test_open_invites_the_owner_once_and_always_as_a_direct_chat(store: Store) -> None:
    config = Config(homeserver={"url": "http://hs", "domain": "x"}, permissions={"x": "user"})
    matrix = PortalMatrix()
    await store.users.upsert("@dan:x")
    portals = Portals(store, matrix, Puppets(config, store, matrix))
    direct = ("@dan:x", {"membership": "invite", "is_direct": True})

    room = await portals.open("@dan:x", 10002, stranger=False)  # a new portal: invited once
    assert matrix.invites == [direct]
    for membership in ("invite", "join"):  # `open` again: invited or in, nobody is invited
        matrix.membership = membership
        assert await portals.open("@dan:x", 10002, stranger=False) == room
    assert matrix.invites == [direct]

    matrix.membership = "leave"  # turned the invite down, and the bridge missed it
    assert await portals.open("@dan:x", 10002, stranger=False) == room
    assert matrix.invites == [direct, direct] and matrix.rooms == 1
