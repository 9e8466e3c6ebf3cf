"""The worker's web server (Faust's aiohttp, loopback by default): health, metrics, the lookup
API and the risk board. Read-only: every route answers GET (and HEAD); any other method is 405.

``/livez``: the event loop answers. ``/readyz``: 200 only once table recovery has finished and no
rebalance is under way (Kubernetes readiness). ``/metrics``: Prometheus text format.

``/advertisers/{id}``: one advertiser at a glance (``riskstream.lookup``). Any worker answers:
the request is forwarded to the worker that owns the advertiser's partition of the
``advertiser-state`` table (the murmur2 partition of the id, as producers key the inputs; Faust's
assignor says which worker holds it as an active), with a header that stops a second hop if two
workers disagree during a rebalance.

``/board``: the risk board (static files under app/static/board), fed by ``/board/api/*`` from
this worker's view of ``risk-scores`` and ``risk-alerts`` (``agents.board``): the whole platform.
``/openapi.json``: the API description (``agents.openapi``); a test checks every route is in it.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from yarl import URL

from agents.board import register_board
from agents.openapi import openapi_document
from riskstream.backtest import partition_for
from riskstream.board import FILTER_SEVERITIES, KIND_NAMES, BoardFilterError, parse_filter
from riskstream.lookup import BadAdvertiserId, advertiser_lookup, parse_advertiser_id

log = logging.getLogger("riskstream.web")

ROUTED_HEADER = "X-Riskstream-Routed-From"
FORWARD_TIMEOUT = aiohttp.ClientTimeout(total=5.0)
STATIC = Path(str(resources.files("app") / "static" / "board"))
# The board's pages load only their own scripts and styles, and call only this origin.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
JSON_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


def is_ready(ra: Any) -> bool:
    app = ra.faust_app
    try:
        recovered = app.tables.recovery.completed.is_set()
    except AttributeError:
        recovered = False
    ready = bool(recovered and not app.rebalancing)
    ra.metrics.ready.set(1 if ready else 0)
    return ready


def json_response(view: Any, data: Any, status: int = 200) -> Any:
    return view.bytes(orjson.dumps(data), content_type="application/json", status=status,
                      headers=dict(JSON_HEADERS))


def error(view: Any, status: int, message: str, **extra: Any) -> Any:
    return json_response(view, {"error": message, "status": status, **extra}, status)


def _ident(url: Any) -> tuple[str, int]:
    return (url.host or "", int(url.port or 80))


def owner_url(ra: Any, partition: int) -> Any | None:
    """URL of the worker that holds ``partition`` of the ``advertiser-state`` table as an
    active (Faust's assignor hands every member the whole distribution); None while unknown.

    Not ``app.table_route``: it hashes the key as the table's changelog serialises it (JSON,
    with quotes), while our states sit in the partition their events came from, the murmur2
    partition of the raw advertiser id (agents/store.py writes with an explicit partition)."""
    table = ra.state_table
    try:
        topic = table.changelog_topic.get_topic_name()
        for url, topics in ra.faust_app.router.table_metadata(table.name).items():
            if partition in topics.get(topic, ()):
                return URL(url)
    except Exception:  # no assignment yet (not started, first rebalance)
        return None
    return None


async def forward(view: Any, ra: Any, request: Any, dest: Any) -> Any:
    """Answer with the owner's response to the same GET (one hop only)."""
    app = ra.faust_app
    url = request.url.with_host(dest.host).with_port(int(dest.port or 80))
    try:
        async with app.http_client.get(url, headers={ROUTED_HEADER: str(app.conf.canonical_url)},
                                       timeout=FORWARD_TIMEOUT) as resp:
            body = await resp.read()
            return view.bytes(body, content_type=resp.content_type or "application/json",
                              status=resp.status, headers=dict(JSON_HEADERS))
    except Exception as exc:  # owner away (restarting, rebalancing): say so, do not guess
        log.warning("lookup: owner %s unreachable: %s", dest, type(exc).__name__)
        return error(view, 503, "the worker that owns this advertiser did not answer; retry",
                     owner=str(dest))


