"""The body grammar of docs/protocol.md §2, for the client side: no I/O, no commands.

A body is `KEY=VALUE` pairs joined by `&`. Values are UTF-8, percent-encoded: every
byte outside `A-Z a-z 0-9 - _ . ~` becomes `%XX` (upper-case hex) and `+` is a literal
plus. List fields hold items each followed by a comma, each item encoded on its own.

Replies come from the server, so decoding is strict and raises RemoteProtocolError:
a key given twice, a broken escape or bytes that are not UTF-8 are the server's fault.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from urllib.parse import quote, unquote_to_bytes

from qqbridge.qq.errors import RemoteProtocolError

# A `%` must start a two-hex-digit escape; anything else is a broken value.
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def encode_value(text: str) -> str:
    """Percent-encode one value (or one list item) exactly as §2 says."""
    # `quote` with no safe characters leaves only A-Z a-z 0-9 - _ . ~ and writes upper-case hex.
    return quote(text, safe="", encoding="utf-8", errors="strict")


def decode_value(raw: str) -> str:
    """Decode one value; lower-case hex and harmless literal characters are accepted."""
    if _BAD_ESCAPE.search(raw):
        raise RemoteProtocolError(f"broken percent-escape in {raw[:40]!r}")
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(f"value is not UTF-8: {raw[:40]!r}") from exc


def encode_list(items: Iterable[str]) -> str:
    """`a,b,` for [a, b]; `` for []; `,` for [""]: n items, n commas."""
    return "".join(encode_value(item) + "," for item in items)


def decode_list(raw: str) -> list[str]:
    """The inverse of encode_list; also accepts a non-empty list without its last comma."""
    if raw == "":
        return []
    parts = raw.split(",")
    if parts[-1] == "":
        parts.pop()
    return [decode_value(part) for part in parts]


def encode_body(pairs: Sequence[tuple[str, str]]) -> bytes:
    """Join already-encoded pairs; keys are emitted upper case."""
    return "&".join(f"{key.upper()}={value}" for key, value in pairs).encode("ascii")


def split_body(body: bytes) -> dict[str, str]:
    """Split a reply into {KEY: still-encoded value}, keys upper-cased, in reply order."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError("reply body is not UTF-8") from exc
    pairs = text.split("&")
    if len(pairs) > 1 and pairs[-1] == "":
        pairs.pop()  # the seed shows replies such as `...&RES=0&`: a trailing `&` is harmless
    fields: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise RemoteProtocolError(f"reply has a pair without KEY=VALUE: {pair[:40]!r}")
        key = key.upper()
        if key in fields:
            raise RemoteProtocolError(f"reply gives {key} twice")
        fields[key] = value
    return fields
