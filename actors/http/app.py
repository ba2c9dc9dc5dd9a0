"""The HTTP edge: a Starlette app over the `Monitoring` handle, served by hypercorn's trio worker.

    async with open_monitoring(Config.from_env()) as mon:
        app = create_app(mon, http, service=DemoService(mon, http))
        await hypercorn.trio.serve(app, hypercorn_config(http),
                                   shutdown_trigger=app.shutdown_trigger(stop.wait))

Layers, outside in: `Edge` (maintenance, body cap and deadline, graceful
drain, catch-all 500, request metrics) -> `RateLimitMiddleware` (policy per
route, key per user or client) -> Starlette routing -> handlers.

Routes of the edge itself: ``GET /api/health`` (``?detailed=true``), the orchestrator's
probes ``GET /api/health/live`` (200 while the process answers) and ``/api/health/ready``
(503 when unhealthy or draining),
``GET /metrics``, ``GET /api/alerts/stream`` and the admin routes
(`actors.http.admin`). Health answers from the health actor's latest report:
it never waits on the admission queue or the database. In production
(``NODE_ENV=production``) health shows only status and timestamp, and
metrics and the alert stream answer 403, unless the request carries a
health/admin bearer token or comes from an allow-listed network.

Graceful shutdown. Pass the host's trigger through `app.shutdown_trigger`:
when it fires, alert streams end, requests in flight get `grace_s` to
finish (then a 503), and hypercorn stops accepting, closes idle keep-alive
connections and waits `grace_s + 1` before cancelling what is left.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any
from urllib.parse import parse_qs

import hypercorn.config
import msgspec
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from actors.http import dashboard, openapi
from actors.http.admin import OPERATIONS as ADMIN_OPERATIONS
from actors.http.admin import Admin
from actors.http.auth import Access, Sessions
from actors.http.broadcast import AlertLog, event_bytes
from actors.http.edge import EdgeMiddleware
from actors.http.problems import exchange, handled_errors, problem, problem_body
from actors.http.prometheus import TriageCollector, new_registry
from actors.http.ratelimit import RateLimitMiddleware
from actors.http.routing import IndexedRouter
from actors.http.sse import HEADERS, chunk, until_disconnect
from actors.runtime.mailbox import AsyncValue
from messages.health import SEVERITY_RANK
from messages.http_config import HttpConfig
from messages.outcome import Outcome

__all__ = ["TriageApp", "create_app", "hypercorn_config"]

NO_STORE = {"cache-control": "no-store"}
_TRUE = ("1", "true", "yes", "on")
_OPS = ("operations",)
_JSON = "application/json"
_LIVE = b'{"status":"live"}'
_METRICS_403 = "Metrics need a health or admin bearer token, or an allow-listed network"


def _detailed(query_string: bytes) -> bool:
    """``?detailed=true`` (1, yes, on; any case)."""
    if not query_string:
        return False
    values = parse_qs(query_string.decode("latin-1")).get("detailed", [""])
    return values[-1].lower() in _TRUE


def operations(degraded_status: int) -> tuple[openapi.Operation, ...]:
    """What /openapi.json shows of the edge's own routes (the dashboard's pages are not an API)."""
    health = ((200, _JSON), (degraded_status, _JSON), (503, _JSON))
    return (
        openapi.Operation("GET", "/api/health", "Health: status and timestamp; more with details access "
                          "(?detailed=true)", answers=health, tags=_OPS),
        openapi.Operation("GET", "/api/health/live", "Liveness: 200 while the process answers", tags=_OPS),
        openapi.Operation("GET", "/api/health/ready", "Readiness: 503 while unhealthy or draining",
                          answers=((200, _JSON), (503, _JSON)), tags=_OPS),
        openapi.Operation("GET", "/metrics", "Prometheus text exposition", answers=((200, "text/plain"),),
                          tags=_OPS),
        openapi.Operation("GET", "/api/alerts/stream", "Alerts as server-sent events (never ends)",
                          answers=((200, "text/event-stream"),), tags=_OPS),
        openapi.Operation("GET", "/openapi.json", "This document", tags=_OPS),
        openapi.Operation("GET", "/api/fleet", "The instances sharing this one's Redis ([fleet]): status, "
                          "breakers, queue, connections, last seen; fleet mode per policy",
                          answers=((200, _JSON), (403, _JSON)), tags=_OPS),
    )


class TriageApp:
    """The ASGI app. `edge.in_flight`, `sse_clients` (a `AsyncValue` int) for tests and metrics."""

    def __init__(self, mon: Any, http: HttpConfig, service: Any = None,
                 routes: Sequence[BaseRoute] = ()) -> None:
        self.mon, self.http = mon, http
        self.service = service
        self.access = Access(http, production=mon.config.environment == "production")
        self.sessions: Sessions = getattr(service, "sessions", None) or Sessions(http.session_secret,
                                                                                  http.session_ttl_s)
        self.sse_clients = AsyncValue(0)
        self.alert_log = AlertLog()  # every alert encoded once, for every stream
        mon._bus.taps.append(self.alert_log.tap)
        self._collector = TriageCollector(mon, extra=lambda: {"in_flight_requests": self.edge.in_flight,
                                                              "sse_clients": self.sse_clients.value})
        self._registry = new_registry(self._collector)
        own = [Route("/api/health", self.health, methods=["GET"]),
               Route("/api/health/live", self.live, methods=["GET"]),
               Route("/api/health/ready", self.ready, methods=["GET"]),
               Route("/metrics", self.metrics, methods=["GET"]),
               Route("/api/alerts/stream", self.alerts, methods=["GET"]),
               Route("/openapi.json", self.openapi, methods=["GET"]),
               Route("/api/fleet", self.fleet, methods=["GET"]),
               *Admin(mon, self.access).routes(),
               *dashboard.routes(mon, allowed=self._dashboard_allowed, cookie_for=self._dashboard_cookie,
                                 alerts=self.alert_log, degraded_code=http.degraded_status_code)]
        table = service.table() if service is not None else []
        self._openapi = msgspec.json.encode(openapi.document(
            [*operations(http.degraded_status_code), *ADMIN_OPERATIONS, *map(_operation, table)]))
        lifespan = service.lifespan if service is not None else None
        starlette = Starlette(routes=[*own, *(r.route for r in table), *routes],
                              exception_handlers=handled_errors(), lifespan=lifespan)
        starlette.router = IndexedRouter(starlette.router.routes, lifespan=lifespan)
        starlette.state.mon = mon  # a host's own routes reach the handle as request.app.state.mon
        limited = RateLimitMiddleware(
            starlette, mon,
            route_policies={f"{r.method} {r.path}": r.policy for r in table},
            # admin: the emergency procedures must work during the flood that spent this
            # client's quota (a 192-bit token is its own protection against guessing)
            exempt_paths=("/api/health", "/api/health/*", "/api/fleet", "/metrics", "/openapi.json",
                          "/dashboard", "/dashboard/*", "/api/dashboard/*", "/api/admin/*"),
            trusted_proxies=http.trusted_proxies, user_key=self.sessions.user_key)
        self.edge = EdgeMiddleware(limited, mon, max_body_bytes=http.max_body_bytes, body_timeout_s=http.body_timeout_s,
                         grace_s=http.grace_s, route_tiers={f"{r.method} {r.path}": r.tier for r in table},
                         routes=starlette.routes, shed_routes=table)

    def _dashboard_allowed(self, request: Request) -> bool:
        return self.access.sees_details(request.scope) or \
            self.sessions.viewer(request.cookies.get(dashboard.COOKIE))

    def _dashboard_cookie(self, request: Request, token: str) -> tuple[str, bool, int] | None:
        """`?token=<health token>`: a viewer session for the cookie (the token itself never is)."""
        if not self.access.token_sees_details(token.encode()):
            return None
        return self.sessions.issue_viewer(), self.access.https(request.scope), int(self.sessions.ttl_s)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        await self.edge(scope, receive, send)

    # -- shutdown ---------------------------------------------------------------------------

    def shutdown_trigger(self, trigger: Callable[[], Awaitable[Any]] | None = None
                         ) -> Callable[[], Awaitable[None]]:
        """Hypercorn's `shutdown_trigger`: waits for `trigger` (default: forever), then drains."""
        async def wait() -> None:
            await (trigger or trio.sleep_forever)()
            self.begin_drain()
        return wait

    def begin_drain(self) -> None:
        self.edge.begin_drain()

    # -- routes -----------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        ex = exchange(request)  # answered (its 503 reports the status, it is no failure): in no error rate
        ex.outcome, ex.rated = Outcome.OK, False
        status, body = self.health_answer(request.scope)
        return Response(body, status_code=status, media_type="application/json", headers=NO_STORE)

    async def live(self, request: Request) -> Response:
        """Liveness: 200 whenever the process answers. A database outage never fails it (a
        restart would not bring the database back); a dead actor system ends `triage serve`."""
        ex = exchange(request)
        ex.outcome, ex.rated = Outcome.OK, False
        return Response(_LIVE, media_type="application/json", headers=NO_STORE)

    async def ready(self, request: Request) -> Response:
        """Readiness: 503 while unhealthy or draining (take this instance out of rotation), else 200."""
        ex = exchange(request)
        ex.outcome, ex.rated = Outcome.OK, False
        status, body = self.ready_answer()
        return Response(body, status_code=status, media_type="application/json", headers=NO_STORE)

    # The answers themselves, from published values only (the health actor's latest report,
    # the drain flag): pure reads, so the operational listener's thread answers them too.

    def health_answer(self, scope: dict) -> tuple[int, bytes]:
        report = self.mon.health_report.value
        if not self.access.sees_details(scope):
            body = report.minimal()
        else:
            body = report.detailed() if _detailed(scope["query_string"]) else report.basic()
        return report.http_status(self.http.degraded_status_code), msgspec.json.encode(body)

    def ready_answer(self) -> tuple[int, bytes]:
        if self.edge.draining:
            return 503, b'{"status":"draining"}'
        status = self.mon.health_report.value.status
        return (503 if status == "unhealthy" else 200), msgspec.json.encode({"status": status})

    async def metrics_answer(self, scope: dict) -> tuple[int, bytes, str]:
        """(status, body, content type) of `/metrics`."""
        if not self.access.sees_details(scope):
            return 403, problem_body(403, _METRICS_403), "application/problem+json"
        accept = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"accept"), None)
        body, content_type = await self._collector.render(self._registry, accept)
        return 200, body, content_type

    async def openapi(self, request: Request) -> Response:
        """The OpenAPI document (built once, at start); in production it needs details access."""
        if not self.access.sees_details(request.scope):
            return problem(403, "The API description needs a health or admin bearer token, "
                                "or an allow-listed network")
        return Response(self._openapi, media_type="application/json", headers=NO_STORE)

    async def metrics(self, request: Request) -> Response:
        if not self.access.sees_details(request.scope):
            return problem(403, _METRICS_403)
        body, content_type = await self._collector.render(self._registry, request.headers.get("accept"))
        return Response(body, headers={**NO_STORE, "content-type": content_type})

    async def fleet(self, request: Request) -> Response:
        """`mon.fleet()`: the detailed health report's access rule (or the dashboard's session)."""
        ex = exchange(request)
        ex.outcome, ex.rated = Outcome.OK, False
        if not self._dashboard_allowed(request):
            return problem(403, "The fleet view needs a health or admin bearer token, "
                                "or an allow-listed network")
        return Response(msgspec.json.encode(await self.mon.fleet()), media_type="application/json",
                        headers=NO_STORE)

    async def alerts(self, request: Request) -> Response:
        if not self.access.sees_details(request.scope):
            return problem(403, "The alert stream needs a health or admin bearer token, "
                                "or an allow-listed network")
        if self.edge.draining:
            return problem(503, "The service is shutting down", headers={"retry-after": "5"})
        severity = request.query_params.get("severity", "info")
        if severity not in SEVERITY_RANK:
            return problem(422, f"severity must be one of {', '.join(SEVERITY_RANK)}")
        exchange(request).stream = True
        return _AlertStream(self, SEVERITY_RANK[severity])  # type: ignore[return-value]