def register_web(ra: Any) -> None:
    app = ra.faust_app
    engine = ra.engine
    partitions = ra.state_table.partitions or app.conf.topic_partitions
    board = ra.board = register_board(ra)

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

    @app.page("/openapi.json")
    async def openapi(web: Any, request: Any) -> Any:
        return json_response(web, openapi_document())

    def local_lookup(advertiser_id: str) -> tuple[int, Any | None]:
        """The owner's answer. States live under the partition their events came from: the
        murmur2 partition first, then any other partition held here (a producer that used
        another partitioner)."""
        home = partition_for(advertiser_id.encode(), partitions)
        for p in [home] + [q for q in range(partitions) if q != home]:
            state = engine.peek_state(p, advertiser_id)
            if state is not None:
                return p, state
        return home, None

    @app.page(r"/advertisers/{advertiser_id:[\s\S]+}")
    async def advertiser(web: Any, request: Any, advertiser_id: str) -> Any:
        try:
            adv = parse_advertiser_id(advertiser_id)
        except BadAdvertiserId as exc:
            return error(web, 400, f"invalid advertiser id: {exc}")
        if ROUTED_HEADER not in request.headers:
            dest = owner_url(ra, partition_for(adv.encode(), partitions))
            if dest is not None and _ident(dest) != _ident(app.conf.canonical_url):
                return await forward(web, ra, request, dest)
        partition, state = local_lookup(adv)
        doc = advertiser_lookup(adv, partition, state, board,
                                enforce_spec=engine.model_config.enforce,
                                served_by=str(app.conf.canonical_url))
        if doc is None:
            return error(web, 404, "unknown advertiser: no state on its owner and nothing on "
                                   "the board", advertiser_id=adv)
        doc["worker_ready"] = is_ready(ra)
        return json_response(web, doc)

    def filters(request: Any) -> dict[str, Any]:
        q = request.query
        return {"severities": parse_filter(q.get("severity"), FILTER_SEVERITIES, "severity"),
                "kinds": parse_filter(q.get("kind"), KIND_NAMES, "kind")}

    def int_param(request: Any, name: str, default: int) -> int:
        raw = request.query.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise BoardFilterError(f"{name} must be an integer") from None
        if value < 0:
            raise BoardFilterError(f"{name} must not be negative")
        return value

    @app.page("/board/api/top")
    async def board_top(web: Any, request: Any) -> Any:
        try:
            page = board.top(int_param(request, "limit", 25), int_param(request, "offset", 0),
                             **filters(request))
        except BoardFilterError as exc:
            return error(web, 400, str(exc))
        return json_response(web, page)

    @app.page("/board/api/alerts")
    async def board_alerts(web: Any, request: Any) -> Any:
        try:
            feed = board.alerts_after(int_param(request, "after", 0),
                                      int_param(request, "limit", 50), **filters(request))
        except BoardFilterError as exc:
            return error(web, 400, str(exc))
        return json_response(web, feed)

    @app.page("/board/api/summary")
    async def board_summary(web: Any, request: Any) -> Any:
        return json_response(web, {**board.summary(), "severities": FILTER_SEVERITIES,
                                   "kinds": KIND_NAMES, "served_by": str(app.conf.canonical_url)})

    pages = {name: (STATIC / f"{name}.html").read_text() for name in ("index", "advertiser")}

    @app.page("/board")
    async def board_page(web: Any, request: Any) -> Any:
        return web.html(pages["index"], headers=dict(PAGE_HEADERS))

    @app.page("/board/advertiser")
    async def advertiser_page(web: Any, request: Any) -> Any:
        return web.html(pages["advertiser"], headers=dict(PAGE_HEADERS))

    app.web.add_static("/board/static/", STATIC, append_version=False)
