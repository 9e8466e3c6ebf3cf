"""OpenAPI 3.1 description of the worker's web API, written by hand next to the views
(agents/web.py). tests/test_lookup_web.py fails when a route is missing here or a path here has
no route, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from riskstream.board import FILTER_SEVERITIES, KIND_NAMES, MAX_DEPTH, MAX_PAGE

_ERROR = {"description": "error", "content": {"application/json": {"schema": {
    "$ref": "#/components/schemas/Error"}}}}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _get(summary: str, responses: dict[str, Any], parameters: list | None = None,
         tag: str = "board") -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if parameters:
        op["parameters"] = parameters
    return {"get": op}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema}


_FILTERS = [
    _query("severity", "comma-separated severities (the open alert's, else the latest "
                       "window's; 'none' = nothing flagged)",
           {"type": "string", "examples": ["high,critical"], "x-enum": list(FILTER_SEVERITIES)}),
    _query("kind", "comma-separated incident kinds", {"type": "string",
                                                      "x-enum": list(KIND_NAMES)}),
]
_HTML = {"description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "riskstream worker API",
        "version": "1",
        "description": "Read-only: every route answers GET (and HEAD); other methods get 405. "
                       "Any worker answers any advertiser: lookups are forwarded to the worker "
                       "that owns the advertiser's partition; the board shows every partition.",
    },
    "paths": {
        "/livez": _get("the event loop answers", {"200": _json("alive", {"type": "object"})},
                       tag="health"),
        "/readyz": _get("ready once table recovery finished and no rebalance runs",
                        {"200": _json("ready", {"type": "object"}),
                         "503": _json("recovering", {"type": "object"})}, tag="health"),
        "/metrics": _get("Prometheus metrics", {"200": {
            "description": "Prometheus text format 0.0.4",
            "content": {"text/plain": {"schema": {"type": "string"}}}}}, tag="health"),
        "/openapi.json": _get("this document", {"200": _json("OpenAPI 3.1", {"type": "object"})},
                              tag="meta"),
        "/advertisers/{advertiser_id}": _get(
            "one advertiser: current and recent window features, baseline, latest score and "
            "severity, open alerts with reasons, the model",
            {"200": _json("the advertiser", {"$ref": "#/components/schemas/Advertiser"}),
             "400": _ERROR, "404": _ERROR, "503": _ERROR},
            [{"name": "advertiser_id", "in": "path", "required": True,
              "description": "as in input events: 1-128 printable characters (URL-encoded)",
              "schema": {"type": "string", "minLength": 1, "maxLength": 128}}],
            tag="lookup"),
        "/board": _get("the risk board (HTML)", {"200": _HTML}),
        "/board/advertiser": _get("the lookup page (HTML); ?id=<advertiser_id>", {"200": _HTML},
                                  [_query("id", "advertiser id", {"type": "string"})]),
        "/board/static/{file}": _get("the board's scripts and styles", {"200": {
            "description": "a static file"}, "404": {"description": "no such file"}},
            [{"name": "file", "in": "path", "required": True, "schema": {"type": "string"}}]),
        "/board/api/top": _get(
            "the riskiest advertisers now: open alerts first (by severity), then by the "
            "latest window's risk score; ranking cached ~1 s",
            {"200": _json("one page", {"$ref": "#/components/schemas/TopPage"}),
             "400": _ERROR},
            [_query("limit", f"rows, 1-{MAX_PAGE}", {"type": "integer", "default": 25}),
             _query("offset", f"first row, at most {MAX_DEPTH}",
                    {"type": "integer", "default": 0}), *_FILTERS]),
        "/board/api/alerts": _get(
            "alerts as they arrive, newest first; poll with after=<last_seq>",
            {"200": _json("alerts after a sequence number", {
                "type": "object", "required": ["board", "last_seq", "alerts"],
                "properties": {"board": {"type": "string", "description": "board instance: "
                                         "sequence numbers are only comparable within one"},
                               "last_seq": {"type": "integer"},
                               "alerts": {"type": "array", "items": {"type": "object"}}}}),
             "400": _ERROR},
            [_query("after", "sequence number of the last alert already shown",
                    {"type": "integer", "default": 0}),
             _query("limit", "at most this many (1-500)", {"type": "integer", "default": 50}),
             *_FILTERS]),
        "/board/api/summary": _get(
            "counts by severity, open alerts, known severities and kinds",
            {"200": _json("summary", {"type": "object"})}),
    },
    "components": {"schemas": {
        "Error": {"type": "object", "required": ["error", "status"],
                  "properties": {"error": {"type": "string"}, "status": {"type": "integer"}}},
        "Advertiser": {
            "type": "object",
            "required": ["advertiser_id", "partition", "served_by", "sources", "latest",
                         "current_windows", "recent_windows", "baseline", "model",
                         "open_alerts", "recent_alerts"],
            "properties": {
                "advertiser_id": {"type": "string"},
                "partition": {"type": "integer"},
                "served_by": {"type": "string", "description": "the worker that answered"},
                "sources": {"type": "object", "description": "state: the owner's state was "
                            "found; board: risk-scores/risk-alerts mention it"},
                "severity": {"type": ["string", "null"]},
                "kind": {"type": ["string", "null"], "description": "incident kind: the open "
                         "alert's, else the latest window's rules'"},
                "latest": {"type": ["object", "null"], "description": "latest closed window: "
                           "risk_score, severity, rules, kind, features"},
                "current_windows": {"type": "array", "description": "open windows and their "
                                    "features so far"},
                "recent_windows": {"type": "array", "description": "risk score, severity and "
                                   "key features of recent windows"},
                "baseline": {"type": ["object", "null"], "description": "per feature: value, "
                             "the advertiser's baseline, deviation (sd)"},
                "model": {"type": "object"},
                "open_alerts": {"type": "array", "description": "open episodes with reasons"},
                "recent_alerts": {"type": "array"},
                "enforced_by": {"type": ["string", "null"]},
                "worker_ready": {"type": "boolean"},
            },
        },
        "TopPage": {
            "type": "object", "required": ["total", "advertisers", "offset", "limit", "rows"],
            "properties": {"total": {"type": "integer"}, "advertisers": {"type": "integer"},
                           "offset": {"type": "integer"}, "limit": {"type": "integer"},
                           "max_depth": {"type": "integer"},
                           "rows": {"type": "array", "items": {"type": "object"}}},
        },
    }},
}


def openapi_document() -> dict[str, Any]:
    return OPENAPI
