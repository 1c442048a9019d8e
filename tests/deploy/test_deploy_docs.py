"""The deploy documents name only real config keys and real commands."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.deploy.helpers import DEPLOY, REPO, config_key, fenced_shell_lines, parse_cli, qqbridge_invocations

# ---- the documents ----------------------------------------------------------------------


def deploy_texts() -> Iterator[Path]:
    return (p for p in sorted(DEPLOY.rglob("*")) if p.is_file())


def test_every_qqbridge_variable_in_deploy_is_a_config_key() -> None:
    for path in deploy_texts():
        for name in set(re.findall(r"QQBRIDGE_[A-Z0-9]+__[A-Z0-9_]+", path.read_text(encoding="utf-8"))):
            assert config_key(name), f"{path.relative_to(REPO)}: {name} is no config key"


def test_every_qqbridge_command_in_the_docs_is_accepted() -> None:
    seen = 0
    for path in deploy_texts():
        if path.suffix != ".md":
            continue
        for line in fenced_shell_lines(path):
            for argv in qqbridge_invocations(line):
                parse_cli(argv, str(path.relative_to(REPO)))
                seen += 1
    assert seen >= 3


def test_the_protocol_reference_cited_is_the_one_in_the_repository() -> None:
    # The code, tests, benchmarks and docs cite docs/protocol.md; PROTOCOL.md lived
    # outside the repository, where a reader of a clone cannot follow the citation.
    assert (REPO / "docs" / "protocol.md").is_file()
    citing = [path.relative_to(REPO) for folder in ("qqbridge", "tests", "bench", "docs", "deploy")
              for path in (REPO / folder).rglob("*") if path.suffix in (".py", ".md", ".yaml", ".txt")
              and "PROTOCOL.md" in path.read_text(encoding="utf-8") and path.name != "test_deploy_docs.py"]  # fmt: skip
    citing += [Path(name) for name in ("README.md", "config.example.yaml") if "PROTOCOL.md" in (REPO / name).read_text()]
    assert citing == []


def test_the_files_that_hold_tokens_are_ignored_by_git() -> None:
    # The README's steps write config.yaml and registration.yaml (and the SQLite
    # database) in the repository root: one `git add .` away from a commit.
    secrets = ["config.yaml", "registration.yaml", "qqbridge.db", "qqbridge.db-wal", "data/config.yaml"]
    ignored = subprocess.run(["git", "check-ignore", *secrets], cwd=REPO, capture_output=True, text=True, check=False)
    assert sorted(ignored.stdout.split()) == sorted(secrets)
    examples = ["config.example.yaml", "registration.example.yaml"]
    kept = subprocess.run(["git", "check-ignore", *examples], cwd=REPO, capture_output=True, text=True, check=False)
    assert kept.stdout.split() == []
