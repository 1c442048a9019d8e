"""Calling the homeserver as the bridge bot or as a puppet.

Requests are built by `nio.Api` (method, path, body) and answers parsed by nio's
response classes; what nio lacks for an application service is added here: the
`as_token` in an `Authorization` header (never in a URL, where logs would keep it),
`user_id=` masquerading, registering puppets on first use, and retries: 429 waits
`retry_after_ms`, other 5xx back off exponentially with jitter. Anything else the
homeserver refuses raises `MatrixError` at once.

A homeserver that cannot be reached (refused, reset, timed out, 502/503/504 from a
proxy in front of it) or hangs (no answer for `stall_after` s) is left to one watcher
for the whole bridge, `self.health` (`homeserver_health.HomeserverHealth`): while it is
down no request goes out, only its probe, once a second; each request waits for the
probe's word (within the same budget of `max_attempts` as before) and goes the moment
the homeserver answers, instead of sleeping through its own backoff. A client made with
`max_attempts=1` (the start-up check, which keeps its own once-a-second loop) sends
every call and leaves the watcher out: it has no retries to coordinate.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
import structlog
from nio import Api, RoomCreateResponse, RoomSendResponse

from qqbridge.matrix.homeserver_health import OUTAGE_AFTER, PROBE_INTERVAL, PROBE_TIMEOUT, HomeserverHealth

log = structlog.get_logger(__name__)

_PLACEHOLDER = "-"  # nio's builders insist on a token; ours travels in a header instead
UNREACHABLE = (0, 502, 503, 504)  # no homeserver behind: nothing there, or a proxy says so
STALL_AFTER = 10.0  # a request without an answer this long makes the watcher probe
_VERSIONS = "/_matrix/client/versions"  # the probe: cheap, needs no token


class Sealer(Protocol):
    """What encrypts an event sent into an encrypted room (matrix.encryption.Encryption)."""

    async def seal(
        self, room_id: str, sender: str, event_type: str, content: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]: ...


class MatrixError(Exception):
    """The homeserver refused a request for good (not worth retrying)."""

    def __init__(self, status: int, errcode: str, message: str, what: str) -> None:
        super().__init__(f"{what}: HTTP {status} {errcode}: {message}")
        self.status = status
        self.errcode = errcode


def _masquerade(path: str, user_id: str | None, device_id: str | None = None) -> str:
    parts = urlsplit(path)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "access_token"]
    if user_id:
        query.append(("user_id", user_id))
    if device_id:  # MSC3202: as one of the user's devices (the homeserver checks it exists)
        query.append(("device_id", device_id))
    return urlunsplit(("", "", parts.path, urlencode(query), ""))


class HomeserverAPI:
    def __init__(
        self,
        base_url: str,
        as_token: str,
        bot_mxid: str,
        *,
        max_attempts: int = 8,
        max_backoff: float = 30.0,
        outage_after: float = OUTAGE_AFTER,
        probe_interval: float = PROBE_INTERVAL,
        probe_timeout: float = PROBE_TIMEOUT,
        stall_after: float = STALL_AFTER,
    ) -> None:
        """`outage_after`: seconds down before the outage is logged as a warning (and its
        end); `probe_interval`, `probe_timeout`: the watcher's probe; `stall_after`:
        seconds without an answer before a request makes the watcher probe."""
        self.base_url = base_url.rstrip("/")
        self.bot_mxid = bot_mxid
        self._auth = {"Authorization": f"Bearer {as_token}"}
        self._max_attempts = max_attempts
        self._max_backoff = max_backoff
        self._stall_after = stall_after
        self._watched = max_attempts > 1
        self._session: aiohttp.ClientSession | None = None
        self._probe_session: aiohttp.ClientSession | None = None
        self._registered: set[str] = set()
        self._sealer: Sealer | None = None
        self.health = HomeserverHealth(
            self._probe, outage_after=outage_after, probe_interval=probe_interval, probe_timeout=probe_timeout
        )

    def encrypt_with(self, sealer: Sealer) -> None:
        """From now on, what is sent into an encrypted room is encrypted by `sealer`."""
        self._sealer = sealer

    async def close(self) -> None:
        await self.health.close()
        for session in (self._session, self._probe_session):
            if session is not None:
                await session.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        return self._session

    async def _probe(self) -> None:
        """GET /_matrix/client/versions on a fresh connection (a pooled one may be a dead
        server's); raises unless it answers 200."""
        if self._probe_session is None:
            self._probe_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        async with self._probe_session.get(self.base_url + _VERSIONS) as response:
            await response.read()
            if response.status != 200:
                raise MatrixError(response.status, "M_UNKNOWN", "the probe was not answered with 200", "probe")

    def _stalled(self, since: float) -> None:
        if self._watched:
            self.health.stalled(since)

    async def _once(self, method: str, url: str, data: str | None) -> tuple[int, Any]:
        """One HTTP exchange: (status, parsed JSON), status 0 if nothing answered. A
        request without an answer after `stall_after` s makes the watcher probe."""
        started = time.monotonic()
        stall = asyncio.get_running_loop().call_later(self._stall_after, self._stalled, started)
        try:
            async with self._http().request(
                method, url, data=data, headers={**self._auth, "Content-Type": "application/json"}
            ) as response:
                status = response.status
                try:
                    answer = await response.json(content_type=None)
                except (json.JSONDecodeError, aiohttp.ContentTypeError):
                    answer = {}
        except (TimeoutError, aiohttp.ClientError) as exc:
            status, answer = 0, {"errcode": "M_UNREACHABLE", "error": str(exc) or type(exc).__name__}
        finally:
            stall.cancel()
        if self._watched:
            if status in UNREACHABLE:
                self.health.failed(since=started)
            else:
                self.health.answered()
        return status, answer

    async def request(
        self, method: str, path: str, body: Any = None, *, user_id: str | None = None, device_id: str | None = None,
        what: str = "",
    ) -> dict[str, Any]:
        """One call, retried while the failure is passing; returns the JSON answer."""
        url = self.base_url + _masquerade(path, user_id, device_id)
        data = body if isinstance(body, str) or body is None else json.dumps(body)
        what = what or f"{method} {urlsplit(path).path}"
        delay = 0.5
        for attempt in range(1, self._max_attempts + 1):
            if self.health.answering:
                status, answer = await self._once(method, url, data)
            else:  # known down: only the watcher's probe goes out
                status, answer = 0, {"errcode": "M_UNREACHABLE", "error": "the homeserver does not answer (probing)"}
            if not isinstance(answer, dict):
                answer = {}
            if 200 <= status < 300:
                return answer
            errcode = str(answer.get("errcode", "M_UNKNOWN"))
            message = str(answer.get("error", ""))
            if status == 429 or status >= 500 or status in UNREACHABLE:
                if attempt == self._max_attempts:
                    break
                wait = answer.get("retry_after_ms") if status == 429 else None
                pause = wait / 1000 if isinstance(wait, int) and wait >= 0 else delay * (0.5 + random.random())
                pause = min(pause, self._max_backoff)
                delay = min(delay * 2, self._max_backoff)
                if status in UNREACHABLE:  # the watcher says when to go again; an outage is its to tell
                    log.debug("homeserver unreachable, waiting for it", what=what, status=status, errcode=errcode,
                              error=message, pause=round(pause, 2))  # fmt: skip
                    await self.health.wait_answering(pause)
                else:
                    log.info("homeserver busy, retrying", what=what, status=status, errcode=errcode,
                             pause=round(pause, 2))  # fmt: skip
                    await asyncio.sleep(pause)
                continue
            raise MatrixError(status, errcode, message, what)
        raise MatrixError(status, errcode, message or "gave up after retries", what)

    # ---- users -------------------------------------------------------------------------

    async def ensure_registered(self, mxid: str) -> None:
        """Register a puppet (or the bot) on first use; an existing user is fine."""
        if mxid in self._registered:
            return
        localpart = mxid[1:].split(":", 1)[0]
        body = {"type": "m.login.application_service", "username": localpart, "inhibit_login": True}
        try:
            await self.request("POST", Api._build_path(["register"]), body, what=f"register {mxid}")
        except MatrixError as exc:
            if exc.errcode != "M_USER_IN_USE":
                raise
        self._registered.add(mxid)

    async def whoami(self, user_id: str | None = None) -> str:
        method, path = Api.whoami(_PLACEHOLDER)
        return str((await self.request(method, path, user_id=user_id))["user_id"])

    async def set_displayname(self, user_id: str, name: str) -> None:
        method, path, body = Api.profile_set_displayname(_PLACEHOLDER, user_id, name)
        await self.request(method, path, body, user_id=user_id)

    async def set_presence(self, user_id: str, presence: str, status_msg: str | None = None) -> None:
        method, path, body = Api.set_presence(_PLACEHOLDER, user_id, presence, status_msg)
        await self.request(method, path, body, user_id=user_id)

    # ---- rooms -------------------------------------------------------------------------

    async def create_room(self, *, user_id: str | None = None, **options: Any) -> str:
        method, path, body = Api.room_create(_PLACEHOLDER, **options)
        answer = await self.request(method, path, body, user_id=user_id, what="create room")
        parsed = RoomCreateResponse.from_dict(answer)
        if not isinstance(parsed, RoomCreateResponse):
            raise MatrixError(200, "M_BAD_JSON", "create room answered without a room_id", "create room")
        return str(parsed.room_id)

    async def join(self, room_id: str, *, user_id: str | None = None) -> None:
        method, path = Api.join(_PLACEHOLDER, room_id)
        await self.request(method, path, {}, user_id=user_id, what=f"join {room_id}")

    async def leave(self, room_id: str, *, user_id: str | None = None) -> None:
        method, path = Api.room_leave(_PLACEHOLDER, room_id)
        await self.request(method, path, {}, user_id=user_id, what=f"leave {room_id}")

    async def invite(self, room_id: str, invitee: str, *, user_id: str | None = None) -> None:
        method, path, body = Api.room_invite(_PLACEHOLDER, room_id, invitee)
        await self.request(method, path, body, user_id=user_id, what=f"invite to {room_id}")

    async def send(
        self, room_id: str, content: dict[str, Any], *, txn_id: str, event_type: str = "m.room.message",
        user_id: str | None = None,
    ) -> str:
        """Send an event; the same `txn_id` (per user) returns the same event, never a second one."""
        if self._sealer is not None:
            event_type, content = await self._sealer.seal(room_id, user_id or self.bot_mxid, event_type, content)
        method, path, body = Api.room_send(_PLACEHOLDER, room_id, event_type, content, txn_id)
        answer = await self.request(method, path, body, user_id=user_id, what=f"send to {room_id}")
        parsed = RoomSendResponse.from_dict(answer, room_id)
        if not isinstance(parsed, RoomSendResponse):
            raise MatrixError(200, "M_BAD_JSON", "send answered without an event_id", "send")
        return str(parsed.event_id)

    async def redact(
        self, room_id: str, event_id: str, *, txn_id: str, reason: str | None = None, user_id: str | None = None
    ) -> None:
        method, path, body = Api.room_redact(_PLACEHOLDER, room_id, event_id, txn_id, reason)
        await self.request(method, path, body, user_id=user_id, what=f"redact in {room_id}")

    async def mark_read(self, room_id: str, event_id: str, *, user_id: str | None = None) -> None:
        method, path, body = Api.update_receipt_marker(_PLACEHOLDER, room_id, event_id)
        await self.request(method, path, body, user_id=user_id, what=f"receipt in {room_id}")

    async def put_state(
        self, room_id: str, event_type: str, content: dict[str, Any], state_key: str = "", *, user_id: str | None = None
    ) -> None:
        method, path, body = Api.room_put_state(_PLACEHOLDER, room_id, event_type, content, state_key)
        await self.request(method, path, body, user_id=user_id, what=f"state {event_type} in {room_id}")

    async def get_state(self, room_id: str, event_type: str, state_key: str = "") -> dict[str, Any]:
        """A state event's content, as the bot sees it."""
        method, path = Api.room_get_state_event(_PLACEHOLDER, room_id, event_type, state_key)
        return await self.request(method, path, what=f"state {event_type} of {room_id}")

    async def ping(self, appservice_id: str, transaction_id: str | None = None) -> dict[str, Any]:
        """Ask the homeserver to ping this appservice back (spec v1.7); for `doctor`."""
        body = {"transaction_id": transaction_id} if transaction_id else {}
        path = Api._build_path(["appservice", appservice_id, "ping"], base_path="/_matrix/client/v1")
        return await self.request("POST", path, body, what="appservice ping")
