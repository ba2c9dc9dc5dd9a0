"""The live dashboard at /dashboard: one page, its vendored assets, and a snapshot stream.

Theory of operation. The page (static/dashboard.html + .js + .css, with uPlot
vendored beside it — no build step, no CDN) opens one server-sent-event stream,
`/api/dashboard/stream`, and redraws from it. The stream sends a `snapshot`
event every `DASHBOARD_PERIOD_S` (once a second): the health actor's
latest report, breaker states, queue depth per priority, limiter statistics,
database usage, process memory, and P50/P95/P99 with request and error rates from the metrics
actor; plus an `alert` event for every alert as it happens. Reading snapshots
costs the actors nothing but a published value (the metrics actor is asked
without per-route series). The browser keeps the history for the charts.
Every open stream reads the same frames: the snapshot is built and encoded once per tick
by one builder (`actors.http.broadcast.Feed`), which also writes it, framed once as a chunk,
straight to each plain HTTP/1.1 stream's socket (`actors.http.wire`: no wake-up and no trip
through hypercorn's send path per stream), the alerts encoded once into the app's shared
`AlertLog`; a slow stream skips to the newest snapshot and never queues them.

Access is the detailed health report's: open in development; in production a
bearer token, the `triage_token` cookie, or an allow-listed network. A browser
cannot send a bearer header on navigation, so `/dashboard?token=…` sets the
cookie to a signed session id (HttpOnly, SameSite=Strict, Path=/, Secure over
HTTPS) and redirects to the bare URL.
"""

from __future__ import annotations

import math
import time
from collections import deque
from importlib import resources
from typing import Any

import msgspec
import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from actors.http.broadcast import AlertLog, Feed, event_bytes
from actors.http.sse import HEADERS, chunk, until_disconnect
from actors.http.wire import Wire, wire_of
from messages.events import BreakerTransition
from messages.health import camel

DASHBOARD_PERIOD_S = 1.0     # every open stream costs a socket write per frame: 1,000 streams, 1,000 a second
METRICS_EVERY_S = 1.0
FINISH_S = 5.0               # at most this long for a chunk cut short to go out when a stream ends
TRANSITIONS_KEPT = 50
ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "fleet.js": "text/javascript; charset=utf-8",  # the fleet panel (GET /api/fleet)
    "dashboard.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "uPlot.LICENSE": "text/plain; charset=utf-8",
}
COOKIE = "triage_token"


def _asset(name: str) -> bytes:
    return resources.files("actors.http").joinpath("static", name).read_bytes()


class History:
    """Recent breaker transitions, for the activation list (kept by a bus tap)."""

    def __init__(self, wall_offset: float) -> None:
        self.items: deque[dict] = deque(maxlen=TRANSITIONS_KEPT)
        self.offset = wall_offset

    def tap(self, event: Any) -> None:
        if type(event) is BreakerTransition:
            self.items.append({"tier": event.tier, "fromState": event.from_state, "toState": event.to_state,
                               "reason": event.reason, "wall": event.at + self.offset})


def build_snapshot(mon: Any, metrics: Any, history: History, degraded_code: int) -> dict:
    """Everything the page draws, as one JSON-ready dict."""
    stats = mon.statistics()  # the last published state of every actor: no round trip
    report, queue, limiter = stats.health, stats.queue, stats.limiter
    breakers = {}
    for tier, b in stats.breakers.items():
        breakers[tier] = {"state": b.state.upper(), "failures": b.failures_in_window,
                          "threshold": b.failure_threshold, "timeInState": round(b.time_in_state_s, 1),
                          "openings": b.openings, "rejections": b.rejections}
    w = metrics.overall.windows["1m"] if metrics is not None else None
    details = report.detailed()
    return {
        "t": time.time(), "status": report.status, "httpStatus": report.http_status(degraded_code),
        "uptime": report.uptime_ms,
        "components": {k: v for k, v in details["components"].items() if k != "actors"},  # as "actors"
        "degradation": details["degradation"], "actors": details["components"]["actors"],
        "database": details["metrics"]["database"],
        "memory": details["metrics"].get("resources", {}).get("memory"),
        "queue": {"depth": queue.depth, "inFlight": queue.in_flight, "maxConcurrent": queue.max_concurrent,
                  "configuredMaxConcurrent": queue.configured_max_concurrent,
                  "depthByPriority": queue.depth_by_priority},
        "breakers": breakers,
        "limiter": camel(msgspec.to_builtins(limiter)),
        "latency": _latency(w),
        "latency10s": _latency(getattr(metrics, "recent", None)),
        "traffic": None if w is None else {"ratePerSecond": round(w.rate_per_s, 3),
                                           "errorRate": w.error_rate, "requests": w.requests,
                                           "stale": w.stale, "staleRate": _share(w.stale, w)},
        "transitions": list(history.items),
    }


def _latency(w: Any) -> dict | None:
    return None if w is None else {"p50": w.latency.p50, "p95": w.latency.p95, "p99": w.latency.p99}


def _share(count: int, w: Any) -> float:
    """`count` as a fraction of the requests the window rates (as its error rate is)."""
    rated = w.requests - w.excluded
    return count / rated if rated else 0.0


