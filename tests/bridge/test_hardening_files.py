"""Issue 8, item 7 (hardening), the file side: what holds a secret is private whatever
the umask, a YAML error never echoes the config's text, and generate-registration
edits any valid config correctly or refuses it and changes nothing."""

from __future__ import annotations

import difflib
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
import yaml

from qqbridge.config import load_config
from qqbridge.registration import generate
from qqbridge.store.connect import connect

EXAMPLE = Path(__file__).parent.parent.parent / "config.example.yaml"
TOKEN = "hsTOKENabcdefghijklmnopqrstuvwxyz0123456789"


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def qqbridge(*args: str, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qqbridge", *args], capture_output=True, text=True, timeout=60,
        preexec_fn=lambda: os.umask(umask),
    )  # fmt: skip


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


# ---- 1. private files ------------------------------------------------------------------


def test_generate_registration_writes_both_files_0600_under_umask_022(tmp_path: Path) -> None:
    config, registration = tmp_path / "config.yaml", tmp_path / "registration.yaml"
    shutil.copy(EXAMPLE, config)
    config.chmod(0o644)  # as `cp` leaves it under umask 022
    done = qqbridge("generate-registration", "-c", str(config), "-o", str(registration))
    assert done.returncode == 0, done.stderr
    assert mode_of(config) == 0o600 and mode_of(registration) == 0o600
    assert "0644 -> 0600" in done.stderr  # the user is told the config was tightened
    assert yaml.safe_load(registration.read_text())["hs_token"] == load_config(config).appservice.hs_token
    # Again, over the existing registration: still 0600, and nothing more to say about modes.
    done = qqbridge("generate-registration", "-c", str(config), "-o", str(registration))
    assert done.returncode == 0 and mode_of(registration) == 0o600 and "->" not in done.stderr


def test_a_config_shared_with_a_group_keeps_its_mode(tmp_path: Path) -> None:
    """The systemd deploy keeps the config `root:qqbridge 0640`: the service must still read it."""
    config = tmp_path / "config.yaml"
    shutil.copy(EXAMPLE, config)
    config.chmod(0o640)
    assert qqbridge("generate-registration", "-c", str(config), "-o", str(tmp_path / "r.yaml")).returncode == 0
    assert mode_of(config) == 0o640 and mode_of(tmp_path / "r.yaml") == 0o600


def test_mode_option_for_a_homeserver_that_runs_as_another_user(tmp_path: Path) -> None:
    config, registration = tmp_path / "config.yaml", tmp_path / "registration.yaml"
    shutil.copy(EXAMPLE, config)
    assert qqbridge("generate-registration", "-c", str(config), "-o", str(registration), "--mode", "0644",
                    umask=0o077).returncode == 0  # fmt: skip
    assert mode_of(registration) == 0o644 and mode_of(config) == 0o600
    for bad in ("0755", "0666", "0400", "rw", "0o1644"):
        done = qqbridge("generate-registration", "-c", str(config), "-o", str(registration), "--mode", bad)
        assert done.returncode == 2 and "--mode" in done.stderr
    assert mode_of(registration) == 0o644


