"""Running containers in the container tests: logs, inspect, health checks, volumes."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy import podman as pm


@dataclass
class BuiltImage:
    id: str
    tag: str
    seconds: float


def unavailable(reason: str) -> None:
    """Skip, saying why; fail instead where the container tests must run (CI)."""
    if os.environ.get(pm.REQUIRE_ENV):
        pytest.fail(f"{pm.REQUIRE_ENV} is set, but {reason}")
    pytest.skip(reason)


def logs(container: str) -> str:
    done = pm.podman("logs", container, check=False)
    return (done.stdout or "") + (done.stderr or "")


def wait_for_log(container: str, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in logs(container):
            return
        time.sleep(0.25)
    raise AssertionError(f"{container} did not log {text!r} in {timeout} s:\n{logs(container)[-4000:]}")


def inspect(container: str, template: str) -> str:
    return pm.podman("inspect", "--format", template, container).stdout.strip()


def healthcheck(container: str) -> subprocess.CompletedProcess[str]:
    """Run the container's health check now (podman without systemd schedules none)."""
    return pm.podman("healthcheck", "run", container, check=False, timeout=60)


def wait_healthy(container: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        done = healthcheck(container)
        if done.returncode == 0:
            assert inspect(container, "{{.State.Health.Status}}") == "healthy"
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{container} is not healthy after {timeout} s: {done.stdout} {done.stderr}\n{logs(container)[-3000:]}"
            )
        time.sleep(1)


def volume_path(volume: str) -> Path:
    return Path(pm.podman("volume", "inspect", "--format", "{{.Mountpoint}}", volume).stdout.strip())
