"""The simulator's fixture: which QQ accounts exist, read from YAML and checked.

It owns the fixture format and its validation. A fixture looks like::

    accounts:
      - uin: 10001
        password: "secret"      # plain text; Login compares its MD5
        nick: "Alice"
        auth: 1                  # 0 anyone may add, 1 needs verification, 2 accepts no one
        face: 270
        friends: [10002, 10003]  # one-way lists, as QQ has them
        profile: {AG: 19, SX: 1, EM: "alice@example.org", CT: "Suzhou", BT: 1}

`uin`, `password` and `nick` are required; `auth` defaults to 0, `face` to 0,
`friends` to [] and `profile` to {}. A bad fixture raises one `FixtureError` naming the
account and the field.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Account", "Fixture", "FixtureError", "load_fixture", "PROFILE_KEYS", "UIN_MIN", "UIN_MAX"]

UIN_MIN = 10000
UIN_MAX = 4294967295

# Profile keys a fixture may set (docs/protocol.md §5 GetInfo). FC, NK, UN and LV come from
# the account itself or the request, so a profile may not set them.
PROFILE_KEYS = frozenset(
    "AD AG BT CO CT CV CY EM HP ID JB MO MT MV PC PH PR PV RN SC SH SX".split()
)
# Coded profile keys and their allowed ranges.
_CODED = {"SX": range(0, 2), "BT": range(0, 6), "CO": range(0, 13), "SH": range(0, 13)}
# libyaml's loader when PyYAML has it: a benchmark fixture of thousands of accounts
# loads in a fraction of the pure-Python time.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_ACCOUNT_KEYS = frozenset({"uin", "password", "nick", "auth", "face", "friends", "profile"})


class FixtureError(ValueError):
    """The fixture file or data is unusable; the message names the account and field."""


@dataclass(frozen=True)
class Account:
    """One QQ account as the fixture defines it (its starting state)."""

    uin: int
    password: str
    nick: str
    auth: int = 0
    face: int = 0
    friends: tuple[int, ...] = ()
    profile: Mapping[str, str] = field(default_factory=dict)

    @property
    def password_md5(self) -> str:
        """What Login's `PS` must be (lower-case hex; compared case-insensitively)."""
        return hashlib.md5(self.password.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Fixture:
    """All accounts, in fixture order."""

    accounts: tuple[Account, ...]

    def account(self, uin: int) -> Account:
        for account in self.accounts:
            if account.uin == uin:
                return account
        raise KeyError(uin)


def load_fixture(source: Fixture | Mapping[str, Any] | str | Path) -> Fixture:
    """Read and check a fixture from a YAML file path, or check already-loaded data."""
    if isinstance(source, Fixture):
        return source
    if isinstance(source, Mapping):
        return _build(source, where="fixture")
    path = Path(source)
    where = f"fixture {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FixtureError(f"{where}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise FixtureError(f"{where}: not UTF-8 text") from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise FixtureError(f"{where}: not valid YAML: {exc}") from None
    if not isinstance(data, Mapping):
        raise FixtureError(f"{where}: must be a mapping with an 'accounts' list")
    return _build(data, where=where)


def _build(data: Mapping[str, Any], where: str) -> Fixture:
    extra = set(data) - {"accounts"}
    if extra:
        raise FixtureError(f"{where}: unknown top-level key(s): {', '.join(sorted(map(str, extra)))}")
    entries = data.get("accounts")
    if not isinstance(entries, list):
        raise FixtureError(f"{where}: 'accounts' must be a list")
    accounts: list[Account] = []
    seen: set[int] = set()
    for index, entry in enumerate(entries, start=1):
        account = _account(entry, f"{where}: account #{index}")
        if account.uin in seen:
            raise FixtureError(f"{where}: account {account.uin}: field 'uin': given twice")
        seen.add(account.uin)
        accounts.append(account)
    for account in accounts:
        for friend in account.friends:
            if friend not in seen:
                raise FixtureError(
                    f"{where}: account {account.uin}: field 'friends': {friend} is not an account in the fixture"
                )
    return Fixture(tuple(accounts))


def _account(entry: Any, where: str) -> Account:
    if not isinstance(entry, Mapping):
        raise FixtureError(f"{where}: must be a mapping")
    uin = entry.get("uin")
    if not _is_int(uin):
        raise FixtureError(f"{where}: field 'uin': required, an integer")
    if not UIN_MIN <= uin <= UIN_MAX:
        raise FixtureError(f"{where}: field 'uin': {uin} is outside {UIN_MIN}..{UIN_MAX}")
    where = where.rsplit(": account #", 1)[0] + f": account {uin}"
    unknown = set(entry) - _ACCOUNT_KEYS
    if unknown:
        raise FixtureError(f"{where}: unknown field(s): {', '.join(sorted(map(str, unknown)))}")

    password = entry.get("password")
    if not isinstance(password, str) or not password:
        raise FixtureError(f"{where}: field 'password': required, a non-empty string (quote it in YAML)")
    nick = entry.get("nick")
    if not isinstance(nick, str) or not nick:
        raise FixtureError(f"{where}: field 'nick': required, a non-empty string")
    auth = entry.get("auth", 0)
    if not _is_int(auth) or auth not in (0, 1, 2):
        raise FixtureError(f"{where}: field 'auth': must be 0, 1 or 2, got {auth!r}")
    face = entry.get("face", 0)
    if not _is_int(face) or face < 0:
        raise FixtureError(f"{where}: field 'face': must be a non-negative integer, got {face!r}")

    friends = entry.get("friends", [])
    if friends is None:
        friends = []
    if not isinstance(friends, list) or not all(_is_int(f) for f in friends):
        raise FixtureError(f"{where}: field 'friends': must be a list of UINs")
    if uin in friends:
        raise FixtureError(f"{where}: field 'friends': an account cannot list itself")
    if len(set(friends)) != len(friends):
        raise FixtureError(f"{where}: field 'friends': a UIN is listed twice")

    return Account(
        uin=uin,
        password=password,
        nick=nick,
        auth=auth,
        face=face,
        friends=tuple(friends),
        profile=_profile(entry.get("profile", {}), where),
    )


def _profile(raw: Any, where: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise FixtureError(f"{where}: field 'profile': must be a mapping of GetInfo keys")
    profile: dict[str, str] = {}
    for key, value in raw.items():
        name = str(key).upper()
        if name not in PROFILE_KEYS:
            raise FixtureError(
                f"{where}: field 'profile.{key}': not a profile key (one of {', '.join(sorted(PROFILE_KEYS))})"
            )
        if name in profile:
            raise FixtureError(f"{where}: field 'profile.{key}': given twice")
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise FixtureError(f"{where}: field 'profile.{key}': must be a string or an integer")
        if name == "AG" and not (_is_int(value) and value >= 0):
            raise FixtureError(f"{where}: field 'profile.{key}': must be a non-negative integer")
        if name in _CODED and not (_is_int(value) and value in _CODED[name]):
            allowed = _CODED[name]
            raise FixtureError(
                f"{where}: field 'profile.{key}': must be an integer {allowed.start}..{allowed.stop - 1}"
            )
        profile[name] = str(value)
    return profile


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
