"""The errors `mon.db` and the pool raise beyond psycopg's own.

Each carries `retriable`: True when no statement reached the server.
"""

from __future__ import annotations

import psycopg

from messages.errors import Refused, TriageError
from messages.outcome import Outcome


class DatabaseUnavailable(TriageError, psycopg.OperationalError):
    """No connection could be had: connecting is backing off after a failure."""

    def __init__(self, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s
        self.retriable = True
        super().__init__(f"Database unavailable: connecting is backing off; retry after {retry_after_s:.2f}s")


class ConnectionLimitReached(Refused, psycopg.OperationalError):
    """The server refused a new connection: it is at its connection limit (SQLSTATE 53300, or a
    pooler's "no more connections allowed"). Backpressure, not an outage: nothing was sent,
    retrying later is safe, and it is no verdict on the tier's breaker."""

    outcome = Outcome.QUEUE_TIMEOUT  # like a queue that did not admit in time

    def __init__(self, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s
        self.retriable = True
        super().__init__(f"Database at its connection limit; retry after {retry_after_s:.2f}s")


_LIMIT_WORDS = ("too many clients", "remaining connection slots are reserved",
                "no more connections allowed", "too many connections", "query_wait_timeout")


def connection_limit_reached(exc: BaseException) -> bool:
    """Whether a failed connect was the server's (or a pooler's) connection limit, or a pooler
    found no server connection for a statement in time (PgBouncer's `query_wait_timeout`: the
    statement never reached the server)."""
    if getattr(exc, "sqlstate", None) == "53300":
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    message = str(exc).lower()
    return any(w in message for w in _LIMIT_WORDS)


class DatabaseNotConfigured(TriageError):
    def __init__(self) -> None:
        super().__init__("no database configured: set DATABASE_URL (or enable the embedded database)")


class QueryTimeout(TriageError):
    """The statement was sent and did not finish within `timeout_s`; its outcome is unknown."""

    outcome = Outcome.UNKNOWN

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s, self.retriable = timeout_s, False
        super().__init__(f"Database query timed out after {timeout_s:g}s; cancel requested")
