"""Relay throughput and latency of the whole bridge, both ways, on loopback.

Starts the three processes as the end-to-end tests do: the QQ simulator
(`python -m qqbridge qq-sim`, time scale 0.001 so the protocol's 5-messages-per-5-s send
limit is 5 ms), a real Synapse (`qqbridge.local.LocalSynapse`) and the bridge
(`python -m qqbridge run`, after `generate-registration`). A Matrix user (matrix-nio)
logs QQ account 10001 in through the control room; its QQ friends are played with
`QQClient` from 127.0.0.2. Then:

1. QQ -> Matrix: the friends send --messages texts in total to 10001, as fast as the
   protocol lets each of them (5 per 5 ms), while the Matrix user syncs, accepts the
   portal invites as they come and counts the puppets' messages. Timed until the last
   one is in Matrix.
2. Matrix -> QQ: the Matrix user sends --m2q texts into one portal (--m2q-window sends
   in flight; 1 = one after another, as a person types); the friend drains GetMsgEx
   until all have arrived, and they must arrive in the portal's timeline order.

Every text carries its send time, so end-to-end latency is measured per message (QQ ->
Matrix: to the event's origin_server_ts on Synapse; Matrix -> QQ: to the friend's
GetMsgEx that returned it). The bridge's own `qqbridge_relay_latency_seconds`
histogram (from arrival at the bridge to delivery) is scraped from /metrics before
and after each phase; its percentiles can only be given as bucket bounds (the first
bucket is 50 ms), its mean exactly. The bridge's peak RSS (VmHWM) and CPU seconds come
from /proc, as do Synapse's and the simulator's CPU, to tell which process is the
bottleneck on this 2-core machine.

    .venv/bin/python bench/bridge_relay.py [--messages 300] [--m2q 100] [--friends 10]
        [--m2q-window 1] [--timeout 300] [--poll-fast 0.05] [--poll-idle 0.2]
        [--sync-every 0] [--log-level INFO] [--keep]

To see where the bridge waits, attach py-spy to it while a phase runs (the pids are
printed when the stack is up), or run with `--keep` and read the timestamps in the
work directory's bridge.db (qq_inbound.fetched_at/relayed_at, outbox.created_at/sent_at):

    .venv/bin/py-spy record --idle --threads --format raw -d 10 -o bridge.txt -p <pid>

Prints a table; exits 1 (saying what was missing) if anything did not arrive or
arrived out of order, 2 on the overall timeout. Every process it started is stopped
on exit, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


from bench.relay_parts import (  # noqa: E402
    BenchFailure,
    Stack,
    start_stack,
    status_kib,
    stop_stack,
)
from bench.relay_phases import Bench  # noqa: E402
from bench.relay_report import PhaseResult, report  # noqa: E402

# ---- the benchmark ----------------------------------------------------------------------


async def run_bench(stack: Stack, args: argparse.Namespace, deadline: float, started: float) -> int:
    bench = Bench(stack, args, deadline)
    results: list[PhaseResult] = []
    problems: list[str] = []
    try:
        await bench.setup()
        for phase in (bench.qq_to_matrix, bench.matrix_to_qq):
            try:
                result = await phase()
            except BenchFailure as exc:
                problems.append(str(exc))
                break
            results.append(result)
            if result.arrived < result.expected:
                problems.append(f"{result.name}: only {result.arrived} of {result.expected} arrived")
            problems += [
                f"{result.name}: {n}"
                for n in result.notes
                if n.startswith(("OUT OF ORDER", "DUPLICATES", "MISSING", "overall timeout"))
            ]
            if problems:
                break
            await bench.settle(quiet=0.3)
        pids = stack.pids()
        rss = {key: status_kib(pids["bridge"], key) for key in ("VmHWM", "VmRSS")}
        cpu_total = bench.cpu()
    finally:
        await bench.close()
    report(results, rss, cpu_total, time.monotonic() - started, args)
    timed_out = any("timeout" in p for p in problems)
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    if problems:
        print(f"logs: {stack.work}", file=sys.stderr)
    return 2 if timed_out else 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=300, help="QQ -> Matrix messages in total (default 300)")
    parser.add_argument("--m2q", type=int, default=100, help="Matrix -> QQ messages (default 100)")
    parser.add_argument("--m2q-window", type=int, default=1, help="Matrix sends in flight (default 1)")
    parser.add_argument("--friends", type=int, default=10, help="QQ friends sending (default 10)")
    parser.add_argument("--timeout", type=float, default=300, help="overall limit in seconds (default 300)")
    parser.add_argument("--poll-fast", type=float, default=0.05, help="bridge qq.poll_fast (default 0.05)")
    parser.add_argument("--poll-idle", type=float, default=0.2, help="bridge qq.poll_idle (default 0.2)")
    parser.add_argument(
        "--sync-every",
        type=float,
        default=0.0,
        metavar="S",
        help="pause S seconds between the Matrix user's syncs (default 0: always long-polling)",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, databases)")
    args = parser.parse_args()
    if args.messages < 1 or args.m2q < 1 or not 1 <= args.friends <= 200 or args.m2q_window < 1:
        parser.error("--messages, --m2q and --m2q-window must be >= 1, --friends 1..200")

    started = time.monotonic()
    deadline = started + args.timeout
    work = Path(tempfile.mkdtemp(prefix="qqbridge-bench-"))
    parts: dict[str, Any] = {}

    interrupted: list[signal.Signals] = []  # Ctrl-C or SIGTERM, whatever else fails after it

    def on_signal(signum: int, frame: Any) -> None:  # outside the event loop (its first and last moments)
        interrupted.append(signal.Signals(signum))
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    async def everything() -> int:
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda sig=sig: (interrupted.append(sig), task.cancel()))

        async def body() -> int:
            stack = await start_stack(work, args, parts)
            pids = ", ".join(f"{name} {pid}" for name, pid in stack.pids().items())
            print(f"stack up in {time.monotonic() - started:.1f} s, pids: {pids} (work directory {work})", flush=True)
            return await run_bench(stack, args, deadline, started)

        try:
            # A backstop: the phases check the deadline themselves and say what is missing.
            return await asyncio.wait_for(body(), max(1.0, deadline - time.monotonic() + 15))
        except TimeoutError:
            print(f"FAILED: overall timeout ({args.timeout:g} s); logs: {work}", file=sys.stderr)
            return 2

    code = 1
    try:
        code = asyncio.run(everything())
    except BaseException as exc:
        if interrupted:  # a child that died of the same Ctrl-C may have failed a request first
            print(f"\n{interrupted[0].name}: stopping everything", file=sys.stderr)
            code = 128 + interrupted[0]
        elif isinstance(exc, Exception):
            print(f"FAILED: {type(exc).__name__}: {exc}\nlogs: {work}", file=sys.stderr)
            code = 1
        else:
            raise
    finally:
        # A second Ctrl-C from here on must not leave a process behind.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        stop_stack(parts)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if code == 0 and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif code != 0:
            print(f"work directory kept: {work}", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
