"""Fixtures for the simulator's tests: a small world of accounts and running simulators."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from qqbridge.qqsim import Simulator
from tests.sim.accounts import ACCOUNTS

SimFactory = Callable[..., Awaitable[Simulator]]


@pytest.fixture
def accounts() -> dict:
    return copy.deepcopy(ACCOUNTS)


@pytest.fixture
async def make_sim() -> AsyncIterator[SimFactory]:
    """Start simulators (default: the accounts above, time scale 0.01); stopped after the test."""
    started: list[Simulator] = []

    async def make(fixture: object = None, time_scale: float = 0.01, quirks: tuple[str, ...] = ()) -> Simulator:
        sim = Simulator(copy.deepcopy(ACCOUNTS) if fixture is None else fixture, time_scale=time_scale, quirks=quirks)
        await sim.start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        await sim.stop()


@pytest.fixture
async def sim(make_sim: SimFactory) -> Simulator:
    return await make_sim()
