"""``GET /openapi.json``: an OpenAPI 3.1 document built from the route descriptions, never by hand.

Each route is declared once, next to where it is defined, as an `Operation`
(method, path, summary, request body type, success answer, rate-limit
policy); the service's come from its route table. Request bodies are the
msgspec types the handlers decode with (`msgspec.json.schema_components`),
so the document cannot drift from what the server accepts. Every operation
documents the RFC 9457 problem answers the edge can give and, when it has a
rate-limit policy, the rate-limit header fields.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import msgspec

__all__ = ["PROBLEM_STATUSES", "Operation", "document"]

PROBLEM_STATUSES = (400, 401, 403, 404, 405, 408, 409, 413, 415, 422, 429, 502, 503, 504)
_REF = "#/components/schemas/{name}"
_PROBLEM = {"type": "object", "required": ["type", "title", "status", "detail"],
            "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                           "status": {"type": "integer"}, "detail": {"type": "string"}}}
_RATE_HEADERS = {  # actors.http.ratelimit.rate_headers
    "X-RateLimit-Limit": "integer", "X-RateLimit-Remaining": "integer", "X-RateLimit-Reset": "integer",
    "RateLimit-Policy": "string", "RateLimit": "string"}
_RETRY_HEADERS = {"Retry-After": "integer", "X-RateLimit-Retry-After": "integer"}


class Operation(msgspec.Struct, frozen=True):
    """One route as the document shows it. `answers`: success status -> media type."""

    method: str
    path: str
    summary: str
    body: Any = None                 # the msgspec type the handler decodes the JSON body as
    answers: tuple[tuple[int, str], ...] = ((200, "application/json"),)  # media "": no body
    policy: str | None = None        # the rate-limit policy; None: exempt, no rate-limit headers
    tags: tuple[str, ...] = ()


def document(operations: Iterable[Operation], *, title: str = "Triage", version: str = "1") -> dict[str, Any]:
    """The OpenAPI 3.1 document of `operations`."""
    operations = list(operations)
    bodies = [op.body for op in operations if op.body is not None]
    schemas, components = msgspec.json.schema_components(bodies, ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for op, schema in zip((op for op in operations if op.body is not None), schemas, strict=True):
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, schema)
    for op in operations:
        if op.body is None:
            paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, None)
    return {"openapi": "3.1.0", "info": {"title": title, "version": version},
            "paths": paths, "components": {"schemas": {**components, "Problem": _PROBLEM}}}


def _operation(op: Operation, body_schema: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": op.summary, "operationId": f"{op.method.lower()} {op.path}",
                           "responses": _responses(op)}
    if op.tags:
        out["tags"] = list(op.tags)
    params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
              for name in re.findall(r"{(\w+)}", op.path)]
    if params:
        out["parameters"] = params
    if body_schema is not None:
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": body_schema}}}
    return out


def _responses(op: Operation) -> dict[str, Any]:
    rated = _headers(_RATE_HEADERS) if op.policy is not None else {}
    out: dict[str, Any] = {}
    for status, media in op.answers:
        out[str(status)] = {"description": "Answered", "headers": rated}
        if media:
            out[str(status)]["content"] = {media: {"schema": {}}}
    problem = {"application/problem+json": {"schema": {"$ref": _REF.format(name="Problem")}}}
    for status in PROBLEM_STATUSES:
        if str(status) in out:
            continue
        headers = {**rated, **_headers(_RETRY_HEADERS)} if status in (429, 503) else rated
        out[str(status)] = {"description": "A problem (RFC 9457)", "headers": headers, "content": problem}
    return out


def _headers(fields: dict[str, str]) -> dict[str, Any]:
    return {name: {"schema": {"type": kind}} for name, kind in fields.items()}
