"""The performance run's results as Markdown: the table of issue 11 with this run's
numbers, how the cost grows with accounts and with message rate, and what 10,000
accounts would need by the same measure (`run_all.py` writes it to docs/performance.md)."""

from __future__ import annotations

import math
from typing import Any

KEEP_ALIVE = 60.0  # HI: a request per account at least this often (seconds)


def ms(seconds: float) -> str:
    if seconds is None or math.isnan(seconds):
        return "–"
    if seconds >= 10:
        return f"{seconds:.1f} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1000:.0f} ms"


def pct(x: float) -> str:
    return "–" if x is None or math.isnan(x) else f"{x * 100:.1f} %"


def mark(ok: bool | None) -> str:
    return "" if ok is None else ("✔" if ok else "✘")


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares y = a + b x; (a, b)."""
    if len(points) < 2:
        return (math.nan, math.nan)
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if not sxx:
        return (math.nan, math.nan)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx
    return my - b * mx, b


def at(idle: list[dict[str, Any]], accounts: int) -> dict[str, Any] | None:
    return next((row for row in idle if row["accounts"] == accounts), None)


def table(results: Any) -> list[str]:
    chat, m2q, burst, idle = results.chat, results.m2q, results.burst, results.idle
    rows: list[tuple[str, str, str, str]] = []
    if chat:
        e2e, own = chat["e2e"], chat["own"]
        rows.append((
            f"QQ → Matrix latency in an active chat ({chat['chats']} chats, each friend writing every 2–5 s; "
            f"n = {e2e['n']})",
            f"p50 {ms(e2e['p50'])}, p90 {ms(e2e['p90'])}, p99 {ms(e2e['p99'])}",
            "p50 ≤ 150 ms, p99 ≤ 500 ms",
            mark(e2e["p50"] <= 0.150 and e2e["p99"] <= 0.500),
        ))  # fmt: skip
        rows.append((
            "… of which the bridge's own part (fetched → event on Synapse)",
            f"p50 {ms(own['p50'])}, p90 {ms(own['p90'])}, p99 {ms(own['p99'])}",
            "keep (5–7 ms)",
            mark(own["p50"] <= 0.010),
        ))  # fmt: skip
    if idle:
        parts = [f"{row['accounts']} accounts: p50 {ms(row['quiet']['p50'])}, max {ms(row['quiet']['max'])}"
                 for row in idle]  # fmt: skip
        small = [row for row in idle if row["accounts"] <= 100]
        quiet_for = min(row["quiet_for"] for row in idle)
        rows.append((
            f"first QQ message after quiet (≥ {quiet_for:.0f} s), one per chat owner "
            f"(n = {idle[0]['quiet']['n']} each)",
            "; ".join(parts),
            "≤ 1 s with up to 100 accounts; the curve for 1,000",
            mark(all(row["quiet"]["max"] <= 1.0 for row in small)) if small else "",
        ))  # fmt: skip
    if m2q:
        lat = m2q["latency"]
        rows.append((
            f"Matrix → QQ, one message (n = {lat['n']}, one every 1.1 s)",
            f"p50 {ms(lat['p50'])}, p90 {ms(lat['p90'])}, max {ms(lat['max'])}",
            "keep (p50 44–66 ms)",
            mark(lat["p50"] <= 0.080),
        ))  # fmt: skip
    if burst:
        rows.append((
            f"QQ → Matrix burst ({burst['messages']} messages from 60 friends to one account)",
            f"{burst['rate']:.0f} msg/s while busy = {pct(burst['ratio'])} of Synapse alone with 16 in flight "
            f"({burst['raw16']:.0f} ev/s: {burst['raw16_before']:.0f} before, {burst['raw16_after']:.0f} after; "
            f"one at a time {burst['raw1']:.0f})",
            "≥ 90 % of what Synapse takes with 16 sends in flight",
            mark(burst["ratio"] >= 0.9),
        ))  # fmt: skip
    if idle:
        rows.append((
            "idle logged-in accounts: memory (bridge RSS)",
            ", ".join(f"{row['rss_mib']:.0f} MiB at {row['accounts']}" for row in idle),
            "≤ 150 MB at 1,000",
            mark(at(idle, 1000)["rss_mib"] * 1.048576 <= 150) if at(idle, 1000) else "",
        ))  # fmt: skip
        rows.append((
            "idle accounts: CPU, requests to QQ",
            ", ".join(f"{pct(row['cpu'])} of a core and {row['requests_per_s']:.1f} req/s at {row['accounts']}"
                      for row in idle),  # fmt: skip
            "≤ 10 % of a core at 1,000",
            mark(at(idle, 1000)["cpu"] <= 0.10) if at(idle, 1000) else "",
        ))  # fmt: skip
        rows.append((
            "start-up until every account polls (the QQ server's busiest second of logins)",
            ", ".join(f"{row['all_poll']:.1f} s for {row['accounts']} ({row['logins_busiest_second']} logins)"
                      for row in idle),  # fmt: skip
            "≤ 10 s for 1,000, without a login storm",
            mark(at(idle, 1000)["all_poll"] <= 10) if at(idle, 1000) else "",
        ))  # fmt: skip
    lines = ["| what | this run | target | met |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return lines


def growth(results: Any) -> list[str]:
    idle, chat, burst = results.idle, results.chat, results.burst
    out: list[str] = []
    if idle:
        out += [
            "### With accounts",
            "",
            "Each row: the bridge restarted with that many logged-in accounts (the chat and burst owners",
            "among them, the rest idle, without friends), talking to QQ through a tap that notes every",
            "request; start-up until every account has sent its first GetMsgEx (and the logins the QQ",
            "server took in its busiest second, and from the first to the last), then, once settled, its",
            "memory, CPU and requests over a window, and one message from each chat friend to an owner",
            "that had been quiet since the restart.",
            "",
            "| accounts | ready | all polled | logins: busiest second, over | RSS (peak) | CPU, % of a core | QQ requests/s (by command) | simulator CPU | first message after quiet: p50, max |",  # noqa: E501
            "| ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |",
        ]
        for row in idle:
            by_cmd = ", ".join(f"{cmd} {rate:.1f}" for cmd, rate in row["requests"].items())
            out.append(
                f"| {row['accounts']:,} | {row['ready']:.1f} s | {row['all_poll']:.1f} s | "
                f"{row['logins_busiest_second']}, {row['login_span']:.1f} s | {row['rss_mib']:.0f} MiB "
                f"({row['hwm_mib']:.0f}) | {pct(row['cpu'])} | {row['requests_per_s']:.1f} ({by_cmd}) | "
                f"{pct(row['sim_cpu'])} | {ms(row['quiet']['p50'])}, {ms(row['quiet']['max'])} |"
            )
        rss_a, rss_b = fit([(row["accounts"], row["rss_mib"]) for row in idle])
        cpu_a, cpu_b = fit([(row["accounts"], row["cpu"]) for row in idle])
        req_a, req_b = fit([(row["accounts"], row["requests_per_s"]) for row in idle])
        up_a, up_b = fit([(row["accounts"], row["all_poll"]) for row in idle])
        out += [
            "",
            f"Fitted over these rows: memory {rss_a:.0f} MiB + {rss_b * 1024:.0f} KiB per account; CPU "
            f"{pct(cpu_a)} + {cpu_b * 100 * 1000:.2f} % of a core per 1,000 accounts; QQ requests "
            f"{req_b * 1000:.1f} a second per 1,000 accounts; start-up {up_b * 1000:.1f} s per 1,000 accounts.",
        ]
        if not math.isnan(rss_b):
            n = 10_000
            big = max(idle, key=lambda row: row["accounts"])
            per_request = big["cpu"] / big["requests_per_s"] if big["requests_per_s"] else math.nan
            keepalive = n / KEEP_ALIVE
            logins_rate = max(row["logins_busiest_second"] for row in idle)
            out += [
                "",
                "### On paper: 10,000 accounts",
                "",
                "From the rows above, as the code measured here stands:",
                "",
                f"- memory ≈ {rss_a + rss_b * n:,.0f} MiB by the fit ({rss_b * 1024:.0f} KiB per account);",
                f"- QQ requests: the protocol's keep-alive alone (a request per account per `HI` = "
                f"{KEEP_ALIVE:.0f} s) is {keepalive:,.0f} a second. The bridge spent {pct(big['cpu'])} of a core on "
                f"{big['requests_per_s']:.0f} requests a second with {big['accounts']:,} accounts, "
                f"{pct(per_request)} per request a second with what else it does counted in: the keep-alive "
                f"would cost ≈ {pct(per_request * keepalive)} of a core, and every 100 requests a second spent "
                f"on faster polls ≈ {pct(per_request * 100)};",
                f"- start-up ≈ {up_a + up_b * n:,.0f} s until every account polls by the fit; logins at the busiest "
                f"rate seen here ({logins_rate} a second) take {n / logins_rate:,.0f} s for 10,000;",
                "- the first message after quiet follows the curve above: as many accounts share the request "
                "budget, each is polled less often.",
            ]
    if chat or burst:
        out += ["", "### With message rate", ""]
        if chat:
            rel = chat["own_relayed"]
            out.append(
                f"- active chats: {chat['rate']:.1f} messages a second from {chat['chats']} chats cost the bridge "
                f"{pct(chat['bridge_cpu'])} of a core and Synapse {pct(chat['synapse_cpu'])} (with "
                f"{chat['polls_per_s']:.1f} polls a second). From the reply stored to Synapse's answer to the "
                f"send: p50 {ms(rel['p50'])}, p99 {ms(rel['p99'])}."
            )
        if burst and burst.get("relayed"):
            per = burst["bridge_cpu_s"] / burst["relayed"] * 1000
            hs = burst["synapse_cpu_s"] / burst["relayed"] * 1000
            out.append(
                f"- the burst: {burst['relayed']} messages relayed in {burst['busy']:.1f} s "
                f"({burst['rate']:.0f} msg/s), {per:.1f} ms of bridge CPU and {hs:.1f} ms of Synapse CPU per message "
                f"(fetching all of them from QQ took {burst['fetch_span']:.1f} s; login to the last one on Synapse "
                f"{burst['login_to_last']:.1f} s). Synapse alone took {burst['raw16']:.0f} events a second with "
                f"16 in flight and {burst['raw16_synapse_cpu'] * 1000:.1f} ms of its CPU per event; "
                f"{burst['raw1']:.0f} one at a time."
            )
            if "busy_synapse_cpu" in burst:
                out.append(
                    f"- while the bridge's burst was busy (first to last event on Synapse), Synapse used "
                    f"{pct(burst['busy_synapse_load'])} of a core, {burst['busy_synapse_cpu'] * 1000:.1f} ms per "
                    f"event, and the bridge {pct(burst['busy_bridge_load'])}."
                )
    return out


def markdown(results: Any, meta: dict[str, str]) -> str:
    lines = [
        "# Performance",
        "",
        "Written by `make bench` (`.venv/bin/python bench/run_all.py`), which starts the QQ simulator at",
        "time scale 1, a real Synapse and the bridge with its default configuration (`poll_fast` 1 s,",
        "`poll_idle` 30 s, SQLite), all on loopback, and measures the table of issue 11 in one run. Run",
        "it again to refresh this page (`--quick` for a shorter run; `--help` for the options).",
        "",
        f"This run: {meta['what']}.",
        "",
        *table(results),
        "",
        "How each row is measured:",
        "",
        "- *latency in an active chat*: from the friend's CLTMSG to the event's `origin_server_ts` on",
        "  Synapse; the first message of each chat (which opens its portal) is left out. *The bridge's own",
        "  part*: from the moment the bridge stored the GetMsgEx reply (`qq_inbound.fetched_at`) to the",
        "  event's `origin_server_ts`.",
        "- *first message after quiet*: the owners have had no message since the bridge restarted; each",
        "  chat friend writes once at a random moment of a window that follows the idle one.",
        "- *Matrix → QQ*: from the Matrix user's send to the friend's GetMsgEx (polled every 5 ms) that",
        "  returned it.",
        "- *burst*: the 60 portals are open first; the owner logs out, the friends write (the simulator",
        "  keeps the messages), the owner logs in again; the rate is from the first to the last event's",
        "  `origin_server_ts`. *Synapse alone*: the same number of messages sent straight to Synapse as the",
        "  puppets into the same rooms, from this process, 16 at a time, just before and just after the",
        "  bridge's burst (their mean is the yardstick), and one at a time.",
        "- *memory, CPU, requests*: the bridge's VmRSS at the end of the idle window, its CPU seconds and",
        "  the requests the QQ server got from it over that window, in which nobody writes (a message makes",
        "  its chat active, polled every 0.1 s for a minute); *start-up*: from starting the process",
        "  until every account has sent a GetMsgEx.",
        "",
        "## How the cost grows",
        "",
        *growth(results),
    ]
    if results.notes:
        lines += ["", "## Notes from the run", "", *[f"- {note}" for note in results.notes]]
    return "\n".join(lines) + "\n"
