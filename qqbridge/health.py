"""`/health`, `/ready` and `/metrics`, served beside the appservice endpoint (public: no
token; they reveal counts, never content).

- `/health`: the process answers (for a container HEALTHCHECK or a restart policy).
- `/ready`: the bridge has started, its database answers and the homeserver is not
  known to be down (`matrix.homeserver_health`); 503 with the reasons otherwise (for a
  load balancer or an orchestrator's readiness probe).
- `/metrics`: Prometheus text format (`qqbridge.metrics`).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from qqbridge.matrix.homeserver_health import HomeserverHealth
from qqbridge.metrics import CONTENT_TYPE, Metrics


def add_routes(
    app: web.Application, bridge: Any, store: Any, metrics: Metrics, *, homeserver: HomeserverHealth | None = None
) -> None:
    """`homeserver`: the watcher whose outage makes the bridge not ready."""

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(request: web.Request) -> web.Response:
        problems = []
        if not bridge.started:
            problems.append("the bridge is still starting")
        try:
            await store.inbox.count_pending()
        except Exception as exc:  # whatever the database says, it is not ready
            problems.append(f"the database does not answer: {type(exc).__name__}")
        if homeserver is not None and (problem := homeserver.problem()):
            problems.append(problem)
        status = 503 if problems else 200
        return web.json_response({"ready": not problems, "problems": problems}, status=status)

    async def prometheus(request: web.Request) -> web.Response:
        body = await metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", prometheus)
