"""Fixtures for tests against a real Synapse on loopback (`qqbridge.local`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from qqbridge.local import LocalSynapse


@pytest.fixture(scope="module")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSynapse]:
    """A plain Synapse (no appservices) shared by the tests of one module.

    A sync fixture on purpose: the Synapse process belongs to no event loop, so tests
    on any loop scope can use it.
    """
    hs = LocalSynapse(tmp_path_factory.mktemp("synapse"))
    hs.start_blocking()
    try:
        yield hs
    finally:
        hs.stop_blocking()
