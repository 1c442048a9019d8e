"""The parts of the relay benchmark (`bridge_relay.py`): the fixture, the three
processes, the QQ friends, and reading /proc and /metrics."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import yaml  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from qqbridge.local import LocalSynapse  # noqa: E402
from qqbridge.local.child import free_port  # noqa: E402
from qqbridge.qq import QQClient, errors, model, password_md5  # noqa: E402
from tests.e2e.harness import Process, write_config  # noqa: E402

TIME_SCALE = 0.001
OWNER_UIN = 10001
OWNER_PASSWORD = "secret"
MATRIX_USER, MATRIX_PASSWORD = "bench", "bench-pw"
DOMAIN = "localhost"
BOT = f"@qqbridge:{DOMAIN}"
SEND_BURST, SEND_WINDOW, PENALTY = 5, 5.0 * TIME_SCALE, 20.0 * TIME_SCALE  # docs/protocol.md §5, scaled
CLK_TCK = os.sysconf("SC_CLK_TCK")
# One sync returns every event of a room since the last one (no "limited" gaps to fill).
SYNC_FILTER = {
    "room": {"timeline": {"limit": 1000}, "state": {"lazy_load_members": True}, "ephemeral": {"not_types": ["*"]}},
    "presence": {"not_types": ["*"]},
    "account_data": {"not_types": ["*"]},
}


class BenchFailure(Exception):
    """Something did not arrive (or not in order): the message says what."""


class BenchTimeout(BenchFailure):
    pass


def friend_password(uin: int) -> str:
    return f"pw{uin}"


def puppet_uin(mxid: str) -> int | None:
    """The QQ number of a puppet's Matrix ID (`@_qq_10002:localhost`), else None."""
    prefix, suffix = "@_qq_", f":{DOMAIN}"
    if mxid.startswith(prefix) and mxid.endswith(suffix) and mxid[len(prefix) : -len(suffix)].isdigit():
        return int(mxid[len(prefix) : -len(suffix)])
    return None


def write_fixture(path: Path, friends: list[int]) -> None:
    accounts = [{"uin": OWNER_UIN, "password": OWNER_PASSWORD, "nick": "Owner", "auth": 0, "friends": friends}]
    accounts += [
        {"uin": uin, "password": friend_password(uin), "nick": f"Friend {uin}", "auth": 0, "friends": [OWNER_UIN]}
        for uin in friends
    ]
    path.write_text(yaml.safe_dump({"accounts": accounts}, sort_keys=False), encoding="utf-8")


# ---- /proc ------------------------------------------------------------------------------


def cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return math.nan
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kib(pid: int | None, key: str) -> int | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


# ---- /metrics ---------------------------------------------------------------------------

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(http: httpx.AsyncClient, bridge_url: str) -> Samples:
    answer = await http.get(f"{bridge_url}/metrics")
    answer.raise_for_status()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@dataclass
class HistogramDelta:
    count: float
    total: float
    buckets: list[tuple[float, float]]  # (upper bound, cumulative count), ascending, +Inf last

    @classmethod
    def between(cls, before: Samples, after: Samples, name: str, **labels: str) -> HistogramDelta:
        bounds: dict[float, float] = {}
        for (sample, sample_labels), val in after.items():
            if sample != f"{name}_bucket":
                continue
            found = dict(sample_labels)
            le = found.pop("le", None)
            if le is None or found != labels:
                continue
            bounds[float(le)] = val - before.get((sample, sample_labels), 0.0)
        return cls(
            value(after, f"{name}_count", **labels) - value(before, f"{name}_count", **labels),
            value(after, f"{name}_sum", **labels) - value(before, f"{name}_sum", **labels),
            sorted(bounds.items()),
        )

    def quantile_bound(self, q: float) -> float:
        """The upper bound of the bucket the q-quantile falls in (what the histogram can say)."""
        if not self.count:
            return math.nan
        rank = q * self.count
        for bound, cumulative in self.buckets:
            if cumulative >= rank:
                return bound
        return math.inf

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# ---- the processes ----------------------------------------------------------------------


@dataclass
class Stack:
    work: Path
    sim: Process
    sim_url: str
    synapse: LocalSynapse
    bridge: Process
    bridge_url: str

    def pids(self) -> dict[str, int | None]:
        return {
            "bridge": self.bridge.proc.pid if self.bridge.proc else None,
            "synapse": self.synapse.pid,
            "qq-sim": self.sim.proc.pid if self.sim.proc else None,
        }


