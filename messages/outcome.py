"""How a call or a request ended: one vocabulary, and the one function that decides it.

Every place that reports an outcome — the guard (`mon.run`, `mon.guard`,
`mon.db`), the HTTP edge and its problem bodies, the metrics and the load
ledger — takes it from `outcome_of(exc)`, so a refusal is named the same way
in a metric label, a problem body's `outcome` field and a load report.

Each Triage error declares its outcome as a class attribute (`outcome`), so
the decision lives with the error and a new error class cannot be forgotten
here: one that declares nothing is an `error`. The two rules that are not a
declaration are about what Triage does not own: a `BaseException` that is not
an `Exception` (trio's `Cancelled`, `KeyboardInterrupt`) is `cancelled`, and a
psycopg `OperationalError` not marked `retriable` (the connection was lost
after SQL was sent) is `unknown`: the statement may have taken effect.
"""

from __future__ import annotations

from enum import StrEnum

import psycopg


class Outcome(StrEnum):
    """How a call ended. The value is what metrics, problem bodies and load reports carry."""

    OK = "ok"                          # done; or refused on the client's own terms (a 4xx)
    ERROR = "error"                    # failed: the service's fault
    UNKNOWN = "unknown"                # SQL was sent and the answer was lost: it may have committed
    RATE_LIMITED = "rate_limited"      # refused by a rate limit (429)
    CIRCUIT_OPEN = "circuit_open"      # refused by an open breaker
    QUEUE_FULL = "queue_full"          # refused or displaced by the admission queue (or cleared)
    QUEUE_TIMEOUT = "queue_timeout"    # not admitted in time (or the server at its connection limit)
    SHUTTING_DOWN = "shutting_down"    # refused or cut off by a shutdown
    CANCELLED = "cancelled"            # the caller went away


def outcome_of(exc: BaseException | None) -> Outcome:
    """The outcome of a call that raised `exc` (None: it returned)."""
    if exc is None:
        return Outcome.OK
    if not isinstance(exc, Exception):
        return Outcome.CANCELLED
    declared = getattr(type(exc), "outcome", None)
    if isinstance(declared, Outcome):
        return declared
    if isinstance(exc, psycopg.OperationalError) and not getattr(exc, "retriable", False):
        return Outcome.UNKNOWN
    if _client_error(exc):
        return Outcome.OK
    return Outcome.ERROR


def _client_error(exc: Exception) -> bool:
    """A framework's own 4xx (Starlette's `HTTPException(404)`): the client's doing, not a failure.
    Duck-typed on `status_code`, so this module needs no HTTP framework."""
    status = getattr(exc, "status_code", None)
    return type(status) is int and 400 <= status < 500
