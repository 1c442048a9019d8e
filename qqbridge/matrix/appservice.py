"""The application service endpoint the homeserver calls (Matrix AS API v1).

    homeserver ──PUT /_matrix/app/v1/transactions/{txnId}──▶ check hs_token
        ──▶ store.record_transaction (txn id + events, atomically; a repeat stores nothing)
        ──▶ 200 {} ──▶ wake the bridge, which handles the stored events in order

A transaction is answered 200 only once its events are durably stored; a store
failure answers 500 so the homeserver retries. That is the *only* 5xx: an event the
bridge cannot use (a NUL in its type, content that is not an object, a timestamp past
64 bits, NaN...) is set aside with a log line and the rest of the transaction is
taken, because the homeserver retries a refused transaction forever and every later
event, anyone's, would wait behind it. Authentication is checked before anything
else and compared in constant time. The query endpoints (`users`, `rooms`) answer
from what the bridge knows, never waiting on QQ.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog
from aiohttp import web

from qqbridge.store.checks import inbox_event
from qqbridge.store.errors import InvalidValueError

log = structlog.get_logger(__name__)

PREFIX = "/_matrix/app/v1"


class TransactionStore(Protocol):
    async def record_transaction(self, txn_id: str, events: list[dict[str, Any]]) -> bool: ...


def matrix_error(status: int, errcode: str, message: str) -> web.Response:
    return web.json_response({"errcode": errcode, "error": message}, status=status)


class AppserviceEndpoint:
    def __init__(
        self,
        hs_token: str,
        store: TransactionStore,
        *,
        on_stored: Callable[[], None],
        user_exists: Callable[[str], Awaitable[bool]],
        on_rejected: Callable[[], None] = lambda: None,
        before_storing: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    ) -> None:
        """`before_storing`: given the whole transaction before its events are stored
        (end-to-bridge encryption takes its to-device events and key counts there);
        if it raises, the transaction is answered 500 and comes again."""
        self._hs_token = hs_token.encode()
        self._store = store
        self._on_stored = on_stored
        self._user_exists = user_exists
        self._on_rejected = on_rejected
        self._before_storing = before_storing
        self.app = web.Application(middlewares=[self._errors, self._authenticate], client_max_size=16 * 1024**2)
        self.app.router.add_put(PREFIX + "/transactions/{txn_id}", self._transaction)
        self.app.router.add_get(PREFIX + "/users/{user_id}", self._user)
        self.app.router.add_get(PREFIX + "/rooms/{alias}", self._room)
        self.app.router.add_post(PREFIX + "/ping", self._ping)

    # ---- middlewares -------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return matrix_error(404, "M_UNRECOGNIZED", "unrecognized request")
        except web.HTTPMethodNotAllowed:
            return matrix_error(405, "M_UNRECOGNIZED", "method not allowed here")

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith("/_matrix/app/"):
            return await handler(request)  # health and metrics are public
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else request.query.get("access_token")
        if not token:
            return matrix_error(401, "M_MISSING_TOKEN", "missing access token")
        # aiohttp hands non-UTF-8 header bytes over as surrogates: compare them as bytes.
        if not hmac.compare_digest(token.encode("utf-8", "surrogateescape"), self._hs_token):
            log.warning("homeserver request with a wrong hs_token", path=request.path, remote=request.remote)
            return matrix_error(403, "M_FORBIDDEN", "bad access token")
        return await handler(request)

    # ---- routes ------------------------------------------------------------------------

    async def _transaction(self, request: web.Request) -> web.Response:
        txn_id = request.match_info["txn_id"]
        try:
            body = json.loads(await request.read())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            return matrix_error(400, "M_NOT_JSON", "the transaction body is not JSON")
        events = body.get("events") if isinstance(body, dict) else None
        if not isinstance(events, list):
            return matrix_error(400, "M_BAD_JSON", "the transaction has no 'events' list")
        usable = self._usable(txn_id, events)
        try:
            if self._before_storing is not None:
                await self._before_storing(body)
            fresh = await self._store.record_transaction(txn_id, usable)
        except InvalidValueError as exc:  # the transaction id itself (a NUL in the path)
            return matrix_error(400, "M_INVALID_PARAM", str(exc)[:200])
        except Exception:
            log.exception("could not store a transaction; the homeserver will retry", txn_id=txn_id)
            return matrix_error(500, "M_UNKNOWN", "could not store the transaction; retry")
        log.debug("transaction", txn_id=txn_id, events=len(events), repeat=not fresh)
        if fresh:
            self._on_stored()
        return web.json_response({})

    def _usable(self, txn_id: str, events: list[Any]) -> list[dict[str, Any]]:
        """The events the store can keep; the others are logged and left out."""
        usable = []
        for index, event in enumerate(events):
            try:
                inbox_event(txn_id, index, event)
            except InvalidValueError as exc:
                log.warning("set aside an event the bridge cannot use", txn_id=txn_id, index=index,
                            event_id=_clip(event.get("event_id") if isinstance(event, dict) else None), why=str(exc)[:200])  # fmt: skip
                self._on_rejected()
                continue
            usable.append(event)
        return usable

    async def _user(self, request: web.Request) -> web.Response:
        if await self._user_exists(request.match_info["user_id"]):
            return web.json_response({})
        return matrix_error(404, "M_NOT_FOUND", "no such user here")

    async def _room(self, request: web.Request) -> web.Response:
        return matrix_error(404, "M_NOT_FOUND", "this bridge keeps no room aliases")

    async def _ping(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read() or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            return matrix_error(400, "M_NOT_JSON", "the ping body is not JSON")
        log.info("pinged by the homeserver", transaction_id=body.get("transaction_id") if isinstance(body, dict) else None)
        return web.json_response({})


def _clip(value: Any) -> str:
    """A value from outside, safe and short for a log line."""
    return repr(value)[:80]
