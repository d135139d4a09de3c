"""The OpenAPI 3 description of the HTTP API, and the Swagger UI page that shows it.

``GET /openapi.json`` serves ``spec(config)``; ``GET /docs`` serves a page of
Swagger UI whose scripts come from the ``swagger-ui-bundle`` package, under
``/docs/static`` (no CDN at run time). A test keeps the spec's paths and
methods equal to the app's routes.
"""

from __future__ import annotations

from typing import Any, Dict

from . import __version__

ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: Any, description: str) -> Dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def spec(config: Any) -> Dict[str, Any]:
    limit = config.limits.max_field_chars
    text = {"type": "string", "minLength": 1, "maxLength": limit}
    event = {
        "type": "object",
        "required": ["topic", "event_id", "timestamp", "source", "payload"],
        "properties": {
            "topic": text, "event_id": text, "source": text,
            "timestamp": {"type": "string", "format": "date-time",
                          "description": "ISO 8601 with a time zone, kept as given"},
            "payload": {"type": "object",
                        "description": f"at most {config.limits.max_payload_bytes} bytes as JSON"},
        },
        "example": {"topic": "user.created", "event_id": "evt-12345",
                    "timestamp": "2025-10-21T14:30:00Z", "source": "auth-service",
                    "payload": {"user_id": 123}},
    }
    stored_event = {"allOf": [{"$ref": "#/components/schemas/Event"}, {
        "type": "object", "properties": {"received_at": {"type": "string", "format": "date-time"}}}]}
    unavailable = {"description": "Not acknowledged; resend after Retry-After (duplicates are dropped)",
                   "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                   "content": {"application/json": {"schema": ERROR}}}
    unauthorized = _json(ERROR, "A bearer token is configured and was not given")
    return {
        "openapi": "3.0.3",
        "info": {"title": "agg", "version": __version__,
                 "description": "Event aggregator with exact, durable dedup by (topic, event_id)."},
        "paths": {
            "/publish": {"post": {
                "summary": "Publish one event or a batch; answered after commit",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "oneOf": [{"$ref": "#/components/schemas/Event"},
                              {"type": "object", "required": ["events"], "properties": {
                                  "events": {"type": "array", "minItems": 1,
                                             "maxItems": config.limits.max_batch_events,
                                             "items": {"$ref": "#/components/schemas/Event"}}}}]}}}},
                "responses": {
                    "200": _json({"type": "object", "properties": {
                        "status": {"type": "string", "enum": ["accepted"]},
                        "received": {"type": "integer"}, "queued": {"type": "integer"},
                        "stored": {"type": "integer"}, "duplicates": {"type": "integer"}}},
                        "Every event is committed (stored now, or a duplicate of a stored one)"),
                    "401": unauthorized,
                    "413": _json(ERROR, f"Body over {config.limits.max_body_bytes} bytes"),
                    "422": _json(ERROR, "Invalid JSON or events; nothing was stored"),
                    "503": unavailable}}},
            "/events": {"get": {
                "summary": "Stored events in processing order",
                "parameters": [
                    {"name": "topic", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {
                        "type": "integer", "minimum": 1, "maximum": config.limits.max_events_page}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string"},
                     "description": "next_cursor of the previous page"}],
                "responses": {
                    "200": _json({"type": "object", "properties": {
                        "count": {"type": "integer"},
                        "events": {"type": "array", "items": stored_event},
                        "next_cursor": {"type": "string"}, "has_more": {"type": "boolean"}}},
                        "Events (all of them, streamed, without limit)"),
                    "400": _json(ERROR, "Bad limit or cursor"), "401": unauthorized,
                    "503": unavailable}}},
            "/stats": {"get": {
                "summary": "Exact counters, from the stats process",
                "responses": {"200": _json({"type": "object", "properties": {
                    "received": {"type": "integer"}, "unique_processed": {"type": "integer"},
                    "duplicate_dropped": {"type": "integer"},
                    "topics": {"type": "array", "items": {"type": "string"}},
                    "inflight_events": {"type": "array", "items": {"type": "integer"},
                                        "description": "per worker: events sent to it by the "
                                                       "front and the ingest, not yet acknowledged"},
                    "uptime": {"type": "number"}}}, "Statistics"),
                    "401": unauthorized, "503": unavailable}}},
            "/health": {"get": {
                "summary": "healthy when every worker is up and writing",
                "responses": {"200": _json({"type": "object"}, "Healthy"),
                              "503": _json({"type": "object"}, "What is missing or failing")}}},
            "/livez": {"get": {
                "summary": "liveness: the front process answers (asks nothing of the others)",
                "responses": {"200": _json({"type": "object"}, "Alive")}}},
            "/readyz": {"get": {
                "summary": "readiness: the same answer as /health (every worker up and writing)",
                "responses": {"200": _json({"type": "object"}, "Ready"),
                              "503": _json({"type": "object"}, "What is missing or failing")}}},
            "/metrics": {"get": {
                "summary": "Prometheus text exposition",
                "responses": {"200": {"description": "Metrics",
                                      "content": {"text/plain": {"schema": {"type": "string"}}}},
                              "401": unauthorized, "503": unavailable}}},
            "/openapi.json": {"get": {"summary": "This description",
                                      "responses": {"200": _json({"type": "object"}, "OpenAPI 3")}}},
            "/docs": {"get": {"summary": "Swagger UI for this description",
                              "responses": {"200": {"description": "HTML",
                                                    "content": {"text/html": {}}}}}},
        },
        "components": {"schemas": {
            "Event": event,
            "Error": {"type": "object", "required": ["title"], "properties": {
                "title": {"type": "string"}, "description": {"type": "string"},
                "errors": {"type": "array", "items": {"type": "object", "properties": {
                    "index": {"type": "integer"}, "field": {"type": "string"},
                    "message": {"type": "string"}}}}}},
        }},
    }


DOCS_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>agg API</title>
  <link rel="stylesheet" href="/docs/static/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/static/swagger-ui-bundle.js"></script>
  <script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui"});</script>
</body>
</html>
"""
