"""Pictures: puppets and the bot have avatars.

QQ gives each account a face id (`FC`); the picture it names is number `FC/3 + 1`
(docs/protocol.md: `FC=270` → 91.bmp). The pictures themselves never cross the protocol, so
the bridge draws one per picture number with Pillow (a disc in a colour of its own,
with the number on it), uploads it once to the homeserver's media repository and
keeps its mxc:// in the store:

    face 270 ──▶ picture 91 ──▶ bridge_state "avatar:face:91" ──(none yet)──▶ draw, upload
                                      │ mxc://…                               │
                                      ▼                                       ▼
             puppet's avatar_url, set only when it is not already this one ("avatar:user:<mxid>")

Every puppet with the same picture shares one upload. A puppet's avatar is set when
its face becomes known (Query_Stat at the login sync, GetInfo when the bridge learns a
nickname or runs `whois`), and only when it changes: each change rewrites the puppet's
membership in every room it is in. The bot gets a picture of its own at start.

Avatars are cosmetic: a failure is logged and tried again the next time the face is
seen; it never holds up a message.
"""

from __future__ import annotations

import asyncio
import colorsys
import io
import random
from collections.abc import Callable
from typing import Protocol
from urllib.parse import quote

import httpx
import structlog
from PIL import Image, ImageDraw, ImageFont

from qqbridge.bridge.ports import Matrix
from qqbridge.store import Store

log = structlog.get_logger(__name__)

SIZE = 256  # pixels: crisp in a client's profile view, a few KiB as PNG
MAX_FACE = 3 * 10_000  # QQ's faces number in the hundreds; past this a server is lying
BOT_KEY = "avatar:bot"
UPLOAD_TRIES = 4


def picture_number(face: int) -> int | None:
    """The picture a face id names (`FC/3 + 1`), or None for a face no QQ has."""
    if not isinstance(face, int) or not 0 <= face < MAX_FACE:
        return None
    return face // 3 + 1


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)  # Pillow's own font (FreeType): no system fonts needed


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _disc(colour: tuple[int, int, int], text: str, text_size: int) -> bytes:
    image = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.ellipse((0, 0, SIZE - 1, SIZE - 1), fill=(*colour, 255))
    draw.text((SIZE / 2, SIZE / 2), text, fill=(255, 255, 255, 255), font=_font(text_size), anchor="mm")
    return _png(image)


def face_colour(number: int) -> tuple[int, int, int]:
    """A colour per picture number, neighbours far apart on the colour wheel."""
    hue = (number * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.55, 0.80)
    return round(r * 255), round(g * 255), round(b * 255)


def draw_face(number: int) -> bytes:
    """The PNG for picture `number`: a coloured disc with the number."""
    text = str(number)
    return _disc(face_colour(number), text, SIZE * (45 if len(text) <= 2 else 34 if len(text) == 3 else 26) // 100)


def draw_bot() -> bytes:
    """The bot's PNG: "QQ" on QQ's blue."""
    return _disc((18, 150, 219), "QQ", SIZE * 42 // 100)


class Media(Protocol):
    async def upload(self, data: bytes, content_type: str, filename: str) -> str: ...
    async def set_avatar_url(self, mxid: str, mxc: str) -> None: ...


class HomeserverMedia:
    """The media repository and profiles of the homeserver, as the bridge's appservice.

    `upload` sends raw bytes (the JSON-only HomeserverAPI.request cannot), with the
    `as_token` in a header; `set_avatar_url` goes through HomeserverAPI.request,
    masquerading as the user."""

    def __init__(self, matrix: Matrix, base_url: str, as_token: str) -> None:
        self.matrix, self.base_url, self._auth = matrix, base_url.rstrip("/"), {"Authorization": f"Bearer {as_token}"}

    async def upload(self, data: bytes, content_type: str, filename: str) -> str:
        url = f"{self.base_url}/_matrix/media/v3/upload"
        headers = {**self._auth, "Content-Type": content_type}
        pause = 0.5
        async with httpx.AsyncClient(timeout=30) as http:
            for attempt in range(1, UPLOAD_TRIES + 1):
                try:
                    answer = await http.post(url, params={"filename": filename}, content=data, headers=headers)
                except httpx.HTTPError as exc:
                    failure = f"{type(exc).__name__}: {exc}"
                else:
                    if answer.status_code == 200:
                        try:
                            uri = answer.json().get("content_uri")
                        except (ValueError, AttributeError):
                            uri = None
                        if isinstance(uri, str) and uri.startswith("mxc://"):
                            return uri
                        raise UploadError(f"the upload was answered without an mxc:// URI: {answer.text[:200]}")
                    failure = f"HTTP {answer.status_code}: {answer.text[:200]}"
                    if answer.status_code != 429 and answer.status_code < 500:
                        raise UploadError(failure)
                if attempt < UPLOAD_TRIES:
                    await asyncio.sleep(pause * (0.5 + random.random()))
                    pause *= 2
        raise UploadError(f"gave up after {UPLOAD_TRIES} tries: {failure}")

    async def set_avatar_url(self, mxid: str, mxc: str) -> None:
        path = f"/_matrix/client/v3/profile/{quote(mxid, safe='')}/avatar_url"
        await self.matrix.request("PUT", path, {"avatar_url": mxc}, user_id=mxid, what=f"avatar of {mxid}")


class UploadError(Exception):
    """The homeserver did not take a picture."""


class Avatars:
    def __init__(self, store: Store, media: Media | None) -> None:
        """`media` None: no avatars (a homeserver stand-in without a media repository)."""
        self.store, self.media = store, media
        self._drawing: dict[str, asyncio.Lock] = {}
        self.uploads = 0

    async def picture(self, media: Media, key: str, draw: Callable[[], bytes], filename: str) -> str:
        """The mxc:// of a picture, drawn and uploaded the first time it is asked for."""
        async with self._drawing.setdefault(key, asyncio.Lock()):  # two puppets, one face: one upload
            known = await self.store.state.get(key)
            if known:
                return known
            mxc = await media.upload(draw(), "image/png", filename)
            self.uploads += 1
            await self.store.state.set(key, mxc)
            log.info("picture uploaded", key=key, mxc=mxc)
            return mxc

    async def show_face(self, mxid: str, face: int | None) -> bool:
        """Give `mxid` the picture of QQ face `face`; True if it has it now."""
        number = picture_number(face) if face is not None else None
        if number is None or self.media is None:
            if face is not None and number is None:
                log.info("no picture for a face id out of range", mxid=mxid, face=face)
            return False
        return await self._show(self.media, mxid, f"avatar:face:{number}", lambda: draw_face(number), f"qq-face-{number}.png")

    async def show_bot(self, mxid: str) -> bool:
        if self.media is None:
            return False
        return await self._show(self.media, mxid, BOT_KEY, draw_bot, "qqbridge.png")

    async def _show(self, media: Media, mxid: str, key: str, draw: Callable[[], bytes], filename: str) -> bool:
        try:
            mxc = await self.picture(media, key, draw, filename)
            shown = f"avatar:user:{mxid}"
            if await self.store.state.get(shown) == mxc:
                return True
            await media.set_avatar_url(mxid, mxc)
            await self.store.state.set(shown, mxc)
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # cosmetic: tried again the next time the face is seen
            log.warning("could not set an avatar", mxid=mxid, picture=key, error=str(exc))
            return False
