"""Health and metrics pages on the worker's web server (Faust's aiohttp, loopback by default).

``/livez``: the event loop answers. ``/readyz``: 200 only once table recovery has finished and no
rebalance is under way (Kubernetes readiness). ``/metrics``: Prometheus text format.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


def is_ready(ra: Any) -> bool:
    app = ra.faust_app
    try:
        recovered = app.tables.recovery.completed.is_set()
    except AttributeError:
        recovered = False
    ready = bool(recovered and not app.rebalancing)
    ra.metrics.ready.set(1 if ready else 0)
    return ready


def register_web(ra: Any) -> None:
    app = ra.faust_app

    @app.page("/livez")
    async def livez(web: Any, request: Any) -> Any:
        return web.json({"status": "alive"})

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        ready = is_ready(ra)
        return web.json({"status": "ready" if ready else "recovering"},
                        status=200 if ready else 503)

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        is_ready(ra)
        return web.bytes(generate_latest(ra.metrics.registry),
                         content_type=CONTENT_TYPE_LATEST.split(";")[0] + "; version=0.0.4")