async def test_sqlite_files_are_created_0600_under_umask_022(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "bridge.db"
    db = await connect(f"sqlite:///{path}")
    try:
        await db.execute("CREATE TABLE secret (password_md5 TEXT)")
        await db.execute("INSERT INTO secret VALUES ($1)", "e10adc3949ba59abbe56e057f20f883e")
        files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
        assert all(f.exists() for f in files)
        assert {f.name: oct(mode_of(f)) for f in files} == {f.name: oct(0o600) for f in files}
    finally:
        await db.close()


async def test_an_existing_sqlite_database_readable_by_others_is_tightened(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "bridge.db"
    db = await connect(str(path))
    await db.execute("CREATE TABLE t (x TEXT)")
    await db.close()
    wal = Path(f"{path}-wal")
    wal.write_bytes(b"")  # as left beside it by an older qqbridge
    for f in (path, wal):
        f.chmod(0o644)
    with structlog.testing.capture_logs() as logs:
        db = await connect(str(path))
    try:
        assert mode_of(path) == 0o600 and mode_of(wal) == 0o600
        assert await db.fetch("SELECT * FROM t") == []
    finally:
        await db.close()
    told = [entry for entry in logs if entry.get("file") in (str(path), str(wal))]
    assert {entry["file"] for entry in told} == {str(path), str(wal)}
    assert all(entry["log_level"] == "warning" and entry["old_mode"] == "0644" for entry in told)


async def test_a_missing_sqlite_directory_is_one_clear_error(tmp_path: Path) -> None:
    from qqbridge.store.errors import StoreConnectionError

    with pytest.raises(StoreConnectionError, match="cannot open SQLite database .*nowhere"):
        await connect(str(tmp_path / "nowhere" / "bridge.db"))
    assert not (tmp_path / "nowhere").exists()


# ---- 2. a YAML error never echoes the config's text -----------------------------------


def _substrings(secret: str, size: int = 8) -> list[str]:
    return [secret[i : i + size] for i in range(len(secret) - size + 1)]


BROKEN_TOKEN_LINES = {
    "unclosed quote": f'  hs_token: "{TOKEN}\n  bot_localpart: qqbridge\n',
    "colon in the value": f"  hs_token: {TOKEN[:20]}: {TOKEN[20:]}\n",
    "tab in the value": f"  hs_token: {TOKEN[:20]}\t{TOKEN[20:]}\n   oops: [\n",
    "unknown tag": f"  hs_token: !{TOKEN} x\n",
    "bad indentation": f"  as_token: x\n hs_token: {TOKEN}\n",
    "undefined alias": f"  hs_token: *{TOKEN}\n",
    "bad escape": f'  hs_token: "\\q{TOKEN}"\n',
}


@pytest.mark.parametrize("command", ["run", "doctor"])
@pytest.mark.parametrize("broken", list(BROKEN_TOKEN_LINES), ids=list(BROKEN_TOKEN_LINES))
def test_a_yaml_error_on_the_token_line_never_prints_the_token(tmp_path: Path, command: str, broken: str) -> None:
    config = tmp_path / "secret.yaml"
    config.write_text("homeserver:\n  url: http://127.0.0.1:8008\n  domain: example.org\nappservice:\n"
                      + BROKEN_TOKEN_LINES[broken])  # fmt: skip
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load(config.read_text())  # really broken
    done = qqbridge(command, "-c", str(config))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"qqbridge: bad config: {config}: not valid YAML: line ")
    assert ", column " in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1
    leaked = [part for part in _substrings(TOKEN) if part in done.stderr + done.stdout]
    assert not leaked, done.stderr


def test_a_yaml_error_names_line_column_and_problem(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text('homeserver:\n  url: http://x\n  domain: "example.org\n')
    done = qqbridge("run", "-c", str(config))
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"qqbridge: bad config: {config}: not valid YAML: line 4, column 1: found unexpected end of stream "
        "(while scanning a quoted scalar at line 3, column 11)"
    )


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"homeserver: {url: http://x, domain: d}\nappservice: {hs_token: \x00abcdefghijklmno}\n",
         "line 2, column 24: #x0000 is not allowed in YAML"),
        (b"appservice:\n  hs_token: \xffabcdefghijklmnop\n", "not UTF-8 text (byte 24 is not valid UTF-8)"),
        (b"[" * 5000, "nested too deeply"),
    ],
)  # fmt: skip
def test_unreadable_configs_are_one_clear_line(tmp_path: Path, content: bytes, expected: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_bytes(content)
    done = qqbridge("run", "-c", str(config))
    assert done.returncode == 2 and expected in done.stderr and "Traceback" not in done.stderr
    assert "abcdefgh" not in done.stderr


# ---- 3. generate-registration edits any valid config, or refuses and changes nothing ---


FLOW = '{appservice: {host: 0.0.0.0, port: 29999, url: "http://x:29999"}, homeserver: {url: "http://h", domain: d}}\n'


def test_generate_registration_edits_a_one_line_config(tmp_path: Path) -> None:
    config, registration = tmp_path / "config.yaml", tmp_path / "registration.yaml"
    config.write_text(FLOW)
    done = qqbridge("generate-registration", "-c", str(config), "-o", str(registration))
    assert done.returncode == 0, done.stderr
    loaded = load_config(config)
    service = loaded.appservice
    assert (service.host, service.port, service.url) == ("0.0.0.0", 29999, "http://x:29999")
    written = yaml.safe_load(registration.read_text())
    assert written["url"] == "http://x:29999" and written["hs_token"] == loaded.appservice.hs_token
    assert config.read_text().count("appservice") == 1 and len(config.read_text().splitlines()) == 1
    # and again: the tokens are replaced, not added twice
    assert qqbridge("generate-registration", "-c", str(config), "-o", str(registration)).returncode == 0
    assert load_config(config).appservice.hs_token != loaded.appservice.hs_token
    assert config.read_text().count("hs_token") == 1


def test_a_flow_section_in_a_commented_block_config(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("# my bridge\nhomeserver:\n  url: http://h:8008  # the homeserver\n  domain: d\n"
                      "appservice: {host: 0.0.0.0, port: 29999}  # listen everywhere\n")  # fmt: skip
    generate(config, tmp_path / "r.yaml")
    text = config.read_text()
    assert "# my bridge" in text and "# the homeserver" in text and "# listen everywhere" in text
    loaded = load_config(config)
    assert (loaded.appservice.host, loaded.appservice.port) == ("0.0.0.0", 29999)


def test_a_block_config_changes_only_on_the_token_lines(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    before = ("---\nhomeserver:\n    url: http://h   # four spaces\n    domain: d\nappservice:\n"
              "    as_token: ''   # old\n    port: 1\n")  # fmt: skip
    config.write_text(before)
    generate(config, tmp_path / "r.yaml")
    after = config.read_text().splitlines()
    diff = [line for line in difflib.ndiff(before.splitlines(), after) if line[:1] in "+-"]
    assert [line for line in diff if line[0] == "-"] == ["-     as_token: ''   # old"]
    assert sorted(line[:17] for line in diff if line[0] == "+") == ['+     as_token: "', '+     hs_token: "']


def test_a_config_that_cannot_be_edited_safely_is_refused_and_left_alone(tmp_path: Path) -> None:
    config, registration = tmp_path / "config.yaml", tmp_path / "registration.yaml"
    # PyYAML takes the last of two `appservice` keys; editing that cannot be done by
    # lines (flow style), nor round-trip (duplicate keys): refused.
    before = '{homeserver: {url: "http://h", domain: d}, appservice: {port: 1}, appservice: {port: 2}}\n'
    config.write_text(before)
    config.chmod(0o600)
    done = qqbridge("generate-registration", "-c", str(config), "-o", str(registration))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "cannot write the new tokens" in done.stderr and "Nothing was changed" in done.stderr
    assert config.read_text() == before and not registration.exists()


def test_an_unwritable_registration_changes_nothing(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    shutil.copy(EXAMPLE, config)
    before = config.read_text()
    done = qqbridge("generate-registration", "-c", str(config), "-o", str(tmp_path / "missing" / "r.yaml"))
    assert done.returncode == 2 and "cannot write it" in done.stderr and "Traceback" not in done.stderr
    assert config.read_text() == before
    done = qqbridge("generate-registration", "-c", str(config), "-o", str(config))
    assert done.returncode == 2 and config.read_text() == before
