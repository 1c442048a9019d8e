"""The simulator's own reading and writing of QQ bodies (docs/protocol.md §2); no I/O.

It owns the body grammar on the server side: splitting `KEY=VALUE&...` into fields,
percent-decoding values strictly into UTF-8 text, and percent-encoding values and comma
lists for replies. It deliberately shares nothing with the client codec in `qqbridge.qq`:
the two are written apart so that a misreading of the protocol cannot hide in both.

Anything that breaks the grammar raises `Malformed`; the server answers such a request
with an empty body (the seed's NULL) and changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["Malformed", "parse_body", "encode", "encode_list", "is_digits"]


class Malformed(ValueError):
    """The peer's request breaks docs/protocol.md §2 (or a command's parameter rules)."""


# Bytes written as themselves; every other byte becomes %XX (upper-case hex).
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")
_ENCODE_BYTE = tuple(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in range(256))

# Every two-character hex escape body, either case, mapped to its byte value.
_HEX_DIGITS = "0123456789abcdefABCDEF"
_UNESCAPE = {
    f"{hi}{lo}".encode("ascii"): int(f"{hi}{lo}", 16) for hi in _HEX_DIGITS for lo in _HEX_DIGITS
}


def is_digits(text: str) -> bool:
    """True when `text` is one or more ASCII decimal digits (no sign, no spaces)."""
    return text.isascii() and text.isdigit()


def parse_body(body: bytes) -> dict[str, str]:
    """Split a request body into `{UPPER-CASE KEY: decoded value}`.

    Raises `Malformed` for an empty body, a piece without `=`, a key that is not ASCII
    letters and digits, a key given twice (in any case), a literal `=` inside a value, a
    bad `%` escape, or a value that is not UTF-8 once decoded.
    """
    if not body:
        raise Malformed("empty body")
    fields: dict[str, str] = {}
    for piece in body.split(b"&"):
        key, sep, raw = piece.partition(b"=")
        if not sep:
            raise Malformed(f"no '=' in {piece[:40]!r}")
        if not key.isalnum():  # bytes.isalnum() is ASCII-only and false for b""
            raise Malformed(f"bad key {key[:40]!r}")
        name = key.decode("ascii").upper()
        if name in fields:
            raise Malformed(f"key {name} given twice")
        fields[name] = decode(raw)
    return fields


def decode(raw: bytes) -> str:
    """Percent-decode one value and read it as UTF-8 (strictly)."""
    if b"=" in raw:
        raise Malformed("literal '=' in a value")
    if b"%" in raw:
        parts = raw.split(b"%")
        out = bytearray(parts[0])
        for part in parts[1:]:
            value = _UNESCAPE.get(part[:2])
            if value is None:
                raise Malformed(f"bad escape %{part[:2]!r}")
            out.append(value)
            out += part[2:]
        raw = bytes(out)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Malformed("value is not UTF-8") from exc


def encode(text: str) -> str:
    """Percent-encode `text` as UTF-8; only `A-Z a-z 0-9 - _ . ~` stay literal."""
    if text.isascii() and text.isalnum():  # the common case: numbers and plain words
        return text
    return "".join([_ENCODE_BYTE[b] for b in text.encode("utf-8")])


def encode_list(items: Iterable[object]) -> str:
    """A list field: each item encoded on its own and followed by a comma (`a,b,`)."""
    return "".join([encode(str(item)) + "," for item in items])
