"""Markers for the whole suite (CI runs every test, these included)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: takes minutes of wall-clock time by nature (waits out a homeserver's timers)"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`make test` runs `--dist loadgroup`), a file's tests stay on one
    worker, so a module's or a session's stack (a Synapse, bridges) starts once per
    worker that needs it, not once per test; and the container tests all share one
    worker (one image build, one podman store)."""
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        group = "containers" if path.startswith("tests/deploy/containers/") else path
        item.add_marker(pytest.mark.xdist_group(group))
