"""Fixtures of the deploy/ tests."""

from __future__ import annotations

import pytest

from tests.deploy.helpers import DOCKERFILE, Dockerfile, parse_dockerfile


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE)
