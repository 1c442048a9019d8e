"""Requests per second of the QQ simulator on one core.

Starts `python -m qqbridge qq-sim` in its own process (pinned to one CPU when the
platform allows), with a generated fixture of many accounts, and drives it from a
separate load-generator process (pinned to another CPU) over loopback with raw asyncio
sockets: one TCP connection per request, as the protocol has it, with pre-built request
bytes. The mix is 60% GetMsgEx, 30% List, 10% CLTMSG; senders rotate over all accounts so
no one reaches the CLTMSG rate limit. Bounded by --requests and --seconds.

Prints requests/second, p50/p99 latency, the reply tally and the server's CPU use
(from /proc), so a load-generator-bound run can be told apart from a server-bound one.

    .venv/bin/python bench/sim_rps.py [--accounts 5000] [--requests 40000] [--seconds 20] [--concurrency 64]
                                      [--profile FILE]   # then: python -m pstats FILE
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
FIRST_UIN = 100000
FRIENDS = 8


def write_fixture(path: Path, count: int) -> None:
    accounts = []
    for i in range(count):
        uin = FIRST_UIN + i
        friends = [FIRST_UIN + (i + k) % count for k in range(1, FRIENDS + 1) if (i + k) % count != i]
        accounts.append({"uin": uin, "password": f"pw{uin}", "nick": f"user {uin}", "face": i % 300, "friends": friends})
    path.write_text(yaml.safe_dump({"accounts": accounts}), encoding="utf-8")


def cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return []


def http(body: str) -> bytes:
    data = body.encode()
    return b"POST / HTTP/1.1\r\nHost: qq\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(data), data)


def build_requests(count: int, accounts: int) -> tuple[list[bytes], list[bytes]]:
    logins = [
        http(
            f"VER=1.1&CMD=Login&SEQ=1&UIN={FIRST_UIN + i}"
            f"&PS={hashlib.md5(f'pw{FIRST_UIN + i}'.encode()).hexdigest()}&M5=1&LC=9326B87B234E7235"
        )
        for i in range(accounts)
    ]
    load = []
    for n in range(count):
        uin = FIRST_UIN + n % accounts
        seq = 1000 + n
        kind = n % 10
        if kind < 6:
            body = f"VER=1.1&CMD=GetMsgEx&SEQ={seq}&UIN={uin}"
        elif kind < 9:
            body = f"VER=1.1&CMD=List&SEQ={seq}&UIN={uin}&TN=20&UN=0"
        else:  # each account sends once per 10 x accounts requests: far below 5 per 5 s
            sender = FIRST_UIN + (n // 10) % accounts
            to = FIRST_UIN + (n // 10 + 1) % accounts
            body = f"VER=1.1&CMD=CLTMSG&SEQ={seq}&UIN={sender}&UN={to}&MG=bench%20message%20{n}"
        load.append(http(body))
    return logins, load


class _Exchange(asyncio.Protocol):
    def __init__(self, request: bytes, done: asyncio.Future[bytes]) -> None:
        self.request = request
        self.done = done
        self.chunks: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(b"".join(self.chunks))


async def exchange(port: int, request: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()
    await loop.create_connection(lambda: _Exchange(request, done), "127.0.0.1", port)
    return await done


def result_of(response: bytes) -> str:
    body = response.partition(b"\r\n\r\n")[2]
    for field in body.split(b"&"):
        if field.startswith(b"RES="):
            return field.decode()
    return "NULL" if not body else "no RES"


async def drive(port: int, requests: list[bytes], concurrency: int, seconds: float) -> tuple[list[float], Counter, float]:
    latencies: list[float] = []
    tally: Counter = Counter()
    feed = iter(requests)
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        for request in feed:
            if time.perf_counter() > deadline:
                return
            start = time.perf_counter()
            try:
                response = await exchange(port, request)
            except OSError as exc:
                tally[f"error {exc.__class__.__name__}"] += 1
                continue
            latencies.append(time.perf_counter() - start)
            tally[result_of(response)] += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, tally, time.perf_counter() - start


def load_generator(port: int, args: argparse.Namespace, cpu: int | None, out: multiprocessing.Queue) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    logins, load = build_requests(args.requests, args.accounts)

    async def main() -> None:
        _, login_tally, _ = await drive(port, logins, args.concurrency, 120)
        out.put(("ready", dict(login_tally)))  # the parent samples server CPU from here
        latencies, tally, elapsed = await drive(port, load, args.concurrency, args.seconds)
        out.put(("done", latencies, dict(tally), elapsed))

    asyncio.run(main())


def server_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=5000)
    parser.add_argument("--requests", type=int, default=40000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--profile", metavar="FILE", help="run the server under cProfile, writing FILE")
    args = parser.parse_args()

    available = cpus()
    server_cpu = available[0] if available else None
    load_cpu = available[1] if len(available) > 1 else None

    with tempfile.TemporaryDirectory() as tmp:
        fixture = Path(tmp) / "sim_bench.yaml"
        write_fixture(fixture, args.accounts)
        pin = (lambda: os.sched_setaffinity(0, {server_cpu})) if server_cpu is not None else None
        profile = ["-m", "cProfile", "-o", args.profile] if args.profile else []
        server = subprocess.Popen(
            [sys.executable, *profile, "-m", "qqbridge", "qq-sim", "--fixture", str(fixture), "--port", "0"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=pin,
        )
        try:
            banner = server.stdout.readline().strip()  # type: ignore[union-attr]
            print(banner)
            port = int(banner.split("://", 1)[1].split(" ", 1)[0].rsplit(":", 1)[1])
            queue: multiprocessing.Queue = multiprocessing.Queue()
            generator = multiprocessing.Process(target=load_generator, args=(port, args, load_cpu, queue))
            generator.start()
            _, login_tally = queue.get()
            cpu_before = server_cpu_seconds(server.pid)
            _, latencies, tally, elapsed = queue.get()
            cpu_used = server_cpu_seconds(server.pid) - cpu_before
            generator.join()
        finally:
            server.terminate()
            server.wait(10)

    latencies.sort()
    count = len(latencies)
    if not count:
        print("no requests completed")
        return 1
    print(f"cpus: server on {server_cpu}, load generator on {load_cpu}; {args.accounts} accounts, concurrency {args.concurrency}")
    print(f"logins: {login_tally}")
    print(f"replies: {tally}")
    print(f"{count} requests in {elapsed:.2f} s: {count / elapsed:,.0f} requests/s")
    print(f"latency p50 {latencies[count // 2] * 1e3:.2f} ms, p99 {latencies[int(count * 0.99)] * 1e3:.2f} ms")
    print(
        f"server CPU {cpu_used:.2f} s ({cpu_used / elapsed:.0%} of one core): "
        f"{count / cpu_used:,.0f} requests per server CPU-second"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
