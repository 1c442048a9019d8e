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
    # The longest groups first (`make test` passes --no-loadscope-reorder, so the workers
    # take them in this order): a 2-minute watch started last would make the whole run
    # 2 minutes longer. Slow-marked tests, then the containers, the end-to-end files and
    # the demo (each starts processes), then everything else as collected.
    items.sort(key=_weight)


def _weight(item: pytest.Item) -> int:
    path = item.nodeid.split("::", 1)[0]
    if item.get_closest_marker("slow"):
        return 0
    if path.startswith("tests/deploy/containers/"):
        return 1
    if path.startswith(("tests/e2e/", "tests/demo/")):
        return 2
    return 3
