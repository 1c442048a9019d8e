"""What a Matrix event in a portal becomes on QQ: plain text only (BRIDGE.md §5).

Text, notices and emotes go as their plain `body`; a reply loses its quoted fallback;
an edit goes as the corrected text; media, stickers and locations, which cannot cross
the protocol, become a line naming the kind with a download link. No I/O here.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from qqbridge.matrix.content import json_object

MEDIA = {"m.image": "image", "m.file": "file", "m.audio": "audio", "m.video": "video"}


def strip_reply_fallback(body: str) -> str:
    """Drop the `> <@user> quoted` lines a reply starts with, and the blank line after."""
    lines = body.split("\n")
    index = 0
    while index < len(lines) and lines[index].startswith(">"):
        index += 1
    if index and index < len(lines) and lines[index] == "":
        index += 1
    return "\n".join(lines[index:]) if index else body


def download_link(mxc: object, media_base: str) -> str:
    if not isinstance(mxc, str) or not mxc.startswith("mxc://"):
        return "(no link)"
    server, _, media_id = mxc[len("mxc://") :].partition("/")
    return f"{media_base}/_matrix/media/v3/download/{quote(server, safe='')}/{quote(media_id, safe='')}"


def outgoing_text(event_type: str, content: dict[str, Any], media_base: str) -> str | None:
    """The text to send to QQ, or None when the event carries nothing to relay."""
    if event_type == "m.sticker":
        return f"[sticker: {content.get('body') or 'sticker'}] {download_link(content.get('url'), media_base)}"
    if event_type != "m.room.message":
        return None
    relates = json_object(content.get("m.relates_to"))
    edited = relates.get("rel_type") == "m.replace" and isinstance(content.get("m.new_content"), dict)
    if edited:
        content = content["m.new_content"]
    body = content.get("body")
    if not isinstance(body, str):
        return None
    msgtype = content.get("msgtype")
    if msgtype in MEDIA:
        text = f"[{MEDIA[msgtype]}: {body}] {download_link(content.get('url'), media_base)}"
    elif msgtype == "m.location":
        text = f"[location: {body}] {content.get('geo_uri', '')}".rstrip()
    elif msgtype == "m.emote":
        text = f"* {body}"
    else:
        if not edited and isinstance(relates.get("m.in_reply_to"), dict):
            body = strip_reply_fallback(body)
        text = body
    if edited:
        text = f"(edited) {text}"
    return text if text.strip() else None
