"""`qqbridge run` against the real Synapse of the e2e stack: a taken port, an as_token
the homeserver does not know and a registration whose hs_token is not the config's
each end the run within seconds with one line naming the problem; a healthy start
checks both directions (whoami, then the homeserver's appservice ping)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from qqbridge.local.child import free_port

FAST = 5.0


def run(stack, tmp_path: Path, **env: str) -> tuple[int, float, str]:
    """The stack's config with a database of its own (the running bridge's is left alone)."""
    env = {**os.environ, "QQBRIDGE_DATABASE__URL": f"sqlite:///{tmp_path / 'other.db'}", **env}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "qqbridge", "run", "-c", str(stack.config_path)],
                          capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    return done.returncode, time.monotonic() - start, done.stderr


def the_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if "cannot start:" in line]
    assert len(lines) == 1, stderr
    return lines[0]


def test_a_healthy_start_was_pinged_by_the_homeserver(stack) -> None:
    log = stack.bridge.log()
    assert "the homeserver reaches the bridge" in log and "pinged by the homeserver" in log
    assert "cannot start" not in log


def test_a_second_bridge_on_the_same_port(stack, tmp_path: Path) -> None:
    port = yaml.safe_load(stack.config_path.read_text())["appservice"]["port"]
    code, seconds, stderr = run(stack, tmp_path)
    assert code == 1 and seconds < FAST, (code, seconds, stderr)
    assert f"port 127.0.0.1:{port} is already in use" in the_line(stderr)


def test_an_as_token_synapse_does_not_know(stack, tmp_path: Path) -> None:
    wrong = "x" * 40
    code, seconds, stderr = run(stack, tmp_path, QQBRIDGE_APPSERVICE__AS_TOKEN=wrong,
                                QQBRIDGE_APPSERVICE__PORT=str(free_port("127.0.0.1")))  # fmt: skip
    assert code == 1 and seconds < FAST, (code, seconds, stderr)
    line = the_line(stderr)
    assert "does not know the bridge's as_token" in line and "M_UNKNOWN_TOKEN" in line and wrong not in stderr


def test_an_hs_token_that_is_not_the_registrations(stack, tmp_path: Path) -> None:
    """The homeserver's ping reaches this bridge (on the registration's url), which
    refuses its hs_token: Synapse says M_BAD_STATUS."""
    assert stack.bridge.stop() == 0
    try:
        code, seconds, stderr = run(stack, tmp_path, QQBRIDGE_APPSERVICE__HS_TOKEN="not-the-registrations-" * 2)
    finally:
        stack.bridge.start()
        stack.bridge.wait_for_log("qqbridge ready")
    assert code == 1 and seconds < FAST, (code, seconds, stderr)
    assert "hs_token differs" in the_line(stderr)
