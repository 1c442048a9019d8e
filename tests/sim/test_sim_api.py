"""The programmatic API other tests rely on: `Simulator`, `load_fixture`, `sim.url`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from qqbridge.qqsim import Simulator, load_fixture
from tests.sim.accounts import ACCOUNTS
from tests.sim.simclient import QQ, exchange, http_request

SAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "sim_accounts.yaml"


async def test_context_manager_binds_a_real_port_and_stops() -> None:
    async with Simulator(SAMPLE, host="127.0.0.1", port=0, time_scale=1.0, quirks=()) as sim:
        assert sim.port > 0
        assert sim.url == f"http://127.0.0.1:{sim.port}/"
        assert sim.banner == f"qq-sim listening on http://127.0.0.1:{sim.port} (time scale 1)"
        assert (await QQ(sim.port).login(10001, "secret"))["RES"] == "0"
    await sim.stop()  # a second stop is harmless


async def test_start_and_stop_with_any_fixture_form() -> None:
    for fixture in (SAMPLE, str(SAMPLE), load_fixture(SAMPLE), ACCOUNTS):
        sim = Simulator(fixture, time_scale=0.01)
        await sim.start()
        try:
            assert (await QQ(sim.port).call("Logout", 10001))["RES"] == "0"
        finally:
            await sim.stop()


async def test_stop_drops_slow_replies_in_flight() -> None:
    sim = Simulator(ACCOUNTS, time_scale=1.0)  # a refusal would take 20 s
    await sim.start()
    assert (await QQ(sim.port).login(10001, "alice-pw"))["RES"] == "0"
    body = b"VER=1.1&CMD=Ack_AddToList&SEQ=1&UIN=10001&UN=10002&CD=3&RS="
    slow = asyncio.create_task(exchange(sim.port, http_request(body)))
    await asyncio.sleep(0.05)
    await asyncio.wait_for(sim.stop(), 2)
    try:
        raw = await asyncio.wait_for(slow, 2)
    except ConnectionResetError:
        raw = b""
    assert raw == b""


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"quirks": ("no-such",)}, "unknown quirk"), ({"time_scale": 0}, "time_scale"), ({"time_scale": -1}, "time_scale")],
)
def test_bad_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Simulator(ACCOUNTS, **kwargs)


def test_the_sample_fixture_loads() -> None:
    fixture = load_fixture(SAMPLE)
    assert [a.uin for a in fixture.accounts] == [10001, 10002, 10003]
    assert fixture.account(10003).nick == "卡罗尔"
