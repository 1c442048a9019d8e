"""Memory and start-up of many idle logged-in QQ accounts, against the simulator.

Starts `qqbridge qq-sim` (time scale 1) in its own process with a generated fixture of
N accounts, then, in this process, runs the bridge's QQ side as `qqbridge run` wires it
(`Accounts` with the QQ client factory of `qqbridge.app`, the SQLite store, no Matrix):
every account is resumed at once, as at a restart, and the script waits until each has
logged in and polled once (the start-up time), lets them idle, then prints the RSS of
this process, per account, and (with --tracemalloc) the top 10 allocation sites.

    .venv/bin/python bench/idle_accounts.py --accounts 1000 [--idle 10] [--tracemalloc]
    .venv/bin/python bench/idle_accounts.py --accounts 1000 --profile 25         # where the idle CPU goes
    .venv/bin/python bench/idle_accounts.py --accounts 1000 --own-clients   # one httpx client each (the old way)
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import hashlib
import pstats
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.sim_rps import FIRST_UIN, write_fixture  # noqa: E402  (the same N accounts, 8 friends each)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def main(args: argparse.Namespace) -> None:
    from qqbridge.bridge.qq_sessions.registry import Accounts
    from qqbridge.config import Config
    from qqbridge.qq import QQClient
    from qqbridge.store import Store

    app = app_module()

    work = Path(tempfile.mkdtemp(prefix="idle-accounts-"))
    write_fixture(work / "fixture.yaml", args.accounts)
    sim = subprocess.Popen(
        [sys.executable, "-m", "qqbridge", "qq-sim", "--fixture", str(work / "fixture.yaml"), "--port", "0"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        line = sim.stdout.readline() if sim.stdout else ""
        url = line.split("listening on ")[1].split()[0] + "/"
        config = Config(homeserver={"url": "http://127.0.0.1:1", "domain": "x"}, qq={"server_url": url})
        store = await Store.open(f"sqlite:///{work / 'bridge.db'}")
        for i in range(args.accounts):
            await store.users.upsert(f"@u{FIRST_UIN + i}:x")
        if args.tracemalloc:
            tracemalloc.start(args.frames)
        base = rss_mb()
        closers = []
        if args.own_clients:
            def factory(uin: int) -> QQClient:
                return QQClient(url, uin, timeout=config.qq.timeout)
        else:
            connections = app.qq_connections(config)
            closers.append(connections.aclose)
            factory = app.qq_factory(config, connections)

        async def deliver(mxid: str, seq: int, events: list) -> None:
            pass

        async def notify(mxid: str, text: str) -> None:
            pass

        options = dict(poll_fast=config.qq.poll_fast_seconds, poll_idle=config.qq.poll_idle_seconds)
        if not args.own_clients:  # the old code has no login pace
            options["logins_per_second"] = config.qq.logins_per_second
            options["max_requests_per_second"] = config.qq.max_requests_per_second
        accounts = Accounts(factory, store, deliver, notify, **options)
        began = time.monotonic()
        for i in range(args.accounts):
            uin = FIRST_UIN + i
            await accounts.resume(f"@u{uin}:x", uin, hashlib.md5(f"pw{uin}".encode()).hexdigest())
        first_poll: dict[str, float] = {}
        while len(first_poll) < args.accounts:
            await asyncio.sleep(0.05)
            now = time.monotonic() - began
            for mxid, account in accounts.running.items():
                if mxid not in first_poll and account.last_poll is not None:
                    first_poll[mxid] = now
            if now > 120:
                break
        times = sorted(first_poll.values())
        print(f"accounts {args.accounts}: {len(times)} polling; first poll p50 {times[len(times) // 2]:.2f} s, "
              f"all in {times[-1]:.2f} s" if times else "none polled")  # fmt: skip
        requests = [0]
        send = QQClient.request

        async def counted(self: QQClient, command: object) -> object:
            requests[0] += 1
            return await send(self, command)  # type: ignore[arg-type]

        QQClient.request = counted  # type: ignore[method-assign]
        await asyncio.sleep(args.warm)  # past the start-up's first polls: the steady state
        requests[0] = 0
        profile = cProfile.Profile() if args.profile else None
        cpu, wall = time.process_time(), time.monotonic()
        if profile:
            profile.enable()
        await asyncio.sleep(args.idle)
        if profile:
            profile.disable()
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        print(f"idle {wall:.0f} s: {requests[0] / wall:.1f} QQ requests/s, {100 * cpu / wall:.1f} % of a core")
        if profile:
            pstats.Stats(profile).sort_stats(args.sort).print_stats(args.profile)
        gc.collect()
        rss = rss_mb()
        print(f"RSS {rss:.1f} MB (before the accounts: {base:.1f} MB; "
              f"{(rss - base) * 1024 / args.accounts:.1f} KB per account)")  # fmt: skip
        if args.tracemalloc:
            snapshot = tracemalloc.take_snapshot()
            total = sum(stat.size for stat in snapshot.statistics("filename"))
            print(f"tracemalloc: {total / 1e6:.1f} MB traced; top 10 by line:")
            for stat in snapshot.statistics("lineno")[:10]:
                print(f"  {stat.size / 1024:8.0f} KiB {stat.count:7d} blocks  {stat.traceback[0]}")
        await accounts.close()
        for close in closers:
            await close()
        await store.close()
    finally:
        sim.terminate()
        sim.wait()


def app_module():  # noqa: ANN201
    from qqbridge import app

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idling before measuring")
    parser.add_argument("--warm", type=float, default=0.0, help="seconds after start-up before idling is measured")
    parser.add_argument("--own-clients", action="store_true", help="one httpx client per account (the old way)")
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument("--frames", type=int, default=1)
    parser.add_argument("--sort", default="tottime", help="the profile's order: tottime or cumulative")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="print the N costliest functions while idle")
    asyncio.run(main(parser.parse_args()))
