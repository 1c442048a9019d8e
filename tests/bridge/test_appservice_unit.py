"""The transaction endpoint alone, with a fake store: a store failure answers 500 so the
homeserver retries, and nothing runs; 200 comes only after the events are stored."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from qqbridge.matrix.appservice import AppserviceEndpoint

TOKEN = "h" * 32
EVENT = {"event_id": "$e", "type": "m.room.message", "room_id": "!r:x", "sender": "@u:x", "content": {}}


class FlakyStore:
    def __init__(self) -> None:
        self.fail = True
        self.stored: list[tuple[str, list[dict[str, Any]]]] = []

    async def record_transaction(self, txn_id: str, events: list[dict[str, Any]]) -> bool:
        if self.fail:
            raise OSError("disk full")
        self.stored.append((txn_id, events))
        return True


async def test_store_failure_answers_500_and_wakes_nobody() -> None:
    store, woken = FlakyStore(), []
    endpoint = AppserviceEndpoint(TOKEN, store, on_stored=lambda: woken.append(1), user_exists=_no)
    async with TestClient(TestServer(endpoint.app)) as client:
        url = "/_matrix/app/v1/transactions/t1"
        failed = await client.put(url, json={"events": [EVENT]}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert failed.status == 500 and woken == [] and store.stored == []
        store.fail = False  # the homeserver retries the same transaction
        ok = await client.put(url, json={"events": [EVENT]}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status == 200 and woken == [1] and store.stored == [("t1", [EVENT])]


async def _no(mxid: str) -> bool:
    return False
