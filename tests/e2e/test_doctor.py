"""`qqbridge doctor` finds each planted mistake, and says how to fix it; an admin can
run it from the control room too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.e2e.test_control_room import command, control_room


def doctor(stack, *args: str, config: Path | None = None, **env: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "qqbridge", "doctor", "-c", str(config or stack.config_path), *args],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=60,
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr


def test_a_healthy_setup_has_no_problems(stack) -> None:
    code, out = doctor(stack)
    assert code == 0, out
    for check in ("registration", "homeserver", "as_token", "appservice", "qq server", "database", "permissions"):
        assert f"✔ {check}:" in out
    assert "No problems found." in out


def test_planted_mistakes_are_each_found_with_a_fix(stack, tmp_path: Path) -> None:
    registration = yaml.safe_load(stack.registration_path.read_text())
    registration["hs_token"] = "not-what-the-config-says"
    wrong_registration = tmp_path / "registration.yaml"
    wrong_registration.write_text(yaml.safe_dump(registration))
    config = yaml.safe_load(stack.config_path.read_text())
    config["permissions"] = {}
    nobody_allowed = tmp_path / "config.yaml"
    nobody_allowed.write_text(yaml.safe_dump(config))
    code, out = doctor(
        stack, "-r", str(wrong_registration), config=nobody_allowed,
        QQBRIDGE_QQ__SERVER_URL="http://127.0.0.1:9/",
        QQBRIDGE_DATABASE__URL="sqlite:////proc/qqbridge-cannot-be-here/bridge.db",
    )  # fmt: skip
    assert code == 1
    assert "✘ registration: hs_token in" in out and "differs from the config's" in out
    assert "✘ qq server:" in out and "127.0.0.1:9" in out
    assert "✘ database:" in out
    assert "✘ permissions: nobody may use the bridge" in out
    assert out.count("fix:") == 4 and "4 problem(s) found." in out


def test_a_token_the_homeserver_does_not_know(stack) -> None:
    code, out = doctor(stack, QQBRIDGE_APPSERVICE__AS_TOKEN="x" * 40)
    assert code == 1 and "✘ as_token: the homeserver refuses the bridge's as_token" in out
    assert "✘ registration: as_token" in out  # and the file beside the config says so too


def test_the_homeserver_out_of_reach(stack) -> None:
    code, out = doctor(stack, QQBRIDGE_HOMESERVER__URL="http://127.0.0.1:9")
    assert code == 1 and "✘ homeserver: the bridge cannot reach http://127.0.0.1:9" in out


def test_the_bridge_out_of_the_homeservers_reach(stack) -> None:
    assert stack.bridge.stop() == 0
    try:
        code, out = doctor(stack)
    finally:
        stack.bridge.start()
        stack.bridge.wait_for_log("qqbridge ready")
    assert code == 1 and "✘ appservice: the homeserver cannot reach the bridge at" in out
    assert "is `qqbridge run` running?" in out


async def test_an_admin_runs_doctor_in_the_control_room(stack, user) -> None:
    alice = await user("alice")
    room = await control_room(alice, stack)
    answer = await command(alice, room, "doctor", "problem", stack)
    assert "✔ appservice: the homeserver reaches the bridge" in answer and "No problems found." in answer
    bob = await user("bob")
    await command(bob, await control_room(bob, stack), "doctor", "admins only", stack)
