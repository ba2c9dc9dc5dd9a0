"""Operator routes: reset, open or configure a breaker, clear the queue, reduce its limit,
reset the connection pool, maintenance mode (README "Emergency procedures").

Every route needs ``Authorization: Bearer <ADMIN_TOKEN>`` (HEALTH_TOKEN when
ADMIN_TOKEN is unset): 401 without a token, 403 with a wrong one, 403 for
everyone when neither is configured (admin disabled). Bodies are JSON, and so
are the answers. Each action is logged (WARNING) without the token.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from loguru import logger
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from actors.http.auth import Access
from actors.http.openapi import Operation
from actors.http.problems import WebError, problem
from messages.errors import ConfigError, InvalidArgument

log = logger.bind(actor="admin")


class MaintenanceIn(msgspec.Struct, forbid_unknown_fields=True):
    enabled: bool


class LimitIn(msgspec.Struct, forbid_unknown_fields=True):
    max_concurrent: int | None


class BreakerConfigIn(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """`BreakerHandle.configure()`'s fields; an absent (or null) field stays as it is."""

    failure_threshold: int | None = None
    recovery_timeout_s: float | None = None
    monitoring_period_s: float | None = None
    half_open_max_calls: int | None = None
    success_threshold: int | None = None


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """`data` as JSON, ``Cache-Control: no-store``; `headers` added (or overriding those)."""
    body = msgspec.json.encode(data)
    if headers is None and 200 <= status and status not in (204, 304):
        return JSONBody(body, status)
    return Response(body, status_code=status, media_type="application/json",
                    headers={"cache-control": "no-store", **(headers or {})})


_NO_STORE = (b"cache-control", b"no-store")
_JSON_TYPE = (b"content-type", b"application/json")


class JSONBody(Response):
    """Encoded JSON with ``Cache-Control: no-store``: the header fields and their order that
    `Response(body, media_type="application/json", headers=NO_STORE)` gives, built directly
    (Starlette builds them through a header mapping: a few µs on every answer)."""

    media_type = "application/json"

    def __init__(self, body: bytes, status: int = 200) -> None:
        self.status_code, self.body, self.background = status, body, None
        self.raw_headers = [_NO_STORE, (b"content-length", b"%d" % len(body)), _JSON_TYPE]


async def read_json(request: Request, kind: Any) -> Any:
    """The body decoded as `kind`: 400 if it is not JSON, 422 naming the field if it does not fit
    or if a string holds a NUL character (PostgreSQL's text cannot store one)."""
    body = await request.body()
    try:
        decoded = msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise WebError(f"Invalid request body: {exc}", 422, **_field(exc)) from None
    except msgspec.DecodeError:
        raise WebError("Request body is not valid JSON", 400) from None
    if b"\\u0000" in body:  # the only way JSON can carry a NUL; rare, so the walk is rare too
        where = _nul_at(msgspec.json.decode(body), "$")
        if where is not None:
            raise WebError(f"Invalid request body: a NUL character (\\u0000) is not allowed - at `{where}`",
                           422, field=where)
    return decoded


_AT = re.compile(r" - at `(\$[^`]*)`$")
_NAMED = re.compile(r"(?:unknown|missing required) field `([^`]+)`")


def _field(exc: msgspec.ValidationError) -> dict[str, str]:
    """``{"field": "$.x"}`` from msgspec's message (a wrong type at a path, an unknown or a missing
    field, by name), so every 422 names its field the same way; empty if it names none."""
    text = str(exc)
    at = _AT.search(text)
    named = _NAMED.search(text)
    path = at.group(1) if at else "$"
    if named:
        path = f"{path}.{named.group(1)}"
    return {"field": path} if at or named else {}


def _nul_at(value: Any, path: str) -> str | None:
    """The JSON path of the first string (or key) holding a NUL, or None."""
    if isinstance(value, str):
        return path if "\0" in value else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        inner = f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]"
        if isinstance(key, str) and "\0" in key:
            return inner
        found = _nul_at(item, inner)
        if found is not None:
            return found
    return None


_ADMIN = ("admin",)
OPERATIONS = (  # what /openapi.json shows of the routes below
    Operation("POST", "/api/admin/breakers/{tier}/reset", "Close a tier's breaker", tags=_ADMIN),
    Operation("POST", "/api/admin/breakers/{tier}/open", "Force a tier's breaker open", tags=_ADMIN),
    Operation("POST", "/api/admin/breakers/{tier}/configure", "Change a tier's breaker settings",
              BreakerConfigIn, tags=_ADMIN),
    Operation("POST", "/api/admin/queue/clear", "Answer every waiting request with 503", tags=_ADMIN),
    Operation("POST", "/api/admin/queue/limit", "Reduce (or restore) the concurrency limit", LimitIn, tags=_ADMIN),
    Operation("POST", "/api/admin/pool/reset", "Probe the pool and replace broken connections (503: still broken)",
              answers=((200, "application/json"), (503, "application/json")), tags=_ADMIN),
    Operation("POST", "/api/admin/maintenance", "Maintenance mode on or off", MaintenanceIn, tags=_ADMIN),
)


