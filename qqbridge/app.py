"""The composition root: `qqbridge run` builds every part from the config, wires them
together, serves the appservice endpoint and runs until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal

import structlog
from aiohttp import web

from qqbridge import health
from qqbridge import log as logsetup
from qqbridge.bridge.core import Bridge
from qqbridge.config import Config
from qqbridge.matrix.api import HomeserverAPI, MatrixError
from qqbridge.matrix.appservice import AppserviceEndpoint
from qqbridge.matrix.http_limits import ConnectionGuard, HttpLimits, fit_to_open_file_limit
from qqbridge.metrics import Metrics
from qqbridge.qq import QQClient
from qqbridge.store import Store

log = structlog.get_logger(__name__)

SHUTDOWN_SECONDS = 10


async def serve(config: Config, stop: asyncio.Event) -> None:
    store = await Store.open(config.database.url)
    matrix = HomeserverAPI(config.homeserver.url, config.appservice.as_token, config.bot_mxid)

    def qq_for(uin: int) -> QQClient:
        return QQClient(config.qq.server_url, uin, local_address=config.qq.local_address, timeout=config.qq.timeout)

    metrics = Metrics()
    bridge = Bridge(config, store, matrix, qq_for, metrics)
    endpoint = AppserviceEndpoint(
        config.appservice.hs_token, store, on_stored=bridge.wake, user_exists=bridge.user_exists,
        on_rejected=metrics.failures.labels("matrix_bad_event").inc,
    )
    health.add_routes(endpoint.app, bridge, store, metrics)
    guard = ConnectionGuard(http_limits(config))
    guard.install(endpoint.app)
    runner = web.AppRunner(endpoint.app, access_log=None, handle_signals=False,
                           keepalive_timeout=config.appservice.idle_timeout)  # fmt: skip
    await runner.setup()
    await guard.listen(runner.server, config.appservice.host, config.appservice.port)
    try:
        starting = asyncio.create_task(bridge.start())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # SIGTERM while the homeserver was still out of reach
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            log.info("shutting down before the bridge was up")
            return
        stopping.cancel()
        starting.result()  # a start that failed for good raises here
        try:
            await matrix.set_displayname(config.bot_mxid, config.appservice.bot_displayname)
        except MatrixError as exc:
            log.warning("could not set the bot's display name", error=str(exc))
        log.info("qqbridge ready", listen=f"{config.appservice.host}:{config.appservice.port}",
                 homeserver=config.homeserver.url, bot=config.bot_mxid)  # fmt: skip
        await stop.wait()
        log.info("shutting down")
    finally:
        try:
            await asyncio.wait_for(bridge.stop(), SHUTDOWN_SECONDS)
        except TimeoutError:
            log.warning("shutdown took too long; leaving the rest")
        guard.stop_listening()
        await runner.cleanup()
        guard.close_all()
        await matrix.close()
        await store.close()


def http_limits(config: Config) -> HttpLimits:
    wanted = config.appservice.max_connections
    cap = fit_to_open_file_limit(wanted)
    if cap < wanted:
        log.warning("the open-file limit allows fewer appservice connections; raise LimitNOFILE",
                    max_connections=wanted, allowed=cap)  # fmt: skip
    section = config.appservice
    return HttpLimits(cap, section.header_timeout, section.idle_timeout, section.body_timeout)


def run(config: Config) -> int:
    logsetup.configure(config.logging.format, config.logging.level)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, stop)

    asyncio.run(main())
    return 0
