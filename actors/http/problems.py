"""Expected failures as HTTP answers: RFC 9457 problem bodies, one mapping for every error.

`error_response` is registered with Starlette for every expected failure, so
a handler simply lets `CircuitOpen`, `QueueFull`, a psycopg error or its own
`WebError` propagate. The mapping (`problem_for`) is the one place that decides
the status and the ``Retry-After``; the outcome the metrics record (and a
refusal's body carries as `outcome`) is `messages.outcome.outcome_of`'s. A
database error's text never reaches the client: it may hold SQL, values or
the server's host.

    RateLimited                     429 + Retry-After
    CircuitOpen                     503 + Retry-After (the breaker's remaining open time)
    QueueFull / QueueCleared        503 + Retry-After: 1
    QueueTimeout                    503 + Retry-After: 1
    ShuttingDown                    503 + Retry-After: 5
    ConnectionLimitReached          503 + Retry-After, outcome "queue_timeout" (server at its limit)
    DatabaseUnavailable             503 + Retry-After (nothing was sent)
    psycopg.OperationalError with `retriable` (never sent, or rolled back)   503 + Retry-After
    QueryTimeout                    504, outcome "unknown", no Retry-After (it may have committed)
    any other psycopg.OperationalError (e.g. lost after COMMIT was sent)
                                    502, outcome "unknown", no Retry-After
    any other psycopg error         500 "Database error" (+ requestId, logged once)
    WebError (bad input, conflict)  its own status (400, 401, 404, 408, 409, 413, 422, 503)
    anything else                   500 "Internal error"
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgspec
import psycopg
from loguru import logger
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from actors.pg.database import (
    ConnectionLimitReached,
    DatabaseNotConfigured,
    DatabaseUnavailable,
    QueryTimeout,
)
from messages.errors import (
    ActorCrashed,
    CircuitOpen,
    QueueCleared,
    QueueFull,
    QueueTimeout,
    RateLimited,
    Refused,
    ShuttingDown,
    TriageError,
)
from messages.outcome import Outcome, outcome_of

PROBLEM = "application/problem+json"
log = logger.bind(actor="web")


class WebError(Exception):
    """A request the app refuses on its own terms (bad input, conflict…): status + detail."""

    outcome = Outcome.OK  # the client's doing, not the service failing

    status = 400
    title = "Bad Request"

    def __init__(self, detail: str, status: int | None = None, *, retry_after_s: float | None = None,
                 **extra: Any) -> None:
        super().__init__(detail)
        self.detail, self.extra = detail, extra
        self.headers = _retry(retry_after_s) if retry_after_s is not None else {}
        if status is not None:
            self.status = status
            self.title = _TITLES.get(status, "Error")


class BodyTooLarge(WebError):
    status, title = 413, "Content Too Large"


class BodyTimeout(WebError):
    status, title = 408, "Request Timeout"


_TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 413: "Content Too Large",
           415: "Unsupported Media Type", 422: "Unprocessable Content", 429: "Too Many Requests",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
           504: "Gateway Timeout"}


class RequestState:
    """What a handler tells the edge about its request; and, for a stream, the server's own
    `send` (before any middleware wraps it: `actors.http.wire` writes past it)."""

    __slots__ = ("outcome", "rated", "stale", "tier", "stream", "_request_id", "logged", "server_send")

    def __init__(self, server_send: Any = None) -> None:
        self.server_send = server_send
        self.outcome: Outcome | None = None
        self.rated = True  # False: in no error rate (health's own answers, see `app.health`)
        self.stale = False  # True: a fallback answer (cached data while the database is refused)
        self.tier: str | None = None
        self.stream = False
        self._request_id: str | None = None
        self.logged = False

    @property
    def request_id(self) -> str:
        """Carried by a 500's body and its one log line; made on first use (most requests never need one)."""
        if self._request_id is None:
            self._request_id = secrets.token_hex(8)
        return self._request_id


def log_500(scope: dict, ex: RequestState, exc: BaseException) -> None:
    """The one log line of a 500: request id, route, error class; a traceback only for our own bugs
    (a database error's text may hold the caller's values)."""
    ex.logged = True
    route = getattr(scope.get("route"), "path", None) or "<unmatched>"
    fields = {"request_id": ex.request_id, "method": scope.get("method"), "route": route,
              "error": type(exc).__name__}
    if isinstance(exc, psycopg.Error):
        log.error("Database error answered 500", sqlstate=getattr(exc, "sqlstate", None), **fields)
    else:
        log.opt(exception=exc).error("Unhandled error answered 500", **fields)


def exchange(request: Request) -> RequestState:
    return request.scope.get("triage") or RequestState()


# -- problem bodies (RFC 9457) ------------------------------------------------------------

def problem_body(status: int, detail: str, title: str | None = None, **extra: Any) -> bytes:
    return msgspec.json.encode({"type": "about:blank", "title": title or _TITLES.get(status, "Error"),
                                "status": status, "detail": detail, **extra})