class Admin:
    def __init__(self, mon: Any, access: Access) -> None:
        self.mon, self.access = mon, access

    def routes(self) -> list[Route]:
        return [
            Route("/api/admin/breakers/{tier}/reset", self.guarded(self.reset), methods=["POST"]),
            Route("/api/admin/breakers/{tier}/open", self.guarded(self.force_open), methods=["POST"]),
            Route("/api/admin/breakers/{tier}/configure", self.guarded(self.configure), methods=["POST"]),
            Route("/api/admin/queue/clear", self.guarded(self.clear_queue), methods=["POST"]),
            Route("/api/admin/queue/limit", self.guarded(self.queue_limit), methods=["POST"]),
            Route("/api/admin/pool/reset", self.guarded(self.pool_reset), methods=["POST"]),
            Route("/api/admin/maintenance", self.guarded(self.maintenance), methods=["POST"]),
        ]

    def guarded(self, handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            refused = self.access.admin(request.scope)
            if refused == 401:
                return problem(401, "Admin routes need Authorization: Bearer <ADMIN_TOKEN>",
                               headers={"www-authenticate": 'Bearer realm="triage-admin"'})
            if refused == 403:
                detail = ("Admin is disabled: set ADMIN_TOKEN or HEALTH_TOKEN" if not self.access.admin_enabled
                          else "Invalid admin token")
                return problem(403, detail)
            return await handler(request)
        endpoint.__name__ = handler.__name__
        return endpoint

    def _breaker(self, request: Request) -> Any:
        tier = request.path_params["tier"]
        breaker = self.mon.breakers.get(tier)
        if breaker is None:
            raise WebError(f"Unknown tier {tier!r}; known: {', '.join(self.mon.breakers)}", 404)
        return breaker

    async def reset(self, request: Request) -> Response:
        breaker = self._breaker(request)
        await breaker.reset()
        log.warning("Admin: Circuit breaker {tier} reset", tier=breaker.tier)
        return json_response({"tier": breaker.tier, "state": breaker.state})

    async def force_open(self, request: Request) -> Response:
        breaker = self._breaker(request)
        await breaker.force_open()
        log.warning("Admin: Circuit breaker {tier} forced open", tier=breaker.tier)
        return json_response({"tier": breaker.tier, "state": breaker.state, "forced": True})

    async def configure(self, request: Request) -> Response:
        breaker = self._breaker(request)
        wanted = await read_json(request, BreakerConfigIn)
        fields = msgspec.structs.asdict(wanted)
        try:
            await breaker.configure(**fields)
        except ConfigError as exc:  # a value out of range: named by its field
            raise WebError(f"Invalid request body: {exc}", 422, field=_field_of(exc)) from None
        changed = {k: v for k, v in fields.items() if v is not None}
        log.warning("Admin: Circuit breaker {tier} configured: {changed}", tier=breaker.tier, changed=changed)
        return json_response({"tier": breaker.tier, "state": breaker.state, "configured": changed})

    async def queue_limit(self, request: Request) -> Response:
        wanted = await read_json(request, LimitIn)
        try:
            await self.mon.queue.set_limit(wanted.max_concurrent)
        except InvalidArgument:
            most = self.mon.config.queue.max_concurrent
            raise WebError(f"Invalid request body: max_concurrent must be an integer from 1 to {most} "
                           f"(the configured value), or null for the configured value again, got "
                           f"{wanted.max_concurrent} - at `$.max_concurrent`", 422,
                           field="$.max_concurrent") from None
        snap = self.mon.queue.statistics()
        log.warning("Admin: Queue limit set to {limit} slot(s)", limit=snap.max_concurrent)
        return json_response({"maxConcurrent": snap.max_concurrent,
                              "configuredMaxConcurrent": snap.configured_max_concurrent or snap.max_concurrent,
                              "limitReduced": snap.configured_max_concurrent is not None})

    async def pool_reset(self, request: Request) -> Response:
        try:
            check = await self.mon.queue.health_check()
        except InvalidArgument as exc:
            raise WebError(str(exc), 409) from None
        return json_response({"replaced": check.replaced, "closed": check.closed, "healthy": check.healthy,
                              "probeLatencyMs": round(check.probe_latency_s * 1000, 3), "error": check.error},
                             status=200 if check.healthy else 503)

    async def clear_queue(self, request: Request) -> Response:
        before = (await self.mon.queue.snapshot()).cleared
        await self.mon.queue.clear()
        cleared = (await self.mon.queue.snapshot()).cleared - before
        log.warning("Admin: Queue cleared ({cleared} waiting request(s) answered)", cleared=cleared)
        return json_response({"cleared": cleared})

    async def maintenance(self, request: Request) -> Response:
        wanted = await read_json(request, MaintenanceIn)
        await self.mon.maintenance(wanted.enabled)
        return json_response({"maintenance": self.mon.in_maintenance})


def _field_of(exc: ConfigError) -> str:
    """`tiers.<tier>.<field>` -> the body's `$.<field>`."""
    return f"$.{exc.field.rsplit('.', 1)[-1]}"
