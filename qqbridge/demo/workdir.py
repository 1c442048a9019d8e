"""The demo's working directory: what `qqbridge demo` writes there, and what it keeps
from one run to the next so that a second run finds the same bridge, rooms and user.

    DIR/
      config.yaml          the bridge's config, rewritten at every start from the command
                           line (ports, time scale); its as_token and hs_token are kept
      registration.yaml    written by `qqbridge generate-registration` when missing or
                           no longer matching the config (then both get new tokens)
      matrix-user.yaml     the demo Matrix user's name and password (mode 0600)
      bridge.db            the bridge's SQLite store
      bridge.log, qq-sim.log   the output of those two processes
      synapse/             the local Synapse's own directory (`qqbridge.local`)

No processes are started here but the short `generate-registration`.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import yaml

from qqbridge.config import ConfigError, load_config
from qqbridge.local.synapse_config import base_url
from qqbridge.registration import registration_for

SERVER_NAME = "localhost"
MATRIX_USER = "demo"
_HEADER = (
    "# Written by `qqbridge demo` at every start (edits are overwritten; the tokens are kept).\n"
    "# For a bridge of your own, start from config.example.yaml instead.\n"
)


class DemoError(RuntimeError):
    """The demo cannot go on; the message says why in one or a few lines."""


def bridge_config(
    workdir: Path, *, host: str, hs_port: int, bridge_port: int, qq_port: int, time_scale: float,
    tokens: dict[str, str],
) -> dict[str, Any]:  # fmt: skip
    poll_fast = max(0.2, min(0.5, 5 * time_scale))
    return {
        "homeserver": {"url": base_url(host, hs_port), "domain": SERVER_NAME},
        "appservice": {
            "host": host,
            "port": bridge_port,
            "url": base_url(host, bridge_port),
            "as_token": tokens.get("as_token", ""),
            "hs_token": tokens.get("hs_token", ""),
        },
        "qq": {
            "server_url": base_url(host, qq_port) + "/",
            # Longer than the slowest (scaled) RES=3 reply, 30 s.
            "timeout": max(5.0, 45 * time_scale),
            # Quick enough that a friend request shows within seconds, well inside the
            # (scaled) 300 s session.
            "poll_fast": poll_fast,
            "poll_idle": max(poll_fast, min(5.0, 15 * time_scale)),
            "time_scale": time_scale,
        },
        "database": {"url": f"sqlite:///{workdir / 'bridge.db'}"},
        # Encrypted rooms work (docs/encryption.md): a portal is encrypted when the
        # control room it was opened from is, as Element's direct chats are by default.
        "encryption": {"allow": True},
        "logging": {"format": "console", "level": "INFO"},
        # Only this homeserver's users exist (no federation, no open registration).
        "permissions": {SERVER_NAME: "user", f"@{MATRIX_USER}:{SERVER_NAME}": "admin"},
    }


def write_config(workdir: Path, **settings: Any) -> Path:
    """Write config.yaml for this run, keeping the tokens of the last one."""
    path = workdir / "config.yaml"
    tokens: dict[str, str] = {}
    if path.exists():
        try:
            old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            tokens = {k: str(v) for k, v in (old.get("appservice") or {}).items() if k in ("as_token", "hs_token")}
        except (yaml.YAMLError, AttributeError):
            tokens = {}  # unreadable: new tokens, and a new registration, will follow
    config = bridge_config(workdir, tokens=tokens, **settings)
    # It holds the tokens: created 0600 (whatever the umask), and an older file made
    # 0600 before the tokens go in, so that others can never read them, not for a moment.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(_HEADER + yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return path


def registration_is_current(config_path: Path, registration_path: Path) -> bool:
    try:
        config = load_config(config_path, require_tokens=True)
        current = yaml.safe_load(registration_path.read_text(encoding="utf-8"))
    except (ConfigError, OSError, yaml.YAMLError):
        return False
    return bool(current == registration_for(config))


async def ensure_registration(config_path: Path, registration_path: Path) -> bool:
    """Run `qqbridge generate-registration` unless the registration already matches the
    config. True when it ran (then Synapse must load the new one: start it after this)."""
    if registration_is_current(config_path, registration_path):
        return False
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "qqbridge", "generate-registration", "-c", str(config_path), "-o", str(registration_path),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await proc.communicate()
    if proc.returncode != 0:
        raise DemoError(f"qqbridge generate-registration failed:\n{output.decode(errors='replace').strip()}")
    return True


def matrix_credentials(workdir: Path) -> tuple[str, str]:
    """The demo Matrix user's (localpart, password): made up once, then read back."""
    path = workdir / "matrix-user.yaml"
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(saved, dict) and saved.get("user") and saved.get("password"):
            return str(saved["user"]), str(saved["password"])
    except (OSError, yaml.YAMLError):
        pass
    password = secrets.token_urlsafe(9)  # 12 characters, easy to copy
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("# The demo's Matrix user, made up by the first `qqbridge demo` in this directory.\n")
        yaml.safe_dump({"user": MATRIX_USER, "password": password}, f, sort_keys=False)
    return MATRIX_USER, password
