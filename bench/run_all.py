"""The performance table of issue 11, measured in one run: `make bench`.

Starts the QQ simulator at time scale 1, a real Synapse and the bridge with its default
configuration on loopback (`perf_stack.py`), then (`perf_phases.py`):

1. Matrix users log QQ accounts in through their control rooms: --chats chat owners,
   each with one friend, and a burst owner with 60 friends.
2. Active chats: every chat friend writes every 2-5 s for --chat-seconds; QQ -> Matrix
   latency end to end and the bridge's own part.
3. Matrix -> QQ: one message at a time into a portal, --m2q of them.
4. A burst: 60 friends write 15 messages each to the burst owner while it is logged out;
   it logs in and the bridge relays all 900. Synapse's own pace with 16 sends in flight
   (and one at a time) is measured just before and after, into the same rooms.
5. For each of --accounts: the bridge restarted with that many logged-in accounts;
   start-up until all poll, memory, CPU and requests while idle, then the first message
   after quiet.

Writes the table, how the cost grows and a projection for 10,000 accounts to
docs/performance.md (--out; --no-write to only print it), keeping what follows the line
`<!-- kept by bench/run_all.py -->` there (notes written by hand). The older benchmarks stay:
`make bench-relay` (relay throughput at time scale 0.001), `make bench-sim`, and
bench/presence_refresh.py.

    .venv/bin/python bench/run_all.py [--quick] [--out docs/performance.md] [--no-write]
        [--chats 16] [--accounts 100,500,1000] [--keep]

About 9 minutes (--quick about 5). Exits 1 if a phase failed (what was measured is
still written), 130 on Ctrl-C; every process it started is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.perf_phases import BenchFailure, Run  # noqa: E402
from bench.perf_report import markdown  # noqa: E402
from bench.perf_stack import start_stack, stop_stack  # noqa: E402

FULL = {"chat_seconds": 60.0, "m2q": 20, "each": 15, "raw": 900, "raw_single": 200, "accounts": "100,500,1000",
        "settle": 30.0, "window": 20.0}  # fmt: skip
QUICK = {"chat_seconds": 25.0, "m2q": 10, "each": 15, "raw": 450, "raw_single": 100, "accounts": "100,1000",
         "settle": 20.0, "window": 12.0}  # fmt: skip


def say(text: str) -> None:
    print(text, flush=True)


def git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def describe(args: argparse.Namespace, started: float, quick: bool) -> str:
    commit = args.commit or git("rev-parse", "--short=7", "HEAD") or "unknown commit"
    dirty = git("status", "--porcelain", "--", "qqbridge") if not args.commit else ""
    changed = f" plus uncommitted changes in {len(dirty.splitlines())} file(s) of qqbridge/" if dirty else ""
    try:
        from synapse import __version__ as synapse_version
    except ImportError:
        synapse_version = "?"
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())  # fmt: skip
    load = os.getloadavg()
    return (
        f"commit {commit}{changed}, {time.strftime('%Y-%m-%d', time.gmtime())}; {os.cpu_count()} cores ({cpu}), "
        f"Python {platform.python_version()}, Synapse {synapse_version.split(' ')[0]}; "
        f"{'a --quick run' if quick else 'a full run'} of {(time.monotonic() - started) / 60:.1f} minutes; "
        f"load average {load[0]:.1f} at the end (other work on the machine makes every number worse)"
    )


PHASES = ("chat", "m2q", "burst", "idle")
KEPT = "<!-- kept by bench/run_all.py -->"  # from this line on, the page is written by hand and kept


async def measure(run: Run, plan: dict[str, Any], accounts: list[int], only: set[str]) -> None:
    t = time.monotonic()
    say("setting up the Matrix users and their QQ logins ...")
    await run.setup()
    say(f"  done in {time.monotonic() - t:.0f} s")
    phases = [
        ("active chats", "chat", lambda: run.active_chat(plan["chat_seconds"])),
        ("Matrix -> QQ", "m2q", lambda: run.matrix_to_qq(plan["m2q"])),
        ("burst", "burst", lambda: run.burst(plan["each"], plan["raw"], plan["raw_single"])),
        *[(f"{n} accounts", "idle", lambda n=n: run.idle(n, plan["settle"], plan["window"])) for n in accounts],
    ]
    for name, key, phase in phases:
        if key not in only:
            continue
        t = time.monotonic()
        say(f"{name} ...")
        try:
            await phase()
        except BenchFailure as exc:
            run.results.notes.append(f"{name}: FAILED: {exc}")
            say(f"  FAILED: {exc}")
            if key == "chat" and "m2q" in only:
                raise
            continue
        say(f"  done in {time.monotonic() - t:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter windows, 100 and 1,000 accounts only")
    parser.add_argument("--out", default=str(ROOT / "docs" / "performance.md"), help="where the table goes")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--json", help="also write the raw results there")
    parser.add_argument("--chats", type=int, default=16, help="chat owners, each with a friend writing (16)")
    parser.add_argument("--accounts", help="logged-in account counts to measure idle (100,500,1000)")
    parser.add_argument("--commit", help="the commit to name as measured (default: git's HEAD here)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, databases)")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"which to run (default all: {','.join(PHASES)}; "
                        "m2q needs chat)")  # fmt: skip
    args = parser.parse_args()
    only = {p.strip() for p in args.phases.split(",") if p.strip()}
    if not only <= set(PHASES) or ("m2q" in only and "chat" not in only):
        parser.error(f"--phases: some of {', '.join(PHASES)}; m2q only with chat")
    plan = dict(QUICK if args.quick else FULL)
    accounts = sorted({int(n) for n in (args.accounts or plan["accounts"]).split(",") if n.strip()})
    if not 1 <= args.chats <= 100 or any(n < args.chats + 1 for n in accounts):
        parser.error(f"--chats 1..100; every --accounts count at least chats + 1 ({args.chats + 1})")

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="qqbridge-perf-"))
    say(f"work directory {work}")
    parts: dict[str, Any] = {}
    holder: dict[str, Run] = {}
    interrupted: list[int] = []

    async def everything() -> None:
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda sig=sig: (interrupted.append(sig), task.cancel()))
        stack = await start_stack(work, args.chats, max(accounts), parts)
        say(f"stack up in {time.monotonic() - started:.0f} s")
        run = holder["run"] = Run(stack, args.chats, args.quick, say)
        try:
            await measure(run, plan, accounts, only)
        finally:
            await run.close()
            await stack.http.aclose()
            if stack.tap is not None:
                await stack.tap.close()

    code = 0
    try:
        asyncio.run(everything())
    except BaseException as exc:  # noqa: BLE001 - everything is stopped below, whatever it was
        if interrupted or isinstance(exc, KeyboardInterrupt):
            say("interrupted: stopping everything")
            code = 130
        else:
            say(f"FAILED: {type(exc).__name__}: {exc}")
            code = 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        stop_stack(parts)
    run = holder.get("run")
    if run is None or code == 130:
        say(f"logs: {work}")
        return code or 1
    if any("FAILED" in note for note in run.results.notes):
        code = 1
    text = markdown(run.results, {"what": describe(args, started, args.quick)})
    print()
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(run.results), indent=1, default=str))
    if not args.no_write and only == set(PHASES):
        out = Path(args.out)
        before = out.read_text(encoding="utf-8") if out.exists() else ""
        if KEPT in before:  # the notes written by hand stay
            text += "\n" + before[before.index(KEPT) :]
        out.write_text(text, encoding="utf-8")
        say(f"written to {args.out}")
    if code == 0 and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        say(f"work directory kept: {work}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
