"""The systemd unit: hardened, verified by systemd-analyze, its command real."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qqbridge.app import SHUTDOWN_SECONDS
from qqbridge.cli import main
from qqbridge.config import Appservice
from qqbridge.matrix.http_limits import RESERVED_FDS
from tests.bridge.test_start_failures import FAST as FAST_START_FAILURE
from tests.deploy.helpers import UNIT, YES, bridge_env, config_key, parse_cli

DEFAULT_MAX_CONNECTIONS = Appservice.model_fields["max_connections"].default

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
    nofile = one("LimitNOFILE").partition(":")[0]  # soft[:hard]
    assert nofile.isdigit() and int(nofile) >= DEFAULT_MAX_CONNECTIONS + RESERVED_FDS, (
        "LimitNOFILE= too low: the bridge would hold fewer than appservice.max_connections connections"
    )
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


def seconds(value: str) -> float:
    """A systemd time span as seconds: "5", "5s", "2min", "500ms", "1min 30s"."""
    units = {"": 1.0, "s": 1.0, "sec": 1.0, "ms": 0.001, "m": 60.0, "min": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    assert parts and "".join(n + u for n, u in parts) == value.replace(" ", ""), f"cannot read {value!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def starts_until_systemd_gives_up(unit: dict[str, dict[str, list[str]]], runs: list[float], *,
                                  fails_after: float) -> int | None:  # fmt: skip
    """How many starts systemd makes of a service that runs `runs[i]` seconds the i-th
    time before failing (and for good once the list ends, after `fails_after` seconds
    each time), before the start limit refuses the next one; None if it never does
    within the runs. systemd's rate limit: a window of StartLimitIntervalSec opens at the
    first start and counts starts up to StartLimitBurst; a start beyond it is refused."""
    interval = seconds(unit["Unit"]["StartLimitIntervalSec"][-1])
    burst = int(unit["Unit"]["StartLimitBurst"][-1])
    restart = seconds(unit["Service"]["RestartSec"][-1])
    now, window_start, in_window = 0.0, None, 0
    for start in range(len(runs) + 2 * burst):
        if window_start is None or now > window_start + interval:
            window_start, in_window = now, 0
        if in_window >= burst:
            return start
        in_window += 1
        if start >= len(runs) + burst:
            return None
        now += (runs[start] if start < len(runs) else fails_after) + restart
    return None


def test_a_start_that_fails_for_good_is_not_retried_forever(unit: dict[str, dict[str, list[str]]]) -> None:
    """Restart=on-failure retries a crash; StartLimitBurst/IntervalSec stop a start that
    fails at once every time (a bad database path, a taken port) after a few tries,
    leaving the unit failed with the bridge's `cannot start:` line in its status."""
    assert unit["Service"]["Restart"][-1] == "on-failure"
    assert "StartLimitBurst" not in unit["Service"] and "StartLimitIntervalSec" not in unit["Service"], (
        "the start limit belongs in [Unit]"
    )
    burst = int(unit["Unit"]["StartLimitBurst"][-1])
    assert 3 <= burst <= 10
    # `qqbridge run` that cannot start ends within FAST seconds (tests/bridge/test_start_failures.py)
    assert starts_until_systemd_gives_up(unit, [], fails_after=FAST_START_FAILURE) == burst
    assert starts_until_systemd_gives_up(unit, [], fails_after=0.5) == burst
    # a crash now and then (once an hour, or a minute after each start) is retried, always
    assert starts_until_systemd_gives_up(unit, [3600.0] * 48, fails_after=3600.0) is None
    assert starts_until_systemd_gives_up(unit, [60.0] * 48, fails_after=60.0) is None
    # a problem that passes within 20 s (PostgreSQL still starting at boot) gets there
    restart = seconds(unit["Service"]["RestartSec"][-1])
    assert (burst - 1) * (restart + FAST_START_FAILURE) >= 20


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
