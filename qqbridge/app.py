"""The composition root: `qqbridge run` builds every part from the config, wires them
together, serves the appservice endpoint and runs until SIGTERM or SIGINT.

The start checks what is local before what is not, so that a mistake here is told at
once rather than after the homeserver answers:

    1. the config           (`load_config`, before this module: exit status 2)
    2. the database         opens and migrates
    3. the appservice port  is free and bound
    4. the homeserver       answers (waited for, interruptibly: it may come up later),
                            knows the as_token as the bridge bot, and reaches the bridge
                            with the right hs_token (the appservice ping)

A failure of 2-4 ends the run at once with one log line (the log is stderr),
`cannot start: <the problem>`, and exit status 1: under systemd a failed unit, not a
silent hang. A homeserver that does not answer yet is no failure: it is waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import secrets
import signal
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import quote

import structlog
import uvloop
from aiohttp import web
from nio import Api

from qqbridge import health
from qqbridge import log as logsetup
from qqbridge.bridge.contacts.avatars import HomeserverMedia
from qqbridge.bridge.core import Bridge
from qqbridge.config import Config
from qqbridge.matrix.api import HomeserverAPI, MatrixError
from qqbridge.matrix.appservice import AppserviceEndpoint
from qqbridge.matrix.encryption import Encryption
from qqbridge.matrix.http_limits import ConnectionGuard, HttpLimits, fit_to_open_file_limit
from qqbridge.metrics import Metrics
from qqbridge.qq import QQClient
from qqbridge.qq.pool import QQConnections
from qqbridge.store import Store, StoreError

log = structlog.get_logger(__name__)

SHUTDOWN_SECONDS = 10
PROBE_SECONDS = 1.0  # while the homeserver does not answer at start: one probe a second
PROBE_TIMEOUT = 10.0  # one probe (or the appservice ping) that takes longer counts as no answer
WAITING_LOG_SECONDS = 60.0  # how often "still waiting for the homeserver" is logged
START_FAILED = 1

_REGISTRATION_FIX = ("give the homeserver the registration made from this config (`qqbridge generate-registration`; "
                     "app_service_config_files in Synapse) and restart it")  # fmt: skip


class StartError(Exception):
    """The bridge cannot start, for a reason that waiting will not cure; the message
    names the problem and its fix in one line."""


async def serve(config: Config, stop: asyncio.Event) -> None:
    async with contextlib.AsyncExitStack() as cleanup:  # undone in reverse order
        store = await open_store(config)
        cleanup.push_async_callback(store.close)
        matrix = HomeserverAPI(config.homeserver.url, config.appservice.as_token, config.bot_mxid)
        cleanup.push_async_callback(matrix.close)

        connections = qq_connections(config)
        cleanup.push_async_callback(connections.aclose)  # after the bridge has stopped its accounts
        qq_for = qq_factory(config, connections)

        metrics = Metrics()
        media = HomeserverMedia(matrix, config.homeserver.url, config.appservice.as_token)
        encryption = None
        if config.encryption.allow:
            encryption = Encryption(matrix, store.crypto, ours=config.is_bridge_user, key_wait=config.encryption.key_wait)
            matrix.encrypt_with(encryption)
        bridge = Bridge(config, store, matrix, qq_for, metrics, homeserver=matrix.health, media=media,
                        encryption=encryption)  # fmt: skip
        endpoint = AppserviceEndpoint(
            config.appservice.hs_token, store.inbox, on_stored=bridge.wake, user_exists=bridge.user_exists,
            on_rejected=metrics.failures.labels("matrix_bad_event").inc,
            before_storing=encryption.receive if encryption is not None else None,
        )
        health.add_routes(endpoint.app, bridge, store, metrics, homeserver=matrix.health)
        guard = ConnectionGuard(http_limits(config))
        guard.install(endpoint.app)
        runner = web.AppRunner(endpoint.app, access_log=None, handle_signals=False,
                               keepalive_timeout=config.appservice.idle_timeout)  # fmt: skip
        await runner.setup()
        cleanup.callback(guard.close_all)
        cleanup.push_async_callback(runner.cleanup)
        await listen(guard, runner, config)
        cleanup.callback(guard.stop_listening)

        if not await _unless_stopped(check_homeserver(config), stop):
            log.info("shutting down before the bridge was up")
            return
        cleanup.push_async_callback(_stop_bridge, bridge)
        if not await _unless_stopped(bridge.start(), stop):  # the homeserver went away again
            log.info("shutting down before the bridge was up")
            return
        try:
            await matrix.set_displayname(config.bot_mxid, config.appservice.bot_displayname)
        except MatrixError as exc:
            log.warning("could not set the bot's display name", error=str(exc))
        log.info("qqbridge ready", listen=f"{config.appservice.host}:{config.appservice.port}",
                 homeserver=config.homeserver.url, bot=config.bot_mxid)  # fmt: skip
        await stop.wait()
        log.info("shutting down")


def qq_connections(config: Config) -> QQConnections:
    """The one HTTP client pool every QQ account shares (closed at shutdown)."""
    return QQConnections(max_connections=config.qq.max_connections)


def qq_factory(config: Config, connections: QQConnections) -> Callable[[int], QQClient]:
    """A QQClient for a UIN, borrowing the shared pool: kilobytes an account."""
    http = connections.client(config.qq.local_address)

    def qq_for(uin: int) -> QQClient:
        return QQClient(config.qq.server_url, uin, timeout=config.qq.timeout, http=http)

    return qq_for


async def _unless_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Await `work` unless `stop` is set first: then cancel it and return False. Its
    exception, if it fails, is raised."""
    task = asyncio.create_task(work)
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        return False
    task.result()
    return True


