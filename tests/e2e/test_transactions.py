"""The appservice endpoint as the homeserver meets it: authentication, idempotent
transactions (also across a restart), the query endpoints and unknown routes."""

from __future__ import annotations

import httpx

from tests.e2e.test_control_room import command, control_room


def put_txn(stack, txn_id: str, events: list[dict], token: str | None = "hs", how: str = "header") -> httpx.Response:
    token = stack.hs_token if token == "hs" else token
    headers = {"Authorization": f"Bearer {token}"} if token and how == "header" else {}
    params = {"access_token": token} if token and how == "query" else {}
    return httpx.put(f"{stack.bridge_url}/_matrix/app/v1/transactions/{txn_id}", json={"events": events},
                     headers=headers, params=params)  # fmt: skip


def ping_event(room: str, sender: str, event_id: str) -> dict:
    return {"event_id": event_id, "type": "m.room.message", "room_id": room, "sender": sender,
            "origin_server_ts": 1, "content": {"msgtype": "m.text", "body": "ping"}}  # fmt: skip


async def test_missing_or_wrong_token_is_refused_and_nothing_runs(stack, user) -> None:
    alice = await user("alice")
    room = await control_room(alice, stack)
    event = ping_event(room, alice.mxid, "$forged-1")
    missing = put_txn(stack, "auth-1", [event], token=None)
    assert missing.status_code == 401 and missing.json()["errcode"] in ("M_MISSING_TOKEN", "M_UNAUTHORIZED")
    wrong = put_txn(stack, "auth-2", [event], token="not-the-hs-token")
    assert wrong.status_code == 403 and wrong.json()["errcode"] == "M_FORBIDDEN"
    wrong_query = put_txn(stack, "auth-3", [event], token="not-the-hs-token", how="query")
    assert wrong_query.status_code == 403
    # The forged ping was never stored: the only answer alice gets is to her own ping.
    await command(alice, room, "ping", "QQ:", stack)
    assert await alice.count_of(room, "QQ:") == 1


async def test_a_repeated_transaction_does_nothing_even_after_a_restart(stack, user) -> None:
    alice = await user("alice")
    room = await control_room(alice, stack)
    ping = [ping_event(room, alice.mxid, "$idem-a")]
    assert put_txn(stack, "idem-1", ping).status_code == 200
    await alice.wait_for_text(room, "QQ:", sender=stack.bot)
    repeats_before = stack.bridge.log().count("repeat=True txn_id=idem-1")
    assert put_txn(stack, "idem-1", ping).status_code == 200  # the homeserver's retry
    stack.restart_bridge()
    assert put_txn(stack, "idem-1", ping, how="query").status_code == 200  # and after a restart
    await command(alice, room, "help", "ping", stack)  # the bridge is alive and has handled its inbox
    assert await alice.count_of(room, "QQ:") == 1
    assert stack.bridge.log().count("repeat=True txn_id=idem-1") == repeats_before + 2  # both seen as repeats


async def test_a_restarted_homeserver_reusing_transaction_ids_is_still_heard(stack, user) -> None:
    """Synapse on SQLite numbers transactions from 1 again after a restart: the same id
    with new events is a new transaction."""
    alice = await user("alice")
    room = await control_room(alice, stack)
    assert put_txn(stack, "reused-1", [ping_event(room, alice.mxid, "$reused-a")]).status_code == 200
    await alice.wait_for_text(room, "QQ:", sender=stack.bot)
    assert put_txn(stack, "reused-1", [ping_event(room, alice.mxid, "$reused-b")]).status_code == 200
    await alice.wait_for(lambda: sum("QQ:" in t for t in alice.texts(room, stack.bot)) == 2, what="a second answer")


def test_malformed_transactions_are_refused(stack) -> None:
    url = f"{stack.bridge_url}/_matrix/app/v1/transactions/bad-1"
    auth = {"Authorization": f"Bearer {stack.hs_token}"}
    assert httpx.put(url, content=b"{not json", headers=auth).json()["errcode"] == "M_NOT_JSON"
    no_events = httpx.put(url, json={"nope": []}, headers=auth)
    assert no_events.status_code == 400 and no_events.json()["errcode"] == "M_BAD_JSON"
    # Nothing of that was recorded: the id is still fresh and takes a good transaction.
    assert httpx.put(url, json={"events": []}, headers=auth).status_code == 200
    # An event without its ids is set aside, not refused: a 4xx or 5xx would make the
    # homeserver retry the whole transaction for ever (tests/e2e/test_hostile_matrix.py).
    half_event = httpx.put(f"{url}-half", json={"events": [{"type": "m.room.message"}]}, headers=auth)
    assert half_event.status_code == 200


def test_queries_ping_and_unknown_routes(stack) -> None:
    auth = {"Authorization": f"Bearer {stack.hs_token}"}
    base = f"{stack.bridge_url}/_matrix/app/v1"
    assert httpx.get(f"{base}/users/@_qq_10002:localhost", headers=auth).status_code == 200
    assert httpx.get(f"{base}/users/@qqbridge:localhost", headers=auth).status_code == 200
    assert httpx.get(f"{base}/users/@someone:localhost", headers=auth).status_code == 404
    assert httpx.get(f"{base}/users/@_qq_12:localhost", headers=auth).status_code == 404  # not a QQ number
    assert httpx.get(f"{base}/rooms/%23anything:localhost", headers=auth).status_code == 404
    assert httpx.post(f"{base}/ping", json={"transaction_id": "t"}, headers=auth).json() == {}
    unknown = httpx.get(f"{base}/nothing/here", headers=auth)
    assert unknown.status_code == 404 and unknown.json()["errcode"] == "M_UNRECOGNIZED"
    assert httpx.get(f"{base}/users/@_qq_10002:localhost").status_code == 401


def test_the_homeserver_reaches_the_bridge(stack) -> None:
    """Synapse's own appservice ping (spec v1.7) goes through the registration's URL."""
    answer = httpx.post(
        f"{stack.synapse.base_url}/_matrix/client/v1/appservice/qqbridge/ping",
        json={"transaction_id": "e2e"}, headers={"Authorization": f"Bearer {stack.as_token}"},
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert "duration_ms" in answer.json()