class Snapshots:
    """Builds the page's snapshot frame: once per tick for every open stream (`broadcast.Feed`).

    The metrics actor is asked at most every METRICS_EVERY_S; the rest is published state."""

    def __init__(self, mon: Any, history: History, degraded_code: int) -> None:
        self.mon, self.history, self.degraded_code = mon, history, degraded_code
        self.metrics: Any = None
        self.fetched = -math.inf

    async def build(self) -> bytes | None:
        if self.mon.closed:
            return None
        if trio.current_time() - self.fetched >= METRICS_EVERY_S:
            self.metrics, self.fetched = await self.mon.metrics(routes=False), trio.current_time()
        snap = build_snapshot(self.mon, self.metrics, self.history, self.degraded_code)
        return b"event: snapshot\ndata: " + msgspec.json.encode(snap) + b"\n\n"


class DashboardStream:
    """ASGI app: SSE of the shared snapshot frames (at most every DASHBOARD_PERIOD_S) and alerts.

    On a plain HTTP/1.1 connection the feed's builder writes the frames to the socket itself
    (`actors.http.wire`); this task only wakes when the socket could not take one."""

    def __init__(self, mon: Any, feed: Feed, alerts: AlertLog) -> None:
        self.mon, self.feed, self.alerts = mon, feed, alerts

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        ex = scope.get("triage")
        if ex is not None:  # a stream, not a request: no latency; ends at drain
            ex.stream = True
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        wire = wire_of(scope, ex.server_send) if ex is not None else None
        seen = self.alerts.join()
        group = self.feed.join()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(until_disconnect, receive, nursery.cancel_scope)
                await chunk(send, b"retry: 1000\n\n")
                for alert in self.mon.health_report.value.alerts:
                    await chunk(send, event_bytes(alert))
                nursery.start_soon(self._alerts, seen, send)
                if wire is None:
                    await self._snapshots(send, group)
                else:
                    await self._wired(wire, group)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the client went away mid-write
        finally:
            if wire is not None:
                self.feed.detach(wire, group)
                with trio.move_on_after(FINISH_S, shield=True):
                    await wire.finish()
            self.feed.leave()
            self.alerts.leave()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _snapshots(self, send: Any, group: int) -> None:
        seen = 0
        while True:
            seen, frame = await self.feed.newer(seen, group)
            await chunk(send, frame)

    async def _wired(self, wire: Wire, group: int) -> None:
        """The builder writes our frames; we write the current one now, and catch up when it
        could not (a slow reader, an alert being written)."""
        self.feed.attach(wire, group)
        wire.stalled.set()
        while not wire.closed:
            await wire.stalled.wait()
            await wire.catch_up(self.feed.number, self.feed.chunk)
        await trio.sleep_forever()  # the socket failed: the disconnect ends the stream

    async def _alerts(self, seen: int, send: Any) -> None:
        while True:
            await self.alerts.wait_newer(seen)
            seen, frames = self.alerts.since(seen)
            for frame in frames:
                await chunk(send, frame)


def routes(mon: Any, *, allowed: Any, alerts: AlertLog, degraded_code: int = 206,
           wall_offset: float | None = None, cookie_for: Any = None) -> list[Route]:
    """`allowed(request) -> bool` is the detailed-health access rule (token, cookie, network);
    `alerts` the app's shared alert log (the alert stream reads it too);
    `cookie_for(request, token) -> (value, secure, max_age) | None` turns a ``?token=`` into the
    cookie to set (a signed session id, never the token itself), None to set none."""
    offset = time.time() - trio.current_time() if wall_offset is None else wall_offset
    history = History(offset)
    mon._bus.taps.append(history.tap)
    feed = Feed("dashboard", Snapshots(mon, history, degraded_code).build, DASHBOARD_PERIOD_S)
    stream = DashboardStream(mon, feed, alerts)

    def denied() -> Response:
        return JSONResponse({"type": "about:blank", "title": "Unauthorized", "status": 401,
                             "detail": "the dashboard needs the health token"}, status_code=401,
                            headers={"www-authenticate": "Bearer", "cache-control": "no-store"})

    async def page(request: Request) -> Response:
        token = request.query_params.get("token")
        if token is not None:
            response = RedirectResponse("/dashboard", status_code=303)
            cookie = cookie_for(request, token) if cookie_for is not None else None
            if cookie is not None:
                value, secure, max_age = cookie
                response.set_cookie(COOKIE, value, max_age=max_age, httponly=True, samesite="strict",
                                    path="/", secure=secure)
            return response
        if not allowed(request):
            return denied()
        return Response(_asset("dashboard.html"), media_type="text/html; charset=utf-8",
                        headers={"cache-control": "no-store"})

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            return JSONResponse({"title": "Not Found", "status": 404, "detail": "No such asset"}, status_code=404)
        return Response(_asset(name), media_type=ASSETS[name], headers={"cache-control": "max-age=3600"})

    return [Route("/dashboard", page, methods=["GET"]),
            Route("/dashboard/static/{name}", asset, methods=["GET"]),
            Route("/api/dashboard/stream", _Guarded(stream, allowed, denied), methods=["GET"])]


class _Guarded:
    """An ASGI app behind the access rule (a class, so Starlette routes it as raw ASGI)."""

    def __init__(self, app: Any, allowed: Any, denied: Any) -> None:
        self.app, self.allowed, self.denied = app, allowed, denied

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if not self.allowed(Request(scope)):
            await self.denied()(scope, receive, send)
            return
        await self.app(scope, receive, send)
