"""Log storms: repeats of the same warning or error are dropped for a window and then
counted, and stdlib loggers' tracebacks (aiohttp, asyncio) stay one JSON object per line."""

from __future__ import annotations

import json
import subprocess
import sys

from qqbridge.log import RepeatLimiter, kind_of


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_first_passes_repeats_are_counted_and_reported_after_the_window() -> None:
    clock = Clock()
    limiter = RepeatLimiter(60, clock=clock)
    assert limiter.admit("accept failed") == 0
    assert [limiter.admit("accept failed") for _ in range(999)] == [None] * 999
    assert limiter.admit("wrong token") == 0, "another kind has its own count"
    clock.now = 59.9
    assert limiter.admit("accept failed") is None
    clock.now = 60.0
    assert limiter.admit("accept failed") == 1000, "the summary: how many were dropped"
    assert limiter.admit("accept failed") is None
    clock.now = 200.0
    assert limiter.admit("accept failed") == 1
    clock.now = 300.0
    assert limiter.admit("accept failed") == 0


def test_the_limiter_remembers_a_bounded_number_of_kinds() -> None:
    limiter = RepeatLimiter(60, max_kinds=10, clock=Clock())
    assert all(limiter.admit(n) == 0 for n in range(1000))
    assert len(limiter._kinds) == 10
    assert limiter.admit(999) is None and limiter.admit(0) == 0  # 0 was forgotten


def test_kind_ignores_numbers_addresses_and_later_lines() -> None:
    assert kind_of("Error handling request from 10.0.0.7") == kind_of("Error handling request from 10.0.0.8")
    assert kind_of("socket.accept() out of system resource\nsocket: <fd=9>") == kind_of(
        "socket.accept() out of system resource\nsocket: <fd=12>"
    )
    assert kind_of("Exception in callback f() at 0x7f00aa") == kind_of("Exception in callback f() at 0x7f00bb")
    assert kind_of("wrong hs_token") != kind_of("missing access token")


STORM = r"""
import asyncio, logging, structlog
from qqbridge import log
log.configure("json", "INFO", limiter=log.RepeatLimiter(window=0.5))
bridge = structlog.get_logger("qqbridge.matrix.appservice")

def storm():
    for n in range(1000):
        bridge.warning("homeserver request with a wrong hs_token", path=f"/t/{n}", remote="203.0.113.9")
        try:
            raise OSError(24, f"Too many open files; Authorization: Bearer leaked-token-{n}")
        except OSError:
            logging.getLogger("aiohttp.server").exception("Error handling request from 203.0.113.%d", n % 250)
            logging.getLogger("asyncio").error("socket.accept() out of system resource\nsocket: <fd=9>",
                                               exc_info=True)
            bridge.exception("could not store a transaction", txn_id=str(n))

async def callbacks():
    def broken():
        raise RuntimeError("boom\nsecond line")
    for _ in range(1000):
        asyncio.get_running_loop().call_soon(broken)
    await asyncio.sleep(0.1)

storm()
asyncio.run(callbacks())
bridge.info("info is never dropped", n=1)
bridge.info("info is never dropped", n=2)
import time; time.sleep(0.6)
storm()
"""


def test_a_storm_of_errors_is_a_handful_of_json_lines() -> None:
    done = subprocess.run([sys.executable, "-c", STORM], capture_output=True, text=True, timeout=60, check=True)
    lines = done.stderr.splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert len(done.stderr) < 20_000, f"{len(done.stderr)} bytes"
    by_event: dict[str, list[dict]] = {}
    for record in records:
        by_event.setdefault(record["event"].split("\n")[0], []).append(record)
    # each kind: the first of the first storm, then one after the window with the count
    for event in ("homeserver request with a wrong hs_token", "could not store a transaction",
                  "Error handling request from 203.0.113.0", "socket.accept() out of system resource"):  # fmt: skip
        seen = by_event.pop(event)
        assert len(seen) == 2 and "repeated" not in seen[0] and seen[1]["repeated"] == 999, seen
    callbacks = [r for r in records if r["event"].startswith("Exception in callback")]
    assert len(callbacks) == 1 and callbacks[0]["logger"] == "asyncio"
    assert "RuntimeError: boom" in callbacks[0]["exception"]
    assert [r["n"] for r in records if r["event"] == "info is never dropped"] == [1, 2]
    traceback = next(r for r in records if r["event"].startswith("Error handling request"))
    assert traceback["logger"] == "aiohttp.server" and "Traceback" in traceback["exception"]
    assert "leaked-token" not in done.stderr and "Bearer ***" in traceback["exception"]
