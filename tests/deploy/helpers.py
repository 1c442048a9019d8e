"""Shared helpers of the deploy/ tests: paths, the CLI and config, the Dockerfile parser."""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import shlex
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from qqbridge.cli import build_parser
from qqbridge.config import Config

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "systemd" / "qqbridge.service"
DOCKER = DEPLOY / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
DOCKERIGNORE = DOCKER / "Dockerfile.dockerignore"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
CONFIG_EXAMPLE = REPO / "config.example.yaml"

SUBCOMMANDS = tuple(next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices)
YES = {"yes", "true", "on", "1"}


# ---- shared helpers --------------------------------------------------------------------


def parse_cli(argv: list[str], where: str) -> Any:
    """What `qqbridge ARGV` would run; fails the test naming `where` if argparse refuses."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `qqbridge {shlex.join(argv)}` is not a command qqbridge accepts")


def config_key(env_name: str) -> tuple[str, str] | None:
    """("database", "url") for QQBRIDGE_DATABASE__URL, or None if no such config key."""
    match = re.fullmatch(r"QQBRIDGE_([A-Z0-9_]+?)__([A-Z0-9_]+)", env_name)
    if not match:
        return None
    section, key = match[1].lower(), match[2].lower()
    if section not in Config.model_fields:
        return None
    model = Config.model_fields[section].annotation
    if not (isinstance(model, type) and hasattr(model, "model_fields")) or key not in model.model_fields:
        return None
    return section, key


def bridge_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """Make `env` the only QQBRIDGE_ variables that the config sees."""
    for name in list(os.environ):
        if name.startswith("QQBRIDGE_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def example_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    shutil.copyfile(CONFIG_EXAMPLE, path)
    return path


def fenced_shell_lines(markdown: Path) -> Iterator[str]:
    """The lines of a Markdown file's ``` blocks, with backslash continuations joined."""
    inside, pending = False, ""
    for line in markdown.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            inside, pending = not inside, ""
            continue
        if not inside:
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield pending + line
        pending = ""


def qqbridge_invocations(line: str) -> Iterator[list[str]]:
    """`qqbridge SUBCOMMAND ...` argument lists in a shell line (a near-miss of a
    subcommand counts too, so that a typo fails instead of going unseen)."""
    for match in re.finditer(r"(?:^|[\s/'\"(])qqbridge\s+([a-z][a-z-]*)([^'\")|;&<>#]*)", line):
        word = match[1]
        if word in SUBCOMMANDS or difflib.get_close_matches(word, SUBCOMMANDS, n=1, cutoff=0.75):
            yield [word, *shlex.split(match[2])]


# ---- the Dockerfile --------------------------------------------------------------------


@dataclass
class Instruction:
    name: str  # upper case
    args: str
    stage: int
    line: int


@dataclass
class Dockerfile:
    instructions: list[Instruction]
    stages: list[tuple[str, str | None]] = field(default_factory=list)  # (base image, alias)

    def final(self, name: str) -> list[Instruction]:
        last = len(self.stages) - 1
        return [i for i in self.instructions if i.stage == last and i.name == name]

    def all(self, name: str) -> list[Instruction]:
        return [i for i in self.instructions if i.name == name]


def parse_dockerfile(path: Path) -> Dockerfile:
    lines = path.read_text(encoding="utf-8").splitlines()
    result = Dockerfile([])
    logical, start = "", 0
    for number, raw in enumerate(lines, 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not logical):
            continue  # comments (parser directives included), also inside continuations
        if not logical:
            start = number
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        name, _, args = logical.partition(" ")
        name, args, logical = name.upper(), args.strip(), ""
        if name == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            alias = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            result.stages.append((words[0], alias))
        result.instructions.append(Instruction(name, args, len(result.stages) - 1, start))
    return result


def exec_form(args: str) -> list[str]:
    """The argument list of an exec-form (JSON) or shell-form instruction."""
    return json.loads(args) if args.startswith("[") else ["/bin/sh", "-c", args]


def split_flags(args: str) -> tuple[dict[str, str], str]:
    flags: dict[str, str] = {}
    while match := re.match(r"--([a-z-]+)(?:=(\S+))?\s+", args):
        flags[match[1]] = match[2] or ""
        args = args[match.end() :]
    return flags, args


def image_tag(image: str) -> str | None:
    name = image.split("@")[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def dockerfile_env(dockerfile: Dockerfile) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in dockerfile.final("ENV"):
        for assignment in shlex.split(instruction.args):
            name, sep, value = assignment.partition("=")
            assert sep, f"Dockerfile line {instruction.line}: use ENV KEY=value"
            env[name] = value
    return env
