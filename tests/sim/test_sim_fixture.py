"""Reading and checking the simulator's fixture."""

from __future__ import annotations

from pathlib import Path

import pytest

from qqbridge.qqsim import Fixture, FixtureError, Simulator, load_fixture
from tests.sim.accounts import ACCOUNTS


def test_loads_a_yaml_file_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "sim_accounts.yaml"
    path.write_text(
        'accounts:\n  - uin: 10001\n    password: "secret"\n    nick: "Alice"\n'
        "    auth: 1\n    face: 270\n    friends: [10002]\n"
        '    profile: {AG: 19, sx: 1, EM: "alice@example.org", CT: "Suzhou", BT: 1}\n'
        '  - uin: 10002\n    password: "pw"\n    nick: "Bob"\n',
        encoding="utf-8",
    )
    fixture = load_fixture(path)
    assert load_fixture(str(path)) == fixture
    alice, bob = fixture.accounts
    assert (alice.uin, alice.nick, alice.auth, alice.face, alice.friends) == (10001, "Alice", 1, 270, (10002,))
    assert alice.profile == {"AG": "19", "SX": "1", "EM": "alice@example.org", "CT": "Suzhou", "BT": "1"}
    assert alice.password_md5 == "5ebe2294ecd0e0f08eab7690d2a6ee69"
    assert (bob.auth, bob.face, bob.friends, dict(bob.profile)) == (0, 0, (), {})
    assert fixture.account(10002) is bob


def test_accepts_loaded_data_and_fixtures() -> None:
    fixture = load_fixture(ACCOUNTS)
    assert isinstance(fixture, Fixture)
    assert load_fixture(fixture) is fixture
    assert Simulator(ACCOUNTS).fixture == fixture


def _with(**changes: object) -> dict:
    account = {"uin": 10001, "password": "pw", "nick": "Alice", **changes}
    return {"accounts": [{k: v for k, v in account.items() if v is not None}, {"uin": 10002, "password": "pw", "nick": "Bob"}]}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_with(uin=None), "account #1: field 'uin'"),
        (_with(uin="10001"), "account #1: field 'uin'"),
        (_with(uin=100), "account #1: field 'uin': 100 is outside"),
        (_with(uin=4294967296), "field 'uin'"),
        (_with(password=None), "account 10001: field 'password'"),
        (_with(password=123456), "account 10001: field 'password'"),
        (_with(nick=""), "account 10001: field 'nick'"),
        (_with(auth=3), "account 10001: field 'auth': must be 0, 1 or 2"),
        (_with(auth=True), "account 10001: field 'auth'"),
        (_with(face=-1), "account 10001: field 'face'"),
        (_with(friends=10002), "account 10001: field 'friends'"),
        (_with(friends=[10009]), "account 10001: field 'friends': 10009 is not an account"),
        (_with(friends=[10001]), "account 10001: field 'friends': an account cannot list itself"),
        (_with(friends=[10002, 10002]), "account 10001: field 'friends': a UIN is listed twice"),
        (_with(profile=[1]), "account 10001: field 'profile'"),
        (_with(profile={"NK": "x"}), "account 10001: field 'profile.NK': not a profile key"),
        (_with(profile={"SX": 2}), "account 10001: field 'profile.SX'"),
        (_with(profile={"AG": "old"}), "account 10001: field 'profile.AG'"),
        (_with(profile={"EM": ["a"]}), "account 10001: field 'profile.EM'"),
        (_with(colour="red"), "account 10001: unknown field(s): colour"),
        ({"accounts": [{"uin": 10001, "password": "a", "nick": "A"}] * 2}, "account 10001: field 'uin': given twice"),
        ({"accounts": {}}, "'accounts' must be a list"),
        ({"accounts": [], "extra": 1}, "unknown top-level key"),
        ({"accounts": ["x"]}, "account #1: must be a mapping"),
    ],
)
def test_a_bad_fixture_names_the_account_and_field(data: dict, message: str) -> None:
    with pytest.raises(FixtureError) as caught:
        load_fixture(data)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [("accounts: [", "not valid YAML"), ("- 1\n", "must be a mapping"), ("", "must be a mapping")],
)
def test_a_bad_file_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(FixtureError, match=message):
        load_fixture(path)


def test_a_missing_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FixtureError, match="cannot read"):
        load_fixture(tmp_path / "missing.yaml")
