"""The operator's first hour (issue 12, item 3): the README's steps, tried in order.

`qqbridge doctor` is usable at every stage, from a config just copied from the
example on (missing tokens and a missing registration are findings with their fix, not
a "bad config"), and changes nothing: no database file created, none migrated, no
write. `config.example.yaml` documents every key there is; `--version` and
`generate-registration --help` say what an operator asks first.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shutil
import sqlite3
import tomllib
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from qqbridge.cli import main
from qqbridge.config import Config, load_config
from qqbridge.doctor import check_database
from qqbridge.store import LATEST_VERSION, Store
from qqbridge.store.connect import connect
from qqbridge.store.migrations import MIGRATIONS, upgrade

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config.example.yaml"
NOWHERE = {"QQBRIDGE_HOMESERVER__URL": "http://127.0.0.1:9", "QQBRIDGE_QQ__SERVER_URL": "http://127.0.0.1:9/"}


def snapshot(directory: Path) -> dict[str, tuple[int, str]]:
    """Every file under `directory`: its mode and a hash of its content."""
    return {
        str(path.relative_to(directory)): (path.stat().st_mode, hashlib.sha256(path.read_bytes()).hexdigest())
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An operator's directory with config.yaml copied from the example, as the README
    says, its homeserver and QQ server unreachable; the current directory."""
    shutil.copyfile(EXAMPLE, tmp_path / "config.yaml")
    for name in list(os.environ):
        if name.startswith("QQBRIDGE_"):
            monkeypatch.delenv(name)
    for name, value in NOWHERE.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def doctor(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], str]:
    capsys.readouterr()
    code = main(["doctor", "-c", "config.yaml", *args])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def finding(lines: list[str], check: str) -> str:
    (line,) = [line for line in lines if re.match(rf"[✔✘ℹ] {check}: ", line)]
    return line


def fix_of(lines: list[str], check: str) -> str:
    at = lines.index(finding(lines, check))
    assert lines[at + 1].startswith("    fix: "), lines
    return lines[at + 1].removeprefix("    fix: ")


# ---- doctor at every stage -------------------------------------------------------------


def test_doctor_before_generate_registration_reports_the_missing_tokens_first(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(workdir)
    code, lines, err = doctor(capsys)
    assert code == 1 and "bad config" not in err, err
    assert lines[0].startswith("✘ tokens: appservice.as_token and appservice.hs_token in config.yaml are not set"), lines
    generate = "run `qqbridge generate-registration -c config.yaml -o registration.yaml`"
    assert fix_of(lines, "tokens").startswith(generate)
    assert finding(lines, "registration") == "✘ registration: registration.yaml does not exist"
    assert fix_of(lines, "registration").startswith(generate)
    assert finding(lines, "database") == (
        f"ℹ database: sqlite:///qqbridge.db ({workdir / 'qqbridge.db'}) does not exist yet; `qqbridge run` creates it"
    )
    assert "as_token" not in {line.split(":")[0][2:] for line in lines}, "an empty token needs no homeserver's word"
    assert finding(lines, "permissions").startswith("✔ permissions:")
    assert lines[-1] == "4 problem(s) found."  # tokens, registration, homeserver, QQ server
    assert snapshot(workdir) == before, "doctor changed the operator's files"
    assert not (workdir / "qqbridge.db").exists()


def test_doctor_after_generate_registration(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate-registration", "-c", "config.yaml", "-o", "registration.yaml"]) == 0
    before = snapshot(workdir)
    code, lines, _ = doctor(capsys)
    assert lines[0] == "✔ tokens: the config has its as_token and hs_token"
    assert finding(lines, "registration") == "✔ registration: registration.yaml matches the config"
    assert finding(lines, "database").startswith("ℹ database: sqlite:///qqbridge.db")
    assert code == 1 and lines[-1] == "2 problem(s) found."  # the homeserver and QQ server are not up
    assert snapshot(workdir) == before


def test_a_registration_elsewhere_is_looked_for_where_told(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate-registration", "-c", "config.yaml", "-o", "registration.yaml"]) == 0
    code, lines, _ = doctor(capsys, "-r", "synapse/qqbridge.yaml")
    assert finding(lines, "registration") == "✘ registration: synapse/qqbridge.yaml does not exist"
    assert "-o synapse/qqbridge.yaml`" in fix_of(lines, "registration")


def test_a_config_that_cannot_be_used_is_still_a_bad_config(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "config.yaml").write_text("homeserver: {url: http://x, domain: example.org}\nappservice: {port: 0}\n")
    code, lines, err = doctor(capsys)
    assert code == 2 and err.startswith("qqbridge: bad config: config.yaml: appservice.port") and not lines


# ---- the database: looked at, never created or migrated ----------------------------------


async def make_database(path: Path, version: int) -> None:
    db = await connect(str(path))
    try:
        await upgrade(db, MIGRATIONS[:version])
    finally:
        await db.close()


def schema_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0])
    finally:
        conn.close()


async def test_doctor_says_what_the_bridge_will_migrate_and_migrates_nothing(workdir: Path) -> None:
    assert LATEST_VERSION >= 2, "this test needs an older schema version to leave behind"
    db = workdir / "qqbridge.db"
    await make_database(db, LATEST_VERSION - 1)
    config = load_config(workdir / "config.yaml", require_tokens=False)
    before = snapshot(workdir)
    found = await check_database(config)
    assert found.ok and found.info and found.detail == (
        f"sqlite:///qqbridge.db: schema version {LATEST_VERSION - 1}; `qqbridge run` will migrate it to version "
        f"{LATEST_VERSION}"
    )
    assert found.line().startswith("ℹ database: ")
    assert snapshot(workdir) == before and schema_version(db) == LATEST_VERSION - 1
    assert not Path(f"{db}-wal").exists() and not Path(f"{db}-shm").exists()

    store = await Store.open(str(db))  # the bridge's own start migrates it
    try:
        found = await check_database(config)  # while the bridge has it open, in WAL mode
        assert found.ok and not found.info
        assert found.detail == f"sqlite:///qqbridge.db opens; schema version {LATEST_VERSION} (current)"
        # the running bridge's doctor (the control room's) writes nothing either
        found = await check_database(config, store)
        assert found.ok and found.detail == f"sqlite:///qqbridge.db answers (schema version {LATEST_VERSION})"
        assert await store.state.get("doctor-last-check") is None
    finally:
        await store.close()


async def test_a_database_from_a_newer_bridge_is_a_problem(workdir: Path) -> None:
    db = workdir / "qqbridge.db"
    await make_database(db, LATEST_VERSION)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, 0)", (LATEST_VERSION + 1,))
    conn.close()
    found = await check_database(load_config(workdir / "config.yaml", require_tokens=False))
    assert not found.ok and f"schema version {LATEST_VERSION + 1} is newer than this qqbridge" in found.detail
    assert found.fix == "upgrade qqbridge"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("sqlite:///{tmp}/nowhere/bridge.db", "its directory {tmp}/nowhere does not exist"),
        ("sqlite:///{tmp}/config.yaml/bridge.db", "{tmp}/config.yaml is not a directory"),
        ("sqlite:///{tmp}", "{tmp} is not a file"),
    ],
)
async def test_a_database_the_bridge_could_not_create_is_a_problem(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, url: str, problem: str
) -> None:
    monkeypatch.setenv("QQBRIDGE_DATABASE__URL", url.format(tmp=workdir))
    before = snapshot(workdir)
    found = await check_database(load_config(workdir / "config.yaml", require_tokens=False))
    assert not found.ok and problem.format(tmp=workdir) in found.detail, found
    assert "database.url" in found.fix
    assert snapshot(workdir) == before and not (workdir / "nowhere").exists()


