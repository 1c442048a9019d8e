"""Config and registration: the file, the environment over it, one clear error naming
the key, and generate-registration writing the same fresh tokens to both files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qqbridge.bridge.control_room.commands import CommandError, CommandTable, qq_number
from qqbridge.bridge.control_room.permissions import Permissions
from qqbridge.config import Config, ConfigError, load_config

EXAMPLE = Path(__file__).parent.parent.parent / "config.example.yaml"


def test_generate_registration_fills_both_files_and_keeps_comments(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    shutil.copy(EXAMPLE, config)
    with pytest.raises(ConfigError, match="appservice.as_token"):
        load_config(config)  # no tokens yet: `run` refuses, and says what to do
    done = subprocess.run(
        [sys.executable, "-m", "qqbridge", "generate-registration", "-c", str(config), "-o", str(tmp_path / "reg.yaml")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    registration = yaml.safe_load((tmp_path / "reg.yaml").read_text())
    loaded = load_config(config)
    assert registration["as_token"] == loaded.appservice.as_token and len(registration["as_token"]) >= 32
    assert registration["hs_token"] == loaded.appservice.hs_token != registration["as_token"]
    assert registration["rate_limited"] is False and registration["sender_localpart"] == "qqbridge"
    assert all(ns["exclusive"] for ns in registration["namespaces"]["users"])
    assert "# Written by `qqbridge generate-registration`" in config.read_text()
    regexes = [ns["regex"] for ns in registration["namespaces"]["users"]]
    import re

    assert any(re.fullmatch(r, "@_qq_10001:example.org") for r in regexes)
    assert not any(re.fullmatch(r, "@alice:example.org") for r in regexes)


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("homeserver: {url: 'http://hs', domain: example.org}\nappservice: {port: 1000}\n")
    monkeypatch.setenv("QQBRIDGE_APPSERVICE__PORT", "2000")
    monkeypatch.setenv("QQBRIDGE_APPSERVICE__AS_TOKEN", "a" * 32)
    monkeypatch.setenv("QQBRIDGE_APPSERVICE__HS_TOKEN", "b" * 32)
    loaded = load_config(config)
    assert loaded.appservice.port == 2000 and loaded.homeserver.url == "http://hs"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("homeserver: {url: 'ftp://x', domain: d}", "homeserver.url"),
        ("homeserver: {domain: d}", "homeserver.url"),
        ("homeserver: {url: 'http://x', domain: d}\nappservice: {port: 70000}", "appservice.port"),
        ("homeserver: {url: 'http://x', domain: d}\npermissions: {'@bob': root}", "permissions.@bob"),
        ("homeserver: {url: 'http://x', domain: d}\nqq: {poll_fast: -1}", "qq.poll_fast"),
        ("homeserver: {url: 'http://x', domain: d}\nsurprise: 1", "surprise"),
        ("homeserver: [unclosed", "not valid YAML"),
    ],
)
def test_a_bad_config_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(config, require_tokens=False)


def test_run_with_a_bad_config_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("homeserver: {url: 'http://x', domain: d}\nappservice: {port: nope}\n")
    done = subprocess.run([sys.executable, "-m", "qqbridge", "run", "-c", str(config)], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.startswith("qqbridge: bad config:") and "appservice.port" in done.stderr
    assert "Traceback" not in done.stderr


def test_permissions_most_specific_entry_wins() -> None:
    rules = Permissions({"*": "user", "example.org": "admin", "@eve:example.org": "user"})
    assert rules.level("@bob:example.org") == "admin"
    assert rules.level("@eve:example.org") == "user"
    assert rules.level("@x:elsewhere.net") == "user"
    assert Permissions({"example.org": "user"}).level("@x:elsewhere.net") is None


def test_commands_parse_strictly() -> None:
    table = CommandTable()

    async def handler(*args: object) -> None: ...

    table.add("login", "log in", handler, arguments=lambda p: p.add_argument("uin", type=qq_number))
    command, args = table.parse("LOGIN 10001")
    assert command.name == "login" and args.uin == 10001
    for bad in ("login", "login 9999", "login 4294967296", "login 10001 extra", "logn 10001", ""):
        with pytest.raises(CommandError):
            table.parse(bad)


@pytest.mark.parametrize(
    ("qq", "fast", "idle"),
    [
        ({}, 1.0, 30.0),  # protocol seconds at time scale 1
        ({"time_scale": 0.1}, 0.1, 3.0),  # unset: they follow the simulator's clock
        ({"time_scale": 0.01}, 0.1, 0.5),  # but never so fast that QQ is flooded
        ({"time_scale": 0.1, "poll_fast": 2.0, "poll_idle": 20.0}, 2.0, 20.0),  # set: real seconds as written
    ],
)
def test_poll_intervals_follow_the_time_scale_unless_set(qq: dict, fast: float, idle: float) -> None:
    config = Config(homeserver={"url": "http://hs", "domain": "x"}, qq=qq)
    assert (config.qq.poll_fast_seconds, config.qq.poll_idle_seconds) == pytest.approx((fast, idle))
