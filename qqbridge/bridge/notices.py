"""What the bridge says in Matrix, and the transaction ids it says it with. No I/O.

Every module of the core that sends imports these from here (not from `core`, which
imports them all).

Names and texts that come from QQ are shown in the bot's notices only through
`one_line`, `quoted` or `shown_name`: on one line (a nickname with a newline must not
put a forged line in the bot's mouth), without control or format characters (bidi
overrides, zero-width characters), clipped to a bounded length.
"""

from __future__ import annotations

import hashlib
import html
import unicodedata
from typing import Any

# Categories that end a line or control the terminal (Cc, Zl, Zp) become a space;
# format characters (Cf: bidi overrides, zero-width joiners and spaces) are removed.
_AS_SPACE = frozenset({"Cc", "Zl", "Zp"})
_REMOVED = frozenset({"Cf"})
# A name of only these (and letters, marks and digits) cannot pass for the bot's words.
_PLAIN_PUNCTUATION = frozenset(" &.-_'’·")
NAME_LIMIT = 64  # characters of a QQ name in a notice
TEXT_LIMIT = 300  # characters of a QQ text (a reason, an unknown event) in a notice

# Said in a control room or portal that is encrypted (the bridge reads no encrypted event).
ENCRYPTED = ("I cannot read encrypted messages, and this room is encrypted. Start a new direct chat with me "
             "with encryption turned off (in Element: Start chat → show advanced → disable end-to-end encryption).")  # fmt: skip


def txn_for(*parts: object) -> str:
    """A Matrix transaction id derived from what caused the send: repeating the work
    after a crash repeats the id, and the homeserver returns the first event again."""
    return "qqb" + hashlib.sha256("\x00".join(map(str, parts)).encode()).hexdigest()[:32]


def notice_content(text: str, *, reply_to: str | None = None, notify: bool = False) -> dict[str, Any]:
    """What the bot says: the plain `body` and its HTML rendering (`to_html`),
    optionally as a reply to the event it is about. It mentions no one (`m.mentions:
    {}`), so a QQ text quoted in it cannot ping the room.

    An `m.notice` never raises the room's notification count under the default push
    rules; what needs the person's answer (a friend request, a stopped login) is sent
    with `notify=True`, as `m.text`, which does in a direct chat."""
    content: dict[str, Any] = {
        "msgtype": "m.text" if notify else "m.notice", "body": text, "m.mentions": {},
        "format": "org.matrix.custom.html", "formatted_body": to_html(text),
    }  # fmt: skip
    if reply_to is not None:
        content["m.relates_to"] = {"m.in_reply_to": {"event_id": reply_to}}
    return content


def to_html(text: str) -> str:
    """The bot's plain text as HTML: everything escaped first (QQ texts quoted in it
    stay text), then `code` in backticks as <code>, runs of lines that start with
    "• " as a list, and the other line breaks as <br>."""
    blocks: list[str] = []
    items: list[str] = []
    for line in text.split("\n"):
        if line.startswith(BULLET):
            items.append(f"<li>{_inline_html(line.removeprefix(BULLET))}</li>")
            continue
        if items:
            blocks.append("<ul>" + "".join(items) + "</ul>")
            items = []
        blocks.append(_inline_html(line) + "<br>")
    if items:
        blocks.append("<ul>" + "".join(items) + "</ul>")
    return "".join(blocks).removesuffix("<br>")


def _inline_html(line: str) -> str:
    parts = html.escape(line, quote=False).split("`")
    if len(parts) % 2 == 0:  # an odd number of backticks: the last one is just a character
        parts[-2:] = ["`".join(parts[-2:])]
    return "".join(f"<code>{part}</code>" if n % 2 else part for n, part in enumerate(parts))


BULLET = "• "  # a line that starts so is an item of a list in the HTML rendering


def one_line(text: str, limit: int = TEXT_LIMIT) -> str:
    """`text` on one line: line breaks and control characters become spaces, format
    characters go, runs of spaces become one; longer than `limit` characters, it is
    cut and ends with `…`."""
    kept = []
    for char in text:
        category = unicodedata.category(char)
        if category in _AS_SPACE:
            kept.append(" ")
        elif category not in _REMOVED:
            kept.append(char)
    flat = " ".join("".join(kept).split())
    return clip(flat, limit)


def clip(text: str, limit: int) -> str:
    """At most `limit` characters, ending with `…` when cut."""
    if len(text) <= limit:
        return text
    return text[: limit - 1].rstrip() + "…" if limit >= 1 else ""


def quoted(text: str, limit: int = TEXT_LIMIT) -> str:
    """`“text”`, on one line and clipped; quote marks inside become plain `"`, so the
    quoted part visibly ends where it ends."""
    inner = one_line(text, limit).replace("“", '"').replace("”", '"')
    return f"“{inner}”"


def shown_name(name: str, limit: int = NAME_LIMIT) -> str:
    """A QQ nickname as a notice shows it: as it is when it is plainly a name (letters,
    digits, spaces and `&.-_'`), quoted otherwise, so that a nickname such as
    `SYSTEM: re-enter your password` cannot read as the bot's own words."""
    flat = one_line(name, limit)
    plain = (
        flat == name
        and flat != ""
        and all(char in _PLAIN_PUNCTUATION or unicodedata.category(char)[0] in "LMN" for char in flat)
    )
    return flat if plain else quoted(name, limit)
