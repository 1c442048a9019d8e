"""What an operator watches: /health, /ready and /metrics on the bridge's port."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import received
from tests.e2e.test_control_room import command


def scrape(stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = httpx.get(f"{stack.bridge_url}/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_health_and_ready(stack) -> None:
    assert httpx.get(f"{stack.bridge_url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{stack.bridge_url}/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True, "problems": []}


async def test_metrics_count_relayed_messages_both_ways(stack, bridged, qq) -> None:
    before = scrape(stack)
    dan, room = await bridged("carol4", 10001)
    bob = await qq(10002)
    await bob.send_message(10001, "counted")
    portal = await dan.accept_invite("@_qq_10002:localhost")
    await dan.wait_for_text(portal, "counted", sender="@_qq_10002:localhost")
    await dan.say(portal, "counted too")
    await received(bob, 1)
    await command(dan, room, "ping", "queued: 0 from QQ to Matrix, 0 from Matrix to QQ", stack)
    after = scrape(stack)
    for direction in ("qq_to_matrix", "matrix_to_qq"):
        assert value(after, "qqbridge_messages_total", direction=direction) >= value(
            before, "qqbridge_messages_total", direction=direction) + 1  # fmt: skip
        assert value(after, "qqbridge_relay_latency_seconds_count", direction=direction) >= 1
    assert value(after, "qqbridge_accounts", state="online") >= 1
    assert value(after, "qqbridge_polls_total", result="ok") > value(before, "qqbridge_polls_total", result="ok")
    assert ("qqbridge_queue_size", (("queue", "matrix_to_qq"),)) in after
