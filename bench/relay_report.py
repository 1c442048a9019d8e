"""The relay benchmark's results and how they are printed (`bridge_relay.py`)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


from bench.relay_parts import (  # noqa: E402
    OWNER_UIN,
    TIME_SCALE,
    HistogramDelta,
    Samples,
    percentile,
    value,
)


@dataclass
class PhaseResult:
    name: str
    expected: int
    arrived: int
    wall: float  # first send to last arrival
    send_wall: float  # first send to last send
    e2e: list[float]  # seconds, per message
    hist: HistogramDelta
    cpu: dict[str, float]
    failures: dict[str, float]
    notes: list[str] = field(default_factory=list)


def failures_delta(before: Samples, after: Samples) -> dict[str, float]:
    kinds = {dict(labels).get("kind") for (name, labels) in after if name == "qqbridge_failures_total"}
    delta = {
        kind: value(after, "qqbridge_failures_total", kind=kind) - value(before, "qqbridge_failures_total", kind=kind)
        for kind in kinds
        if kind
    }
    delta["poll_errors"] = value(after, "qqbridge_polls_total", result="error") - value(
        before, "qqbridge_polls_total", result="error"
    )
    return {kind: n for kind, n in delta.items() if n}


def compact(numbers: list[int]) -> str:
    """[1, 2, 3, 7, 9, 10] -> '1-3, 7, 9-10' (at most 20 runs)."""
    runs: list[list[int]] = []
    for n in sorted(numbers):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:20])
    return text + (f", ... ({len(runs) - 20} more runs)" if len(runs) > 20 else "")


# ---- report -----------------------------------------------------------------------------


def ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    if math.isinf(seconds):
        return ">300000"
    return f"{seconds * 1e3:.0f}"


def report(
    results: list[PhaseResult],
    bridge_rss: dict[str, int | None],
    cpu_total: dict[str, float],
    elapsed: float,
    args: argparse.Namespace,
) -> None:
    print()
    print(
        f"bridge relay benchmark: {args.friends} QQ friends -> {OWNER_UIN}, sim time scale {TIME_SCALE}, "
        f"bridge poll_fast {args.poll_fast} s / poll_idle {args.poll_idle} s, {os.cpu_count()} CPUs"
    )
    header = (
        f"{'direction':<14}{'arrived':>10}{'wall s':>8}{'msg/s':>8}{'send s':>8}"
        f"{'e2e p50':>9}{'p95':>7}{'p99':>7}{'max':>7}   {'bridge hist p50/p95/p99 (bucket <=)':<36}{'mean':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        rate = r.arrived / r.wall if r.wall and not math.isnan(r.wall) else math.nan
        hist = "/".join(ms(r.hist.quantile_bound(q)) for q in (0.5, 0.95, 0.99))
        print(
            f"{r.name:<14}{f'{r.arrived}/{r.expected}':>10}{r.wall:>8.2f}{rate:>8.0f}{r.send_wall:>8.2f}"
            f"{ms(percentile(r.e2e, 0.5)):>9}{ms(percentile(r.e2e, 0.95)):>7}{ms(percentile(r.e2e, 0.99)):>7}"
            f"{ms(max(r.e2e, default=math.nan)):>7}   {hist + ' ms':<36}{ms(r.hist.mean):>6}"
        )
    print("(wall = first send to last arrival; msg/s = arrived / wall; send s = first to last send. Latencies in ms:")
    print(" e2e = from the sender's send to Synapse's origin_server_ts (QQ -> Matrix) or to the friend's GetMsgEx")
    print(" (Matrix -> QQ), in a burst mostly queueing; bridge hist = qqbridge_relay_latency_seconds, from arrival")
    print(
        " at the bridge to delivery, percentiles as bucket upper bounds, mean exact, n = "
        + ", ".join(f"{r.hist.count:.0f}" for r in results)
        + ")"
    )
    print()
    names = ["bridge", "synapse", "qq-sim", "bench"]
    print(f"{'CPU s (% of a core)':<20}" + "".join(f"{n:>16}" for n in names))
    for r in results:
        print(
            f"{r.name:<20}"
            + "".join(f"{f'{r.cpu.get(n, math.nan):.2f} ({r.cpu.get(n, math.nan) / r.wall:.0%})':>16}" for n in names)
        )
    print(
        f"{'whole run':<20}"
        + "".join(f"{cpu_total.get(n, math.nan):>16.2f}" for n in names)
        + f"   ({elapsed:.1f} s, setup included; bench = this process: nio client and QQ friends)"
    )
    hwm, rss = bridge_rss.get("VmHWM"), bridge_rss.get("VmRSS")
    print(
        f"bridge peak RSS (VmHWM): {hwm / 1024:.1f} MiB (now {rss / 1024:.1f} MiB)"
        if hwm and rss
        else "bridge peak RSS: unknown"
    )
    for r in results:
        for note in r.notes:
            print(f"{r.name}: {note}")
        if r.failures:
            print(f"{r.name}: bridge failures during the phase: {r.failures}")
