"""The simulator's body grammar (docs/protocol.md §2), without I/O."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qqbridge.qqsim.wire import Malformed, encode, encode_list, is_digits, parse_body


def test_keys_are_case_insensitive_and_canonical_upper() -> None:
    assert parse_body(b"ver=1.1&Cmd=login&sEq=1&UIN=10001") == {
        "VER": "1.1",
        "CMD": "login",
        "SEQ": "1",
        "UIN": "10001",
    }


def test_values_decode_escapes_of_either_case_plus_and_literal_utf8() -> None:
    fields = parse_body("A=%e4%BD%a0%E5%a5%BD&B=1+1&C=caf\u00e9 ok&D=".encode())
    assert fields == {"A": "你好", "B": "1+1", "C": "café ok", "D": ""}


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"VER",  # no '='
        b"VER=1.1&",  # an empty piece
        b"VER=1.1&&CMD=List",
        b"=1.1",  # empty key
        b"V-R=1",  # key not letters and digits
        b"V%45R=1",
        "VÉR=1".encode(),
        b"VER=1.1&ver=1.1",  # duplicate, any case
        b"A=1=2",  # literal '=' inside a value
        b"A=%",
        b"A=%4",
        b"A=%G1",
        b"A=% 1",
        b"A=%+1",
        b"A=%FF",  # not UTF-8
        b"A=\xff",
        b"A=%C0%AF",  # overlong
        b"A=%ED%A0%80",  # a surrogate
    ],
)
def test_malformed_bodies(body: bytes) -> None:
    with pytest.raises(Malformed):
        parse_body(body)


def test_encode_keeps_only_unreserved_bytes() -> None:
    assert encode("AZaz09-_.~") == "AZaz09-_.~"
    assert encode("a b+c,d&e=f%") == "a%20b%2Bc%2Cd%26e%3Df%25"
    assert encode("你") == "%E4%BD%A0"


def test_encode_list_writes_a_comma_after_every_item() -> None:
    assert encode_list([]) == ""
    assert encode_list([""]) == ","
    assert encode_list([99, 9]) == "99,9,"
    assert encode_list(["a,b", "c"]) == "a%2Cb,c,"


def test_is_digits_is_ascii_only() -> None:
    assert is_digits("0123456789")
    for text in ["", "-1", "+1", " 1", "1 ", "1.0", "١٢", "²"]:
        assert not is_digits(text)


@given(st.text())
def test_encoded_text_decodes_to_itself(text: str) -> None:
    encoded = encode(text)
    assert re.fullmatch(r"(?:[A-Za-z0-9\-_.~]|%[0-9A-F]{2})*", encoded)
    assert parse_body(f"K={encoded}".encode()) == {"K": text}


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_are_malformed(body: bytes) -> None:
    try:
        fields = parse_body(body)
    except Malformed:
        return
    assert all(k.isupper() or k.isdigit() or k.isalnum() for k in fields)


@given(st.dictionaries(st.text(string.ascii_uppercase, min_size=1, max_size=4), st.text(), min_size=1))
def test_bodies_round_trip(fields: dict[str, str]) -> None:
    body = "&".join(f"{k}={encode(v)}" for k, v in fields.items()).encode()
    assert parse_body(body) == fields
