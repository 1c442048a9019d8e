"""What keeping presence true costs: N online puppets kept online on a real Synapse.

Starts a local Synapse (default presence timers: an online user who neither syncs nor
updates drops to offline after 30 s) with an appservice registration, registers N
puppets, sets them all online at once as the login sync does, then runs the bridge's
own PresenceKeeper (qqbridge/bridge/contacts/presence.py) against it for --seconds and reports:

- PUT /presence requests per second, on average and in the busiest second;
- CPU seconds per wall-clock second of this process (the keeper and its HTTP client,
  i.e. the bridge's share) and of Synapse, and Synapse's CPU while idle beforehand;
- the longest a puppet went without its presence said again (must stay under 30 s);
- how many puppets read online at the end (GET /presence, as each puppet).

    .venv/bin/python bench/presence_refresh.py [--puppets 1000] [--seconds 60] [--interval 20]

Measured on the 2-core development machine (Synapse 1.163, SQLite; other work running):

    puppets online   PUT/s (busiest s)   keeper CPU   Synapse CPU (idle)   longest unsaid   online at end
         250          12.5 (18)            2.1%         3.6% (2.1%)          20.2 s          250 / 250
       1,000          50.1 (69)            4.3%        10.9% (3.3%)          20.2 s        1,000 / 1,000

The cost grows linearly with the friends who are online or busy (offline ones cost
nothing): 0.05 requests a second each, about 0.004% of a core in the bridge and 0.008%
in Synapse. The login sync sets 1,000 online puppets in about 10 s, one after another.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qqbridge.bridge.contacts.presence import PresenceKeeper  # noqa: E402
from qqbridge.local import LocalSynapse  # noqa: E402
from qqbridge.matrix.api import HomeserverAPI  # noqa: E402

FIRST_UIN = 100_000
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def mxid(uin: int) -> str:
    return f"@_qq_{uin}:localhost"


async def bench(args: argparse.Namespace, work: Path) -> None:
    as_token, hs_token = secrets.token_hex(16), secrets.token_hex(16)
    registration = {
        "id": "presence-bench", "url": None, "as_token": as_token, "hs_token": hs_token,
        "sender_localpart": "qqbridge", "rate_limited": False,
        "namespaces": {"users": [{"exclusive": True, "regex": "@_qq_[0-9]+:localhost"}], "rooms": [], "aliases": []},
    }  # fmt: skip
    (work / "registration.yaml").write_text(yaml.safe_dump(registration))
    synapse = LocalSynapse(work / "synapse", appservice_registrations=[work / "registration.yaml"])
    await synapse.start()
    api = HomeserverAPI(synapse.base_url, as_token, "@qqbridge:localhost")
    try:
        uins = range(FIRST_UIN, FIRST_UIN + args.puppets)
        started = time.monotonic()
        for chunk in range(0, args.puppets, 50):
            await asyncio.gather(*(api.ensure_registered(mxid(uin)) for uin in uins[chunk : chunk + 50]))
        print(f"registered {args.puppets} puppets in {time.monotonic() - started:.1f} s")

        pid = synapse.pid
        assert pid is not None
        before, idle_start = cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(10)
        idle = (cpu_seconds(pid) - before) / (time.monotonic() - idle_start)

        said: dict[int, list[float]] = {}

        async def put(uin: int, presence: str) -> None:
            await api.set_presence(mxid(uin), presence)
            said.setdefault(uin, []).append(time.monotonic())

        keeper = PresenceKeeper(put, interval=args.interval)
        started = time.monotonic()
        for uin in uins:  # the login sync: one after the other
            await keeper.say(uin, "online")
        print(f"set {args.puppets} puppets online in {time.monotonic() - started:.1f} s (the login sync)")

        loop = asyncio.create_task(keeper.run())
        await asyncio.sleep(args.interval)  # one whole interval: the schedule settles into its phases
        t0, own0, hs0, done0 = time.monotonic(), time.process_time(), cpu_seconds(pid), keeper.refreshed
        await asyncio.sleep(args.seconds)
        t1, own1, hs1, done1 = time.monotonic(), time.process_time(), cpu_seconds(pid), keeper.refreshed
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)

        wall = t1 - t0
        per_second = Counter(int(at - t0) for times in said.values() for at in times if t0 <= at < t1)
        gaps = [b - a for times in said.values() for a, b in zip(times, times[1:], strict=False)]
        online = 0
        for chunk in range(0, args.puppets, 50):
            answers = await asyncio.gather(*(
                api.request("GET", f"/_matrix/client/v3/presence/{mxid(uin)}/status", user_id=mxid(uin))
                for uin in uins[chunk : chunk + 50]
            ))  # fmt: skip
            online += sum(answer.get("presence") == "online" for answer in answers)

        print(f"\n{args.puppets} online puppets, refreshed every {args.interval:.0f} s, measured over {wall:.0f} s:")
        print(f"  PUT /presence: {(done1 - done0) / wall:.1f}/s on average, {max(per_second.values())} in the busiest second,"
              f" {keeper.failed} failed")  # fmt: skip
        print(f"  CPU, the keeper's process: {(own1 - own0) / wall * 100:.1f}% of one core")
        print(f"  CPU, Synapse: {(hs1 - hs0) / wall * 100:.1f}% of one core (idle, before: {idle * 100:.1f}%)")
        print(f"  longest a puppet went unsaid: {max(gaps):.1f} s (Synapse drops it after 30 s)")
        print(f"  online at the end: {online} of {args.puppets}")
    finally:
        await api.close()
        await synapse.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--puppets", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="presence-bench-") as work:
        asyncio.run(bench(args, Path(work)))


if __name__ == "__main__":
    main()