class _AlertStream:
    """Server-sent events: the alerts firing now, then each new one; a comment when idle.

    Reads the app's shared `AlertLog` (each alert encoded once, whatever the number of streams)
    from its own place in it. Ends when the client disconnects or the edge drains.
    """

    def __init__(self, app: TriageApp, floor: int) -> None:
        self.app, self.floor = app, floor

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        clients, log = self.app.sse_clients, self.app.alert_log
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        clients.set(clients.value + 1)
        seen = log.join()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(until_disconnect, receive, nursery.cancel_scope)
                await self._pump(log, seen, send)
        finally:
            log.leave()
            clients.set(clients.value - 1)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _pump(self, log: AlertLog, seen: int, send: Any) -> None:
        await chunk(send, b"retry: 5000\n: connected\n\n")
        for alert in self.app.mon.health_report.value.alerts:
            if SEVERITY_RANK[alert.severity] >= self.floor:
                await chunk(send, event_bytes(alert))
        while True:
            with trio.move_on_after(self.app.http.sse_heartbeat_s) as idle:
                await log.wait_newer(seen)
            if idle.cancelled_caught:
                await chunk(send, b": heartbeat\n\n")
                continue
            seen, frames = log.since(seen, self.floor)
            for frame in frames:
                await chunk(send, frame)


