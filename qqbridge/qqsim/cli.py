"""`qqbridge qq-sim`: run the simulator from the command line until SIGTERM/SIGINT.

It owns the subcommand's arguments and its lifecycle: load the fixture (a bad one is
one error line on stderr and exit status 2), listen, print the start line
`qq-sim listening on http://H:P (time scale S)` to stdout, and stop cleanly on a signal.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
import sys

from qqbridge.qqsim.fixture import Fixture, FixtureError, load_fixture
from qqbridge.qqsim.server import Simulator
from qqbridge.qqsim.world import QUIRKS


def time_scale(text: str) -> float:
    """An argparse type: a positive, finite number (a --time-scale)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fixture", required=True, help="YAML file of accounts")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on, 0 for any (default 8000)")
    parser.add_argument(
        "--time-scale",
        type=time_scale,
        default=1.0,
        metavar="S",
        help="multiply every protocol time constant by S (default 1.0)",
    )
    parser.add_argument(
        "--quirk",
        action="extend",
        nargs="+",
        default=[],
        choices=QUIRKS,
        metavar="NAME",
        help=f"switch on an optional quirk of the real server: {', '.join(QUIRKS)}",
    )


def run(args: argparse.Namespace) -> int:
    try:
        fixture = load_fixture(args.fixture)
    except FixtureError as exc:
        print(f"qq-sim: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(fixture, args))


async def _serve(fixture: Fixture, args: argparse.Namespace) -> int:
    sim = Simulator(fixture, host=args.host, port=args.port, time_scale=args.time_scale, quirks=args.quirk)
    try:
        await sim.start()
    except OSError as exc:
        print(f"qq-sim: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    print(sim.banner, flush=True)
    try:
        await stopping.wait()
    finally:
        await sim.stop()
    return 0
