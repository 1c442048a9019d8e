"""Markers for the whole suite (CI runs every test, these included)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: takes minutes of wall-clock time by nature (waits out a homeserver's timers)"
    )