def problem(status: int, detail: str, *, title: str | None = None,
            headers: Mapping[str, str] | None = None, **extra: Any) -> Response:
    return Response(problem_body(status, detail, title, **extra), status_code=status,
                    headers={"cache-control": "no-store", **(headers or {})}, media_type=PROBLEM)


async def send_problem(send: Any, status: int, detail: str, headers: Iterable[tuple[bytes, bytes]] = (),
                       **extra: Any) -> None:
    body = problem_body(status, detail, **extra)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", PROBLEM.encode()), (b"content-length", b"%d" % len(body)),
                            (b"cache-control", b"no-store"), *headers]})
    await send({"type": "http.response.body", "body": body})


def _retry(seconds: float | None) -> dict[str, str]:
    if seconds is not None and not math.isfinite(seconds):
        return {}  # a request costing more than the whole quota: retrying never helps
    return {"retry-after": str(max(1, math.ceil(seconds or 1)))}


def error_response(request: Request, exc: Exception) -> Response:
    """The HTTP answer for an expected failure; sets the request's outcome."""
    if isinstance(exc, ClientDisconnect):
        raise exc  # nobody to answer: the edge records it
    ex = exchange(request)
    status, detail, headers, extra = problem_for(exc)
    outcome = outcome_of(exc)
    ex.outcome = ex.outcome or outcome
    if status == 405 and isinstance(exc, HTTPException) and exc.headers:
        headers = {**headers, **exc.headers}
    if outcome not in (Outcome.OK, Outcome.ERROR):  # load tools and clients can tell 503s apart
        extra = {**extra, "outcome": outcome}
    if status == 500:
        if not ex.logged:
            log_500(request.scope, ex, exc)
        headers, extra = {**headers, "x-request-id": ex.request_id}, {**extra, "requestId": ex.request_id}
    return problem(status, detail, headers=headers, **extra)


def problem_for(exc: Exception) -> tuple[int, str, dict[str, str], dict[str, Any]]:
    match exc:
        case BodyTooLarge() | BodyTimeout():  # the rest of the body is not read: close
            return exc.status, exc.detail, {"connection": "close"}, exc.extra
        case WebError():
            return exc.status, exc.detail, exc.headers, exc.extra
        case HTTPException(status_code=404):
            return 404, "No such route", {}, {}
        case HTTPException(status_code=405):
            return 405, "Method not allowed for this route", {}, {}
        case HTTPException():
            return exc.status_code, str(exc.detail), dict(exc.headers or {}), {}
        case RateLimited():
            return 429, f"Rate limit exceeded for policy {exc.policy!r}", _retry(exc.retry_after_s), {}
    return _refusal(exc) or _database(exc)


def _refusal(exc: Exception) -> tuple[int, str, dict[str, str], dict[str, Any]] | None:
    """Refused before any SQL was sent: 503 + Retry-After, retrying is safe."""
    match exc:
        case CircuitOpen():
            return 503, f"Circuit breaker {exc.tier!r} is open; retry later", _retry(exc.retry_after_s), {"tier": exc.tier}
        case QueueFull() | QueueCleared():
            return 503, "Server busy: the request queue is full", _retry(1), {}
        case QueueTimeout():
            return 503, "Server busy: the request was not admitted in time", _retry(1), {}
        case ShuttingDown():
            return 503, "The service is shutting down", _retry(5), {}
        case ConnectionLimitReached():  # backpressure, like a queue that did not admit in time
            return 503, "Server busy: the database is at its connection limit", \
                _retry(exc.retry_after_s), {}
        case DatabaseUnavailable():
            return 503, "Database unavailable", _retry(exc.retry_after_s), {}
        case DatabaseNotConfigured():
            return 503, "No database configured", _retry(30), {}
        case ActorCrashed() | Refused():
            return 503, "Service temporarily unavailable", _retry(1), {}
    return None


def _database(exc: Exception) -> tuple[int, str, dict[str, str], dict[str, Any]]:
    """After SQL was sent. `retriable` (set by `mon.db`) is True only when nothing can have been
    done (never sent, or rolled back); otherwise the write may have committed: 502/504, no
    Retry-After, outcome "unknown", so that no client is told a retry is safe."""
    match exc:
        case QueryTimeout():
            return 504, "Database query timed out; whether it took effect is unknown", {}, {}
        case psycopg.OperationalError() if getattr(exc, "retriable", False):
            return 503, "Database unavailable", _retry(1), {}
        case psycopg.OperationalError():
            return 502, "Database connection lost; whether the request took effect is unknown", {}, {}
        case psycopg.Error() | TriageError():  # never the SQL text or the server's message
            return 500, "Database error", {}, {}
    return 500, "Internal error", {}, {}


def handled_errors() -> dict[Any, Callable[[Request, Exception], Response]]:
    """Starlette `exception_handlers` for every expected failure (500 for the rest)."""
    return {HTTPException: error_response, WebError: error_response, TriageError: error_response,
            psycopg.Error: error_response, Exception: error_response}
