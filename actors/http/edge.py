"""The outermost ASGI layer: one definite answer per request, whatever happens inside.

Theory of operation. `Edge` wraps the whole app (rate limiting, routing,
handlers). For each HTTP request it

1. answers 503 + ``Retry-After`` itself in maintenance mode, except on the
   operational routes (health, metrics, the alert stream, admin);
2. sheds a request to a service route (one of `shed_routes`: the route table's rows,
   each with its breaker tier and admission priority) before its body is read or its
   route runs, when the route's breaker is open (unless the row has a ``fallback``:
   its handler answers from cache) or when the published queue depth is at its limit
   and nobody less urgent waits (`QueueHandle.would_refuse`): the same 503 problem body
   and ``Retry-After`` as the kernel's `CircuitOpen` / `QueueFull`, outcome
   ``circuit_open`` / ``queue_full`` in the request metrics; a request with a body is
   answered ``Connection: close`` (its body is never read);
3. answers 400 and closes the connection when a request has both
   ``Content-Length`` and ``Transfer-Encoding`` (RFC 9112 §6.1: request
   smuggling); answers 413 itself when ``Content-Length`` is over the cap, without
   reading a byte of the body; otherwise hands the app a `receive` that counts
   body bytes (`BodyTooLarge` past the cap, for chunked bodies) and enforces
   one deadline for the whole body (`BodyTimeout` -> 408), so a client
   trickling bytes cannot hold a handler;
4. runs the app inside a cancel scope it keeps until the request ends. At
   shutdown (`begin_drain`) every scope gets the deadline ``now + grace``
   (streams end at once): a request that finishes in time is answered
   normally, one that does not is cancelled and answered 503 here, a
   streaming response is ended cleanly;
5. turns an exception that escaped everything into a 500 problem body (never
   a traceback) carrying a request id, logged once with that id;
6. records the request with `mon.observe_request("METHOD /template", status,
   duration, outcome, tier)`, an unknown method as "OTHER" -- except a stream (SSE): it is not a request,
   and its duration would pass for latency. An answer given before routing (the rate
   limiter's 429, maintenance, a body refused) is matched against `routes` for its
   template, so it is counted under the route asked for; a path no route matches is
   ``<unmatched>``.

Handlers tell the edge the outcome and tier of their request through the
per-request `RequestState` at ``scope["triage"]``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import trio
from loguru import logger
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match

from actors.http.problems import (
    BodyTimeout,
    BodyTooLarge,
    RequestState,
    log_500,
    problem_body,
    problem_for,
    send_problem,
)
from messages.errors import CircuitOpen, QueueFull
from messages.outcome import Outcome, outcome_of

log = logger.bind(actor="web")

MAINTENANCE_RETRY_AFTER_S = 60
# RFC 9110's methods and PATCH: any other is recorded as "OTHER", so a client inventing methods
# cannot add metric series (Prometheus' own client libraries bound the label the same way).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
OPERATIONAL = ("/api/health", "/metrics", "/api/alerts/stream", "/api/admin/", "/dashboard", "/api/dashboard/")


# -- the edge -----------------------------------------------------------------------------

class EdgeMiddleware:
    """See the module doc. `route_tiers` maps "METHOD /template" to a breaker tier; `routes`
    (the app's route table) name the template of an answer given before routing."""

    def __init__(self, app: Any, mon: Any, *, max_body_bytes: int, body_timeout_s: float,
                 grace_s: float, route_tiers: Mapping[str, str] | None = None,
                 routes: Sequence[BaseRoute] = (), shed_routes: Iterable[Any] = ()) -> None:
        self.app, self.mon = app, mon
        self.routes = tuple(routes)
        self.max_body_bytes, self.body_timeout_s, self.grace_s = max_body_bytes, body_timeout_s, grace_s
        self.route_tiers = dict(route_tiers or {})
        self.shedder = Shedder(mon, shed_routes)
        self.draining = False
        self._drain_deadline = math.inf
        self._inflight: dict[trio.CancelScope, RequestState] = {}

    def begin_drain(self) -> None:
        """Stop streams now; give every other request in flight `grace_s` to finish."""
        if self.draining:
            return
        self.draining = True
        self._drain_deadline = trio.current_time() + self.grace_s
        for scope, ex in list(self._inflight.items()):
            if ex.stream:
                scope.cancel()
            else:
                scope.deadline = min(scope.deadline, self._drain_deadline)

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = trio.current_time()
        ex = scope["triage"] = RequestState(send)
        reply = _Reply(send)
        try:
            await self._handle(scope, receive, reply, ex, t0)
        finally:
            self._observe(scope, reply, ex, trio.current_time() - t0)

    async def _handle(self, scope: dict, receive: Any, reply: _Reply, ex: RequestState, t0: float) -> None:
        if self.mon.in_maintenance and not scope["path"].startswith(OPERATIONAL):
            ex.outcome = Outcome.OK
            return await send_problem(reply, 503, "The service is in maintenance mode; retry later",
                                      [(b"retry-after", b"%d" % MAINTENANCE_RETRY_AFTER_S)])
        length, chunked = _body_headers(scope)
        if length is not None and chunked:  # RFC 9112 §6.1: a smuggling attempt; framing is ambiguous
            await _drain(_BodyReader(receive, self.max_body_bytes, t0 + self.body_timeout_s).receive)
            return await send_problem(reply, 400, "Both Content-Length and Transfer-Encoding",
                                      [(b"connection", b"close")])
        if length is not None and length > self.max_body_bytes:
            return await send_problem(reply, 413, f"Request body over {self.max_body_bytes} bytes",
                                      [(b"connection", b"close")], limit=self.max_body_bytes)
        if length == -1:
            return await send_problem(reply, 400, "Invalid Content-Length", [(b"connection", b"close")])
        if self.shedder.routes and await self.shedder.shed(scope, reply, ex, bool(length or chunked)):
            return
        if length or chunked:
            receive = _BodyReader(receive, self.max_body_bytes, t0 + self.body_timeout_s).receive
        with trio.CancelScope(deadline=self._drain_deadline) as cancel_scope:
            self._inflight[cancel_scope] = ex
            try:
                await self.app(scope, receive, reply)
            except ClientDisconnect:
                ex.outcome = Outcome.CANCELLED
            except Exception as exc:
                await self._crashed(scope, reply, ex, exc)
            finally:
                del self._inflight[cancel_scope]
        if cancel_scope.cancelled_caught:
            await self._cut_off(reply, ex)

    async def _crashed(self, scope: dict, reply: _Reply, ex: RequestState, exc: Exception) -> None:
        ex.outcome = outcome_of(exc)
        if not ex.logged:  # the app's error handler may have logged (and answered) it already
            log_500(scope, ex, exc)
        if not reply.started:
            await send_problem(reply, 500, "Internal error", [(b"x-request-id", ex.request_id.encode())],
                               requestId=ex.request_id)

    async def _cut_off(self, reply: _Reply, ex: RequestState) -> None:
        """The grace period ended (or a stream was stopped) with the request unfinished."""
        ex.outcome = Outcome.SHUTTING_DOWN
        if not reply.started:
            await send_problem(reply, 503, "The service is shutting down", [(b"connection", b"close")])
        elif not reply.finished and reply.chunked:
            await reply({"type": "http.response.body", "body": b"", "more_body": False})

    def _observe(self, scope: dict, reply: _Reply, ex: RequestState, duration_s: float) -> None:
        if ex.stream:
            return  # a stream is not a request: its duration is how long the client stayed
        method = scope.get("method", "GET")
        route = f"{method if method in METHODS else 'OTHER'} {_template(scope, self.routes)}"
        status = reply.status or 499  # nothing sent: the client went away
        # No exception named it: an answer the app built itself (the rate limiter's 429 names its own).
        outcome = ex.outcome or (Outcome.ERROR if status >= 500 else Outcome.OK)
        tier = ex.tier or self.route_tiers.get(route)
        self.mon.observe_request(route, status, duration_s, outcome, tier, rated=ex.rated, stale=ex.stale)


# -- shedding ------------------------------------------------------------------------------

class Shedder:
    """Refuses, at the edge, what the kernel would refuse anyway (see the module doc, item 2).

    Rows are matched by method and path before routing: exact paths by a dict, templated
    ones (``{param}``) by their Starlette route's pattern. The queue's verdict comes from its
    published state and the breaker's from its published phase: two attribute reads while
    neither refuses.
    """

    def __init__(self, mon: Any, rows: Iterable[Any]) -> None:
        self.mon = mon
        self.routes: dict[tuple[str, str], Any] = {}
        self._templated: list[Any] = []
        for row in rows:
            if "{" in row.path:
                self._templated.append(row)
            else:
                self.routes.setdefault((row.method, row.path), row)
        if self._templated:
            self.routes.setdefault(("", ""), None)  # non-empty: `shed` is consulted
        self._queue_full = _pre_encoded(QueueFull(None, 0))

    def row_for(self, scope: dict) -> Any:
        method, path = scope.get("method", "GET"), scope["path"]
        row = self.routes.get((method, path))
        if row is None and self._templated:
            row = next((r for r in self._templated if r.method == method and
                        r.route.path_regex.match(path)), None)
        return row

    async def shed(self, scope: dict, reply: _Reply, ex: RequestState, has_body: bool) -> bool:
        """True when it answered the request (503) itself."""
        row = self.row_for(scope)
        if row is None:
            return False
        breaker = self.mon.breakers.get(getattr(row, "tier", None))
        if breaker is not None and breaker.state == "open" and not getattr(row, "fallback", False):
            stats = breaker.statistics()
            if stats.state == "open":  # (not enabled, or its open time is over: the guard decides)
                exc: Exception = CircuitOpen(row.tier, stats.retry_after_s)
                status, detail, headers, extra = problem_for(exc)
                body = problem_body(status, detail, outcome=Outcome.CIRCUIT_OPEN, **extra)
                fields = _headers(headers) + [(b"content-length", b"%d" % len(body))]
                return await self._answer(scope, reply, ex, row, Outcome.CIRCUIT_OPEN, fields, body,
                                          has_body)
        priority = getattr(row, "priority", None)
        if priority is not None and self.mon.queue.would_refuse(priority):
            headers, body = self._queue_full
            return await self._answer(scope, reply, ex, row, Outcome.QUEUE_FULL, headers, body, has_body)
        return False

    @staticmethod
    async def _answer(scope: dict, reply: _Reply, ex: RequestState, row: Any, outcome: Outcome,
                      headers: list[tuple[bytes, bytes]], body: bytes, has_body: bool) -> bool:
        ex.outcome, ex.tier = outcome, getattr(row, "tier", None)
        if getattr(row, "route", None) is not None:
            scope["route"] = row.route  # the request metrics name its route template
        if has_body:  # never read: the connection cannot carry another request
            headers = [*headers, (b"connection", b"close")]
        await reply({"type": "http.response.start", "status": 503, "headers": headers})
        await reply({"type": "http.response.body", "body": body})
        return True


def _pre_encoded(exc: Exception) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The kernel's problem body for `exc` (as `problems.error_response` would answer it), once."""
    status, detail, headers, extra = problem_for(exc)
    body = problem_body(status, detail, outcome=outcome_of(exc), **extra)
    return _headers(headers) + [(b"content-length", b"%d" % len(body))], body


def _headers(fields: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/problem+json"), (b"cache-control", b"no-store"),
            *((k.encode(), v.encode()) for k, v in fields.items())]


def _template(scope: dict, routes: Sequence[BaseRoute]) -> str:
    route = scope.get("route")
    if route is None:  # answered before routing: the route it would have reached (405's too)
        partial = None
        for candidate in routes:
            match, _ = candidate.matches(scope)
            if match is Match.FULL:
                route = candidate
                break
            if match is Match.PARTIAL and partial is None:
                partial = candidate
        route = route or partial
    return getattr(route, "path", None) or "<unmatched>"


def _body_headers(scope: dict) -> tuple[int | None, bool]:
    """(Content-Length or None, -1 if invalid; chunked?)."""
    length: int | None = None
    chunked = False
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = int(value) if value.isdigit() else -1
        elif name == b"transfer-encoding":
            chunked = True  # any coding: the body's length is not Content-Length
    return length, chunked


class _Reply:
    """`send`, remembering what was sent."""

    __slots__ = ("_send", "status", "started", "finished", "_headers")

    def __init__(self, send: Any) -> None:
        self._send = send
        self.status: int | None = None
        self.started = self.finished = False
        self._headers: Any = ()

    @property
    def chunked(self) -> bool:
        """The response started has no Content-Length (read only when a request is cut off)."""
        return not any(k.lower() == b"content-length" for k, _ in self._headers)

    async def __call__(self, message: dict) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.started, self.status = True, message["status"]
            self._headers = message.get("headers", ())
        elif kind == "http.response.body" and not message.get("more_body", False):
            self.finished = True
        await self._send(message)


class _BodyReader:
    """`receive` with a byte cap and one deadline for the whole body."""

    __slots__ = ("_receive", "_cap", "_deadline", "_seen", "_done")

    def __init__(self, receive: Any, cap: int, deadline: float) -> None:
        self._receive, self._cap, self._deadline = receive, cap, deadline
        self._seen, self._done = 0, False

    async def receive(self) -> dict:
        if self._done:
            return await self._receive()
        with trio.move_on_at(self._deadline):
            message = await self._receive()
            if message["type"] == "http.request":
                self._seen += len(message.get("body", b""))
                if self._seen > self._cap:
                    raise BodyTooLarge(f"Request body over {self._cap} bytes", limit=self._cap)
                self._done = not message.get("more_body", False)
            return message
        raise BodyTimeout("The request body did not arrive in time")


async def _drain(receive: Any) -> None:
    """Read a refused request's body to its end (bounded by the body cap and deadline) before
    answering: hypercorn's reader then waits for our answer instead of parsing the pipelined
    bytes behind it and closing the socket while the answer is being written."""
    with contextlib.suppress(Exception):
        while (await receive()).get("more_body"):
            pass
