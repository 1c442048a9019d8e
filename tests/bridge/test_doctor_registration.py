"""`qqbridge doctor` on a registration.yaml that is not valid YAML: the finding says
where and what is wrong (line, column, problem) and never quotes the file, whose broken
line may hold a token. The same broken token lines as for the config
(tests/bridge/test_hardening_files.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qqbridge.config import load_config
from qqbridge.doctor import check_registration
from tests.bridge.test_hardening_files import BROKEN_TOKEN_LINES, TOKEN, _substrings
from tests.e2e.harness import write_config

HEAD = "id: qqbridge\nurl: http://127.0.0.1:29340\nas_token: asTOKENabcdefghijklmnopqrstuvwxyz\n"


def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    write_config(
        path,
        homeserver={"url": "http://127.0.0.1:9", "domain": "localhost"},
        appservice={"as_token": "a" * 32, "hs_token": "h" * 32},
        qq={"server_url": "http://127.0.0.1:9/", "timeout": 2},
        database={"url": f"sqlite:///{tmp_path / 'bridge.db'}"},
        permissions={"@alice:localhost": "admin"},
    )
    return path


def broken_registration(tmp_path: Path, broken: str) -> Path:
    path = tmp_path / "registration.yaml"
    # the token lines are written for a section; at the top level, without their indent
    lines = "".join(line[2:] if line.startswith("  ") else line for line in BROKEN_TOKEN_LINES[broken].splitlines(True))
    path.write_text(HEAD + lines)
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load(path.read_text())  # really broken
    return path


@pytest.mark.parametrize("broken", list(BROKEN_TOKEN_LINES), ids=list(BROKEN_TOKEN_LINES))
def test_the_finding_names_the_place_not_the_token(tmp_path: Path, broken: str) -> None:
    registration = broken_registration(tmp_path, broken)
    (finding,) = check_registration(load_config(config(tmp_path)), registration)
    assert not finding.ok and f"{registration} is not valid YAML: line " in finding.detail, finding
    assert ", column " in finding.detail and "generate-registration" in finding.fix
    leaked = [part for part in _substrings(TOKEN) if part in finding.line()]
    assert not leaked, finding.line()


def test_the_doctor_command_prints_no_piece_of_the_token(tmp_path: Path) -> None:
    path = config(tmp_path)
    registration = broken_registration(tmp_path, "unclosed quote")
    done = subprocess.run([sys.executable, "-m", "qqbridge", "doctor", "-c", str(path), "-r", str(registration)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"✘ registration: {registration} is not valid YAML: line " in done.stdout
    leaked = [part for part in _substrings(TOKEN) if part in done.stdout + done.stderr]
    assert not leaked, done.stdout


def test_an_unreadable_registration_says_why_briefly(tmp_path: Path) -> None:
    (finding,) = check_registration(load_config(config(tmp_path)), tmp_path / "missing.yaml")
    assert not finding.ok and finding.detail == f"cannot read {tmp_path / 'missing.yaml'}: No such file or directory"
