"""The worker's web API over HTTP (aiohttp's test server on the app factory's real routes; the
Faust app is built but not started, so no broker): status codes, JSON bodies, read-only methods,
headers, and an OpenAPI description that matches the routes exactly."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from app.factory import create_app
from app.settings import Settings
from tests.test_board import alert, score

T0 = 1_700_000_000_000


class Http:
    """One event loop and one test client per test (an aiohttp app binds to its first loop)."""

    def __init__(self, ra: Any) -> None:
        self.ra = ra
        self.loop = asyncio.new_event_loop()
        self.client = TestClient(TestServer(ra.faust_app.web.web_app), loop=self.loop)
        self.loop.run_until_complete(self.client.start_server())

    def call(self, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
        async def go() -> tuple[int, dict[str, str], bytes]:
            resp = await self.client.request(method, path, allow_redirects=False)
            return resp.status, dict(resp.headers), await resp.read()
        return self.loop.run_until_complete(go())

    def get_json(self, path: str) -> tuple[int, Any]:
        status, headers, body = self.call("GET", path)
        assert headers["Content-Type"].startswith("application/json"), headers
        return status, orjson.loads(body)

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


@pytest.fixture
def http(tmp_path) -> Any:
    ra = create_app(Settings(data_dir=str(tmp_path / "data")), "127.0.0.1:9")
    impression = {"type": "impression", "event_time": T0, "advertiser_id": "adv-1",
                  "user_id": "u1", "region": "de", "cost_micros": 1000, "clicked": True,
                  "click_delay_ms": 900, "converted": False, "dwell_ms": 4000,
                  "event_id": "e1", "campaign_id": "c", "ad_id": "ad", "placement": "feed"}
    ra.engine.process(impression, partition=0)  # in memory: the lookup reads the live state
    opened = alert("adv-1", 0, "open", "high", ("ctr_above_baseline",))
    ra.engine.peek_state(0, "adv-1").lifecycle["risk:robust-baseline"] = {
        "severity": "high", "normal_streak": 0, "flagged_windows": 1,
        "opened_alert_id": opened["alert_id"]}
    ra.board.add_score(score("adv-1", 0, 0.97, flagged=True, severity="high"))
    ra.board.add_alert(opened)
    ra.board.add_score(score("board-only", 0, 0.2))
    h = Http(ra)
    yield h
    h.close()


def routes(ra: Any) -> dict[str, set[str]]:
    """path (OpenAPI form) -> methods, from the aiohttp router the worker serves."""
    out: dict[str, set[str]] = {}
    for r in ra.faust_app.web.web_app.router.routes():
        info = r.resource.get_info()
        path = info.get("formatter") or info.get("path") or info.get("prefix")
        if "prefix" in info and "formatter" not in info:
            path = info["prefix"].rstrip("/") + "/{file}"
        path = re.sub(r"\{(\w+):[^}]*\}", r"{\1}", path)
        out.setdefault(path, set()).add(r.method)
    return out


def test_lookup_answers_with_state_board_and_reasons(http) -> None:
    status, doc = http.get_json("/advertisers/adv-1")
    assert status == 200
    assert doc["advertiser_id"] == "adv-1" and doc["sources"] == {"state": True, "board": True}
    assert doc["current_windows"][0]["features"]["clicks"] == 1
    assert doc["latest"]["risk_score"] == pytest.approx(0.97)
    (episode,) = doc["open_alerts"]
    assert episode["reasons"][0]["code"] == "ctr_above_baseline"
    assert doc["served_by"] == "http://127.0.0.1:6066" and doc["worker_ready"] is False


def test_answers_match_their_openapi_schemas(http) -> None:
    import jsonschema

    _status, api = http.get_json("/openapi.json")
    schemas = api["components"]["schemas"]
    _status, doc = http.get_json("/advertisers/adv-1")
    jsonschema.validate(doc, schemas["Advertiser"])
    _status, page = http.get_json("/board/api/top")
    jsonschema.validate(page, schemas["TopPage"])
    _status, err = http.get_json("/advertisers/adv-404")
    jsonschema.validate(err, schemas["Error"])


def test_board_only_advertiser_and_url_encoded_ids(http) -> None:
    status, doc = http.get_json("/advertisers/board%2Donly")
    assert status == 200 and doc["sources"] == {"state": False, "board": True}


def test_unknown_advertiser_is_404_with_a_clear_body(http) -> None:
    status, body = http.get_json("/advertisers/adv-404")
    assert status == 404
    assert body == {"error": "unknown advertiser: no state on its owner and nothing on the "
                             "board", "status": 404, "advertiser_id": "adv-404"}


@pytest.mark.parametrize("raw", ["adv%0A1", "x" * 129, "%09tab", "a%00b"])
def test_bad_advertiser_ids_are_400(http, raw) -> None:
    status, body = http.get_json(f"/advertisers/{raw}")
    assert status == 400 and "printable" in body["error"]


def test_board_api_pages_and_validates_its_parameters(http) -> None:
    status, page = http.get_json("/board/api/top?limit=1")
    assert status == 200 and page["total"] == 2 and len(page["rows"]) == 1
    assert page["rows"][0]["advertiser_id"] == "adv-1"
    status, page = http.get_json("/board/api/top?severity=none")
    assert [r["advertiser_id"] for r in page["rows"]] == ["board-only"]
    for bad in ["limit=ten", "offset=-1", "severity=urgent", "kind=fraud"]:
        status, body = http.get_json(f"/board/api/top?{bad}")
        assert status == 400 and body["error"], bad
    status, feed = http.get_json("/board/api/alerts?after=0")
    assert status == 200 and feed["last_seq"] == 1 and feed["alerts"][0]["kind"] == "click_fraud"
    status, summary = http.get_json("/board/api/summary")
    assert summary["advertisers"] == 2 and "click_fraud" in summary["kinds"]


def test_every_route_is_read_only(http) -> None:
    for path, methods in routes(http.ra).items():
        assert methods <= {"GET", "HEAD"}, (path, methods)
        concrete = path.replace("{advertiser_id}", "adv-1").replace("{file}", "board.css")
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            status, _headers, _body = http.call(method, concrete)
            assert status == 405, (method, concrete, status)


def test_openapi_describes_exactly_the_routes(http) -> None:
    status, doc = http.get_json("/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    served = routes(http.ra)
    assert set(doc["paths"]) == set(served)
    for path, item in doc["paths"].items():
        assert set(item) == {"get"}, path  # HEAD is implied by GET
        assert item["get"]["responses"], path


def test_board_pages_and_static_files(http) -> None:
    status, headers, body = http.call("GET", "/board")
    assert status == 200 and b'id="top-rows"' in body
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    status, _h, body = http.call("GET", "/board/advertiser?id=adv-1")
    assert status == 200 and b'id="open-alerts"' in body
    for name in ("board.js", "advertiser.js", "common.js", "board.css"):
        status, _h, body = http.call("GET", f"/board/static/{name}")
        assert status == 200 and body, name
    status, _h, _b = http.call("GET", "/board/static/../../settings.py")
    assert status in (403, 404)