async def test_a_file_that_is_no_database_is_a_problem(workdir: Path) -> None:
    (workdir / "qqbridge.db").write_bytes(b"not a database, but a file someone left here" * 100)
    before = snapshot(workdir)
    found = await check_database(load_config(workdir / "config.yaml", require_tokens=False))
    assert not found.ok and "not a database" in found.detail, found
    assert snapshot(workdir) == before


# ---- what an operator asks first -------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out == f"qqbridge {importlib.metadata.version('qqbridge')}\n"


def test_generate_registration_help_gives_the_output_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["generate-registration", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "(default: registration.yaml" in help_text


def config_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every key of the config, dotted ("qq.time_scale"), sections included."""
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        annotation = field.annotation
        for candidate in (annotation, *typing.get_args(annotation)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                keys += config_keys(candidate, f"{prefix}{name}.")
    return keys


def is_yaml_key(line: str) -> bool:
    """`  key: value` that is YAML (a commented-out key), not a comment in words."""
    try:
        return isinstance(yaml.safe_load(line.strip()), dict)
    except yaml.YAMLError:
        return False


def example_keys() -> set[str]:
    """The dotted keys config.example.yaml shows, set or commented out (`# key: value`)."""
    keys, section = set(), ""
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        top = re.fullmatch(r"#?\s?([a-z_]+):.*", line)
        if top:
            section = top[1]
            keys.add(section)
            continue
        nested = re.fullmatch(r"  (# )?([a-z_]+):(?: .*)?", line)
        if nested and section and (not nested[1] or is_yaml_key(line.replace("# ", "", 1))):
            keys.add(f"{section}.{nested[2]}")
    return keys


def test_the_example_config_documents_every_key() -> None:
    keys = config_keys(Config)
    assert "qq.time_scale" in keys and "appservice.as_token" in keys  # the walk reaches the sections
    missing = [key for key in keys if key not in example_keys()]
    assert not missing, f"config.example.yaml lacks {missing}"
    unknown = sorted(key for key in example_keys() if key not in keys and not key.startswith("permissions."))
    assert not unknown, f"config.example.yaml shows keys the config does not have: {unknown}"


def test_the_example_config_is_valid_and_its_defaults_are_the_codes() -> None:
    """What the example sets is what the code defaults to, so that copying it changes
    nothing an operator did not choose (the homeserver and permissions excepted)."""
    example = load_config(EXAMPLE, require_tokens=False)
    defaults = Config(homeserver=example.homeserver.model_dump())
    for section in ("appservice", "qq", "database", "logging"):
        assert getattr(example, section) == getattr(defaults, section), section


def test_the_license_is_an_spdx_expression_the_build_backend_knows() -> None:
    """A `license = { text = ... }` table makes setuptools print a deprecation banner on
    every install; an SPDX string needs setuptools 77 or newer."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["license"] == "Apache-2.0"
    (setuptools,) = [r for r in pyproject["build-system"]["requires"] if re.match(r"setuptools\b", r)]
    floor = re.fullmatch(r"setuptools\s*>=\s*(\d+)(?:\.\d+)*", setuptools)
    assert floor and int(floor[1]) >= 77, setuptools