def _operation(row: Any) -> openapi.Operation:
    """A service route as the document shows it: `summary`, `body` and `status` are optional on a row."""
    status = getattr(row, "status", 200)
    return openapi.Operation(row.method, row.path, getattr(row, "summary", ""), getattr(row, "body", None),
                             answers=((status, "" if status == 204 else _JSON),), policy=row.policy,
                             tags=("service",))


def create_app(mon: Any, http: HttpConfig | None = None, *, service: Any = None,
               routes: Iterable[BaseRoute] = ()) -> TriageApp:
    """The ASGI app for `mon`: the edge's routes, `service`'s routes (if any), then `routes`."""
    return TriageApp(mon, http or HttpConfig(), service, tuple(routes))


def hypercorn_config(http: HttpConfig, **overrides: Any) -> hypercorn.config.Config:
    """Hypercorn settings for the edge: bind, no Server header, drain window."""
    hc = hypercorn.config.Config()
    host = f"[{http.host}]" if ":" in http.host and not http.host.startswith("[") else http.host
    hc.bind = [f"{host}:{http.port}"]
    hc.include_server_header = False     # no server name or version on the wire
    hc.graceful_timeout = http.grace_s + 1.0  # the edge answers at grace_s; this is the backstop
    hc.accesslog = None
    for key, value in overrides.items():
        setattr(hc, key, value)
    return hc
