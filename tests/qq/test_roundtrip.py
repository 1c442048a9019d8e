"""Any Unicode text crosses client → simulator → client unchanged (hypothesis), with the
simulator as its own process (`qqbridge qq-sim`) over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from qqbridge.qq import QQClient, errors, model, password_md5
from tests.qq.conftest import FIXTURE


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    # A tiny time scale: the 5 s rate window is 5 ms, so many examples do not trip it.
    process = subprocess.Popen(
        [sys.executable, "-m", "qqbridge", "qq-sim", "--fixture", str(FIXTURE), "--port", "0", "--time-scale", "0.002"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline()
    assert "listening on" in line, line
    yield line.split("listening on ", 1)[1].split()[0]
    process.terminate()
    assert process.wait(10) == 0
    process.stdout.close()


async def _cross(url: str, text: str) -> list[model.Event]:
    async with QQClient(url, 10001) as alice, QQClient(url, 10002) as bob:
        await alice.login(password_md5("secret"))
        await bob.login(password_md5("hunter2"))
        await bob.drain_messages()
        for _ in range(20):
            try:
                await alice.send_message(10002, text)
                break
            except errors.RateLimited:
                continue
        return [e for e in await bob.drain_messages() if isinstance(e, model.Message)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(min_size=1).filter(lambda t: len(t.encode()) <= 700))
@example("&=,%+ \n\r\t")
@example("你好，世界 😀👍🏽 مرحبا")
@example("%41%2C+plus+%zz")
@example(",")
@example("a" * 700)
def test_any_text_crosses_unchanged(sim_url: str, text: str) -> None:
    assert asyncio.run(_cross(sim_url, text)) == [model.Message(10001, text)]