async def wait_for_log(process: Process, text: str, timeout: float = 30) -> None:
    """`Process.wait_for_log` without blocking the event loop (so Ctrl-C acts at once)."""
    deadline = time.monotonic() + timeout
    while text not in process.log(since_start=True):
        if process.proc is not None and process.proc.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited {process.proc.returncode}:\n{process.log()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{process.args[0]} did not log {text!r}:\n{process.log()[-3000:]}")
        await asyncio.sleep(0.05)


async def start_stack(work: Path, args: argparse.Namespace, stack_parts: dict[str, Any]) -> Stack:
    """Start simulator, Synapse and bridge; `stack_parts` holds what is running so far,
    so the caller can stop exactly that on any failure or interrupt."""
    friends = [OWNER_UIN + 1 + i for i in range(args.friends)]
    fixture = work / "qq_accounts.yaml"
    write_fixture(fixture, friends)
    sim_port, bridge_port, hs_port = free_port("127.0.0.1"), free_port("127.0.0.1"), free_port("127.0.0.1")
    sim = Process(
        ["qq-sim", "--fixture", str(fixture), "--port", str(sim_port), "--time-scale", str(TIME_SCALE)],
        work / "sim.log",
    )
    stack_parts["sim"] = sim
    sim.start()
    await wait_for_log(sim, "listening on")
    sim_url = f"http://127.0.0.1:{sim_port}/"

    config_path, registration_path = work / "config.yaml", work / "registration.yaml"
    write_config(
        config_path,
        homeserver={"url": f"http://127.0.0.1:{hs_port}", "domain": DOMAIN},
        appservice={"port": bridge_port, "url": f"http://127.0.0.1:{bridge_port}", "as_token": "", "hs_token": ""},
        qq={
            "server_url": sim_url,
            "poll_fast": args.poll_fast,
            "poll_idle": args.poll_idle,
            "timeout": 10,
            "time_scale": TIME_SCALE,
        },
        database={"url": f"sqlite:///{work / 'bridge.db'}"},
        logging={"level": args.log_level},
        permissions={f"@{MATRIX_USER}:{DOMAIN}": "admin"},
    )
    generate = await asyncio.create_subprocess_exec(
        *[
            sys.executable,
            "-m",
            "qqbridge",
            "generate-registration",
            "-c",
            str(config_path),
            "-o",
            str(registration_path),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    if await generate.wait():
        raise RuntimeError(f"generate-registration failed with status {generate.returncode}")
    synapse = LocalSynapse(work / "synapse", port=hs_port, appservice_registrations=[registration_path])
    stack_parts["synapse"] = synapse
    await synapse.start()
    bridge = Process(["run", "-c", str(config_path)], work / "bridge.log")
    stack_parts["bridge"] = bridge
    bridge.start()
    await wait_for_log(bridge, "qqbridge ready", timeout=60)
    return Stack(work, sim, sim_url, synapse, bridge, f"http://127.0.0.1:{bridge_port}")


def stop_stack(parts: dict[str, Any]) -> None:
    """Stop what was started, bridge first (it talks to the other two), each on its own."""
    bridge, synapse, sim = parts.get("bridge"), parts.get("synapse"), parts.get("sim")
    for name, stop in (
        ("bridge", (lambda: bridge.stop()) if bridge is not None and bridge.proc is not None else None),
        ("synapse", (lambda: synapse.stop_blocking()) if synapse is not None else None),
        ("qq-sim", (lambda: sim.stop()) if sim is not None and sim.proc is not None else None),
    ):
        if stop is None:
            continue
        try:
            stop()
        except BaseException as exc:  # keep stopping the others, even on a second Ctrl-C
            print(f"bench: stopping {name} failed: {exc!r}", file=sys.stderr)


# ---- QQ friends -------------------------------------------------------------------------


class Friend:
    """A QQ friend on another computer: logged in, kept alive by a GetMsgEx pump that
    also collects what arrives (with the time it arrived)."""

    def __init__(self, sim_url: str, uin: int) -> None:
        self.uin = uin
        self.client = QQClient(sim_url, uin, local_address="127.0.0.2", timeout=10)
        self.received: list[tuple[float, int, str]] = []  # (arrival, sender, text)
        self.pump_interval = 0.1  # well inside the scaled 0.3 s session life
        self.sent_at: deque[float] = deque(maxlen=SEND_BURST)
        self.rate_limited = 0
        self.relogins = 0
        self._task: asyncio.Task[None] | None = None

    async def login(self) -> None:
        await self.client.login(password_md5(friend_password(self.uin)))

    def start(self) -> None:
        self._task = asyncio.create_task(self._pump(), name=f"pump {self.uin}")

    async def _pump(self) -> None:
        # The scaled session life is 0.3 s: a friend that says nothing for that long is
        # logged out (and 10001 sees them go offline). The pump keeps the session.
        while True:
            try:
                events = await self.client.drain_messages()
            except errors.NotLoggedIn:
                self.relogins += 1
                await self.login()
                continue
            except errors.QQError:
                await asyncio.sleep(0.05)
                continue
            now = time.time()
            for event in events:
                if isinstance(event, model.Message):
                    self.received.append((now, event.sender, event.text))
            await asyncio.sleep(self.pump_interval)

    async def send(self, target: int, make_text) -> None:
        """One message, paced to 5 per scaled 5 s; retried after RES=3 or RES=20."""
        while True:
            if len(self.sent_at) == SEND_BURST:
                wait = self.sent_at[0] + SEND_WINDOW * 1.1 - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            try:
                await self.client.send_message(target, make_text())
            except errors.RateLimited:
                self.rate_limited += 1
                await asyncio.sleep(PENALTY)
                continue
            except errors.NotLoggedIn:
                self.relogins += 1
                await self.login()
                continue
            self.sent_at.append(time.monotonic())
            return

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await self.client.logout()
        except errors.QQError:
            pass
        await self.client.aclose()