async def _stop_bridge(bridge: Bridge) -> None:
    try:
        await asyncio.wait_for(bridge.stop(), SHUTDOWN_SECONDS)
    except TimeoutError:
        log.warning("shutdown took too long; leaving the rest")


async def open_store(config: Config) -> Store:
    try:
        return await Store.open(config.database.url)
    except StoreError as exc:
        raise StartError(f"database: {exc} (database.url)") from None


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def listen(guard: ConnectionGuard, runner: web.AppRunner, config: Config) -> None:
    host, port = config.appservice.host, config.appservice.port
    where = _address(host, port)
    try:
        await guard.listen(runner.server, host, port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            problem = (f"port {where} is already in use: another process listens there (another qqbridge?); "
                       "stop it or choose another appservice.port")  # fmt: skip
        elif exc.errno == errno.EADDRNOTAVAIL:
            problem = f"cannot listen on {where}: no interface of this machine has that address (appservice.host)"
        elif exc.errno == errno.EACCES:
            problem = f"cannot listen on {where}: permission denied (a port below 1024 needs privileges)"
        else:
            reason = exc.strerror or str(exc) or type(exc).__name__
            problem = f"cannot listen on {where}: {reason} (appservice.host/port)"
        raise StartError(problem) from None


async def check_homeserver(config: Config) -> None:
    """Wait until the homeserver answers (one probe a second), then make sure that it
    knows the bridge: the as_token belongs to the bridge bot, and the homeserver's own
    call to the bridge (the appservice ping) is taken. A refusal raises `StartError`."""
    url = config.homeserver.url
    api = HomeserverAPI(url, config.appservice.as_token, config.bot_mxid, max_attempts=1)
    loop = asyncio.get_running_loop()
    try:
        waiting_since: float | None = None
        logged = float("-inf")
        while True:
            method, path = Api.whoami("-")
            try:
                answer = await asyncio.wait_for(api.request(method, path, what="whoami"), PROBE_TIMEOUT)
                break
            except TimeoutError:
                error = f"no answer within {PROBE_TIMEOUT:g} s"
            except MatrixError as exc:
                if exc.status not in (0, 429) and exc.status < 500:
                    raise StartError(_refused(config, exc)) from None
                error = str(exc)
            now = loop.time()
            waiting_since = now if waiting_since is None else waiting_since
            if now - logged >= WAITING_LOG_SECONDS:
                log.warning("the homeserver does not answer yet; the bridge keeps trying", homeserver=url,
                            error=error, waited=round(now - waiting_since))  # fmt: skip
                logged = now
            await asyncio.sleep(PROBE_SECONDS)
        if waiting_since is not None:
            log.info("the homeserver answers", homeserver=url, waited=round(loop.time() - waiting_since, 1))
        who = answer.get("user_id")
        if isinstance(who, str) and who != config.bot_mxid:
            raise StartError(f"the homeserver {url} knows the bridge's as_token as {who}, not as the bridge bot "
                             f"{config.bot_mxid}: the registration's sender_localpart or homeserver.domain differs; "
                             + _REGISTRATION_FIX)  # fmt: skip
        await _ping(config, api)
    finally:
        await api.close()


def _refused(config: Config, exc: MatrixError) -> str:
    url = config.homeserver.url
    if exc.status in (401, 403):
        return (f"the homeserver {url} does not know the bridge's as_token (HTTP {exc.status} {exc.errcode}): "
                + _REGISTRATION_FIX)  # fmt: skip
    if exc.status in (404, 405):
        return (f"{url} has no Matrix client API (HTTP {exc.status} {exc.errcode} for whoami): homeserver.url must "
                "be the homeserver's client API address")  # fmt: skip
    return f"the homeserver {url} refused the bridge ({exc}); try `qqbridge doctor -c CONFIG`"


async def _ping(config: Config, api: HomeserverAPI) -> None:
    """The homeserver calls the bridge back (Matrix 1.7): a registration whose hs_token
    or url is wrong would leave the bridge deaf. Only a refusal by the bridge stops the
    start; a homeserver that cannot reach it yet, or predates the ping, is logged."""
    path = f"/_matrix/client/v1/appservice/{quote(config.appservice.id, safe='')}/ping"
    body = {"transaction_id": f"qqbridge-start-{secrets.token_hex(4)}"}
    try:
        answer = await asyncio.wait_for(api.request("POST", path, body, what="appservice ping"), PROBE_TIMEOUT)
    except TimeoutError:
        log.warning("the homeserver did not answer the appservice ping in time", seconds=PROBE_TIMEOUT)
        return
    except MatrixError as exc:
        if exc.errcode == "M_BAD_STATUS":
            raise StartError(f"the homeserver's call to the bridge was refused ({exc.errcode}): the registration's "
                             "hs_token differs from the config's, or its url leads to another service; "
                             + _REGISTRATION_FIX) from None  # fmt: skip
        hint = {
            "M_CONNECTION_FAILED": "the registration's url must lead to this bridge's appservice.host/port",
            "M_CONNECTION_TIMEOUT": "the registration's url must lead to this bridge's appservice.host/port",
            "M_URL_NOT_SET": "the registration has no url; the homeserver cannot send the bridge any event",
            "M_FORBIDDEN": "appservice.id differs from the registration's id",
        }.get(exc.errcode, "the homeserver may predate the appservice ping (Matrix 1.7)")
        log.warning("the homeserver cannot reach the bridge yet", error=str(exc), hint=hint,
                    appservice=config.appservice.url)  # fmt: skip
        return
    log.info("the homeserver reaches the bridge", appservice=config.appservice.url, ms=answer.get("duration_ms"))


def http_limits(config: Config) -> HttpLimits:
    wanted = config.appservice.max_connections
    cap = fit_to_open_file_limit(wanted)
    if cap < wanted:
        log.warning("the open-file limit allows fewer appservice connections; raise LimitNOFILE",
                    max_connections=wanted, allowed=cap)  # fmt: skip
    section = config.appservice
    return HttpLimits(cap, section.header_timeout, section.idle_timeout, section.body_timeout)


def run(config: Config) -> int:
    """Run until SIGTERM or SIGINT (0); a start that cannot succeed logs one line,
    `cannot start: ...`, and returns 1 (under systemd: a failed unit, restarted)."""
    logsetup.configure(config.logging.format, config.logging.level)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, stop)

    try:
        uvloop.run(main())  # libuv's event loop: a QQ poll costs ~15 % less CPU than on asyncio's
    except StartError as exc:
        log.error(f"cannot start: {exc}")
        return START_FAILED
    except (StoreError, MatrixError) as exc:  # while starting the bridge's parts
        where = "database" if isinstance(exc, StoreError) else "homeserver"
        log.error(f"cannot start: {where}: {exc}")
        return START_FAILED
    return 0
