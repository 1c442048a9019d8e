"""Prometheus metrics of one bridge, in a registry of its own (not the global one, so
tests and several bridges in one process do not mix).

    qqbridge_accounts{state}                    bridged QQ accounts by state (at scrape)
    qqbridge_polls_total{result}                GetMsgEx rounds: ok, error
    qqbridge_messages_total{direction}          messages relayed: qq_to_matrix, matrix_to_qq
    qqbridge_failures_total{kind}               qq_unreachable, qq_refused, matrix_refused, ...
    qqbridge_queue_size{queue}                  waiting work: qq_to_matrix, matrix_to_qq, matrix_inbox
    qqbridge_relay_latency_seconds{direction}   from arrival at the bridge to delivery
    qqbridge_homeserver_up                      1 while the homeserver answers, 0 while it is down
    qqbridge_homeserver_outages_total           times the homeserver went down (probe confirmed)
    qqbridge_homeserver_probes_total{result}    probes of a homeserver thought down: ok, failed
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.accounts = Gauge("qqbridge_accounts", "Bridged QQ accounts by state", ["state"], registry=registry)
        self.polls = Counter("qqbridge_polls", "GetMsgEx polling rounds", ["result"], registry=registry)
        self.messages = Counter("qqbridge_messages", "Messages relayed", ["direction"], registry=registry)
        self.failures = Counter("qqbridge_failures", "Failures by kind", ["kind"], registry=registry)
        self.queue_size = Gauge("qqbridge_queue_size", "Work waiting", ["queue"], registry=registry)
        self.latency = Histogram(
            "qqbridge_relay_latency_seconds", "From arrival at the bridge to delivery", ["direction"],
            buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.homeserver_up = Gauge("qqbridge_homeserver_up", "1 while the homeserver answers, 0 while down",
                                   registry=registry)  # fmt: skip
        self.homeserver_up.set(1)
        self.homeserver_outages = Counter("qqbridge_homeserver_outages", "Times the homeserver went down",
                                          registry=registry)  # fmt: skip
        self.homeserver_probes = Counter("qqbridge_homeserver_probes", "Probes of a homeserver thought down",
                                         ["result"], registry=registry)  # fmt: skip
        for direction in ("qq_to_matrix", "matrix_to_qq"):
            self.messages.labels(direction)  # present at 0 from the start
        for result in ("ok", "error"):
            self.polls.labels(result)
        for result in ("ok", "failed"):
            self.homeserver_probes.labels(result)
        self._refreshers: list[Callable[[], Awaitable[None]]] = []

    def refresh_with(self, refresher: Callable[[], Awaitable[None]]) -> None:
        """Something to run before each scrape (gauges read from the store)."""
        self._refreshers.append(refresher)

    async def render(self) -> bytes:
        for refresher in self._refreshers:
            await refresher()
        return generate_latest(self.registry)
