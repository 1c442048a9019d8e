"""Fixtures of the container tests (marked `container`): podman ready, the stand-in
images, the bridge's image built once per session from a clean checkout.

Where podman is missing (or cannot run containers) these tests skip, saying why; with
QQBRIDGE_TEST_REQUIRE_CONTAINERS=1, as .ci/run sets it, that is a failure instead.
`pytest -m "not container"` leaves them out.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy import podman as pm
from tests.deploy.containers.helpers import BuiltImage, unavailable


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "container: builds and runs the container image with podman (slow)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.container)


@pytest.fixture(scope="session")
def podman_ready() -> None:
    reason = pm.why_unavailable()
    if reason:
        unavailable(reason)
    try:
        pm.ensure_base()
    except pm.Unavailable as exc:
        unavailable(str(exc))


@pytest.fixture(scope="session")
def bridge_image(podman_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuiltImage]:
    """deploy/docker/Dockerfile built from a clean checkout, under a tag of this run's own
    (test runs in parallel share podman's store)."""
    tag = f"localhost/qqbridge-test:{secrets.token_hex(4)}"
    image_id, seconds = pm.build_bridge_image(tag, tmp_path_factory.mktemp("image"))
    pm.say(f"bridge image {tag}: built in {seconds:.1f} s")
    yield BuiltImage(image_id, tag, seconds)
    pm.podman("untag", image_id, tag, check=False)


@pytest.fixture(scope="session")
def standins(podman_ready: None) -> dict[str, str]:
    """kind → image of the stand-ins for compose's Synapse and PostgreSQL."""
    try:
        return {kind: pm.ensure_standin(kind) for kind in ("postgres", "synapse")}
    except pm.Unavailable as exc:
        unavailable(str(exc))
        raise
