"""`mon.db`: guarded PostgreSQL queries, trio-native, on pooled connections.

Theory of operation. Every call passes the tier's breaker, then asks the
admission queue for a slot *and* a pooled connection in one round trip (the
pool lives with the slots: one connection per slot at most, so the database
never sees more than `max_concurrent` of our backends). The query runs on a
`PgConnection` driven from the calling task; the connection goes back to the
pool with the slot, or is discarded if it broke, is inside a transaction it
should not be, or has outlived `max_lifetime_s`.

Errors are psycopg's own classes. Triage adds:
  * `DatabaseUnavailable` (an `OperationalError`): opening a connection is
    backing off after a failure; nothing was sent.
  * `QueryTimeout`: the caller's `timeout_s` expired; the server was asked to
    cancel the statement; its outcome is unknown.
Every error leaving `mon.db` carries `retriable`: True when no statement
reached the server, or the transaction it was in was rolled back.

Breaker verdicts: connection and timeout errors are failures; the tier's
ignored classes (by default psycopg's IntegrityError, ProgrammingError,
DataError — a caller's bad query) are not.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import trio

from actors.guard import observe_call
from actors.pg.connection import ConnectionLost, PgConnection, QueryResult
from actors.scheduler import CONNECT_BACKOFF_MIN_S, check_priority
from messages.commands import Admitted
from messages.config import Config, Priority
from messages.errors import Refused, TriageError, breaker_verdict
from messages.outcome import Outcome

Params = Sequence[Any] | dict[str, Any] | None

# Rolling back after an error or cancellation: how long before the connection is discarded.
ROLLBACK_TIMEOUT_S = 2.0


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
                "no more connections allowed", "too many connections")


def connection_limit_reached(exc: BaseException) -> bool:
    """Whether a failed connect was the server's (or a pooler's) connection limit."""
    if getattr(exc, "sqlstate", None) == "53300":
        return True
    return isinstance(exc, psycopg.OperationalError) and any(w in str(exc).lower() for w in _LIMIT_WORDS)


class DatabaseNotConfigured(TriageError):
    def __init__(self) -> None:
        super().__init__("no database configured: set DATABASE_URL (or enable the embedded database)")


class QueryTimeout(TriageError):
    """The statement was sent and did not finish within `timeout_s`; its outcome is unknown."""

    outcome = Outcome.UNKNOWN

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s, self.retriable = timeout_s, False
        super().__init__(f"Database query timed out after {timeout_s:g}s; cancel requested")


def _mark(exc: BaseException, retriable: bool) -> None:
    if isinstance(exc, Exception) and not hasattr(exc, "retriable"):
        with contextlib.suppress(AttributeError):
            exc.retriable = retriable  # type: ignore[attr-defined]


class _Lease:
    """One slot + one connection for the length of a call or a transaction."""

    __slots__ = ("db", "token", "conn", "connect_failed", "connect_limited", "t0", "waited", "trial",
                 "epoch", "breaker", "counted")

    def __init__(self, db: Database, breaker: Any) -> None:
        self.db, self.breaker = db, breaker
        self.conn: PgConnection | None = None
        self.connect_failed = self.connect_limited = False
        self.counted = False

    async def acquire(self, priority: int, queue_timeout_s: float | None) -> PgConnection:
        check_priority(priority)
        self.t0 = trio.current_time()
        try:
            self.trial, self.epoch = await self.breaker.permit()
        except BaseException as exc:
            observe_call(self.db._mon._metrics, self.breaker.tier, exc, self.t0, trio.current_time(), None)
            raise
        try:
            self.token, admitted = await self.db._queue.admit(priority, queue_timeout_s, conn=True,
                                                              probe=self.trial, now=self.t0)
        except BaseException as exc:
            if self.trial:
                await self.breaker.report("abandoned", True, self.epoch, 0.0)
            observe_call(self.db._mon._metrics, self.breaker.tier, exc, self.t0, trio.current_time(), None)
            raise
        self.waited = admitted.waited_s
        return await self._connection(admitted)

    async def _connection(self, admitted: Admitted) -> PgConnection:
        # The pool counts a connection for this slot when it gave one or leave to open one.
        self.counted = admitted.conn is not None or admitted.connect
        if admitted.unavailable_s:
            if admitted.limited:
                raise ConnectionLimitReached(admitted.unavailable_s)
            raise DatabaseUnavailable(admitted.unavailable_s)
        conn = admitted.conn
        if conn is not None and (conn.broken or trio.current_time() - conn.created_at > self.db.max_lifetime_s):
            conn.close_now()
            conn = None
        if conn is None:
            conn = await self._open()
        self.conn = conn
        return conn

    async def _open(self) -> PgConnection:
        try:
            conn = await self.db._connect()
        except BaseException as exc:
            self.connect_failed = isinstance(exc, Exception)
            if connection_limit_reached(exc):
                self.connect_limited = True
                raise ConnectionLimitReached(CONNECT_BACKOFF_MIN_S) from None
            _mark(exc, True)
            raise
        return conn

    async def reconnect(self) -> PgConnection:
        """The connection was found dead before the statement went out: a fresh one."""
        if self.conn is not None:
            self.conn.close_now()
            self.conn = None
        self.conn = await self._open()
        return self.conn

    async def release(self, exc: BaseException | None) -> None:
        conn, self.conn = self.conn, None
        keep = conn is not None and not conn.broken and not conn.in_transaction
        if conn is not None and not keep:
            conn.close_now()
        sent = self.db._queue.release(self.token, conn=conn if keep else None,
                                      discarded=self.counted and not keep,
                                      connect_failed=self.connect_failed,
                                      connect_limited=self.connect_limited)
        if not sent and conn is not None:
            conn.close_now()  # the system has shut down: nobody to give it back to
        now = trio.current_time()
        observe_call(self.db._mon._metrics, self.breaker.tier, exc, self.t0, now, self.waited)
        # A failure is applied before the caller gets control back (shielded, bounded).
        await self.breaker.report(breaker_verdict(exc, self.breaker.ignore), self.trial, self.epoch,
                                  now - self.t0 - self.waited)


class Watchdog:
    """The client-side bound on queries that have no `timeout_s` of their own.

    A cancel scope per query costs ~7 µs of trio bookkeeping (measured here), more than
    the rest of a guarded `SELECT 1`. So queries without an explicit timeout register
    their connection here instead, and this one task closes any connection whose query
    has outlived `query_timeout_s` (statement timeout + 2 s by default: the server has
    normally given up by then, so this only bites when the network is dead — a black
    hole). The waiting caller then gets `QueryTimeout`.
    """

    EVERY_S = 0.25

    def __init__(self) -> None:
        self._watched: dict[int, tuple[float, PgConnection]] = {}
        self.expired: set[int] = set()

    def watch(self, key: int, conn: PgConnection, deadline: float) -> None:
        self._watched[key] = (deadline, conn)

    def unwatch(self, key: int) -> bool:
        """Stop watching; True if the watchdog had closed the connection."""
        self._watched.pop(key, None)
        if key in self.expired:
            self.expired.discard(key)
            return True
        return False

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.EVERY_S)
            now = trio.current_time()
            for key, (deadline, conn) in list(self._watched.items()):
                if now >= deadline:
                    del self._watched[key]
                    self.expired.add(key)
                    conn.close_now()  # wakes the waiting caller with ConnectionLost


class Transaction:
    """The connection of an open transaction; statements run in order on it."""

    def __init__(self, db: Database, conn: PgConnection) -> None:
        self._db, self._conn = db, conn

    async def execute(self, query: str, params: Params = None) -> str:
        return (await self._db._execute(self._conn, query, params, None, None)).status

    async def fetch(self, query: str, params: Params = None, *, row_factory: Any = None) -> list:
        return (await self._db._execute(self._conn, query, params, row_factory, None)).rows

    async def fetchrow(self, query: str, params: Params = None, *, row_factory: Any = None) -> Any:
        rows = await self.fetch(query, params, row_factory=row_factory)
        return rows[0] if rows else None

    async def fetchval(self, query: str, params: Params = None) -> Any:
        rows = await self.fetch(query, params)
        return rows[0][0] if rows else None


class Database:
    """Guarded queries: `await mon.db.fetch(...)`, `async with mon.db.transaction() as tx`."""

    def __init__(self, mon: Any, config: Config, dsn: str | None, monitor: Any = None) -> None:
        self._mon, self._queue, self._dsn = mon, mon.queue, dsn
        db = config.database
        self.connect_timeout_s = db.connect_timeout_s
        self.statement_timeout_s = db.statement_timeout_s or config.queue.request_timeout_s
        self.query_timeout_s = db.query_timeout_s or self.statement_timeout_s + 2.0
        self.watchdog = Watchdog()
        self.max_lifetime_s = db.max_lifetime_s
        self.application_name = db.application_name
        self.monitor = monitor

    @property
    def configured(self) -> bool:
        return self._dsn is not None

    async def _connect(self) -> PgConnection:
        if self._dsn is None:
            raise DatabaseNotConfigured()
        return await PgConnection.connect(
            self._dsn, connect_timeout_s=self.connect_timeout_s,
            statement_timeout_s=self.statement_timeout_s, application_name=self.application_name)

    async def _run(self, query: str, params: Params, priority: int, tier: str,
                   timeout_s: float | None, row_factory: Any) -> QueryResult:
        lease = _Lease(self, self._mon._breaker(tier))
        exc_out: BaseException | None = None
        try:
            conn = await lease.acquire(priority, None)
            try:
                return await self._execute(conn, query, params, row_factory, timeout_s)
            except ConnectionLost as exc:
                if exc.statement_sent:
                    raise
                conn = await lease.reconnect()  # it died while idle: nothing was sent, try once more
                return await self._execute(conn, query, params, row_factory, timeout_s)
        except BaseException as exc:
            exc_out = exc
            _mark(exc, _retriable(exc))
            raise
        finally:
            if hasattr(lease, "token"):
                await lease.release(exc_out)

    async def _execute(self, conn: PgConnection, query: str, params: Params, row_factory: Any,
                       timeout_s: float | None) -> QueryResult:
        """Run one statement: the caller's `timeout_s` exactly, else the watchdog's bound."""
        if timeout_s is not None:
            return await _execute(conn, query, params, row_factory, timeout_s)
        key = id(conn)
        self.watchdog.watch(key, conn, trio.current_time() + self.query_timeout_s)
        try:
            return await conn.execute(query, params, row_factory=row_factory)
        except ConnectionLost:
            if key in self.watchdog.expired:
                raise QueryTimeout(self.query_timeout_s) from None
            raise
        finally:
            self.watchdog.unwatch(key)

    async def fetch(self, query: str, params: Params = None, *, priority: int = Priority.NORMAL,
                    tier: str = "database", timeout_s: float | None = None, row_factory: Any = None) -> list:
        """All rows (tuples, or what `row_factory` makes)."""
        return (await self._run(query, params, priority, tier, timeout_s, row_factory)).rows

    async def fetchrow(self, query: str, params: Params = None, *, priority: int = Priority.NORMAL,
                       tier: str = "database", timeout_s: float | None = None, row_factory: Any = None) -> Any:
        """The first row, or None."""
        rows = (await self._run(query, params, priority, tier, timeout_s, row_factory)).rows
        return rows[0] if rows else None

    async def fetchval(self, query: str, params: Params = None, *, priority: int = Priority.NORMAL,
                       tier: str = "database", timeout_s: float | None = None) -> Any:
        """The first column of the first row, or None."""
        rows = (await self._run(query, params, priority, tier, timeout_s, None)).rows
        return rows[0][0] if rows else None

    async def execute(self, query: str, params: Params = None, *, priority: int = Priority.NORMAL,
                      tier: str = "database", timeout_s: float | None = None) -> str:
        """The command status, e.g. "UPDATE 3"."""
        return (await self._run(query, params, priority, tier, timeout_s, None)).status

    @asynccontextmanager
    async def transaction(self, *, priority: int = Priority.NORMAL, tier: str = "database",
                          timeout_s: float | None = None) -> AsyncIterator[Transaction]:
        """One slot and one connection for the block; COMMIT if it ends normally, else ROLLBACK.

        `timeout_s` bounds the whole block (the statements and the COMMIT).
        """
        lease = _Lease(self, self._mon._breaker(tier))
        exc_out: BaseException | None = None
        try:
            conn = await lease.acquire(priority, None)
            with _deadline(timeout_s) as scope:
                try:
                    await self._execute(conn, "BEGIN", None, None, None)
                except ConnectionLost as exc:
                    if exc.statement_sent:
                        raise
                    conn = await lease.reconnect()
                    await self._execute(conn, "BEGIN", None, None, None)
                try:
                    yield Transaction(self, conn)
                except BaseException as exc:
                    # A connection lost mid-transaction was rolled back by the server: retriable.
                    _mark(exc, isinstance(exc, ConnectionLost) or _retriable(exc))
                    await _rollback(conn)
                    raise
                await self._execute(conn, "COMMIT", None, None, None)  # lost here: outcome unknown
            if scope is not None and scope.cancelled_caught:
                await _rollback(conn)
                raise QueryTimeout(timeout_s or 0.0)
        except BaseException as exc:
            exc_out = exc
            _mark(exc, _retriable(exc))
            raise
        finally:
            if hasattr(lease, "token"):
                await lease.release(exc_out)

    async def metrics(self) -> Any:
        """The spec's ConnectionMetrics from the latest probe (probes now if there was none)."""
        if self.monitor is None:
            raise DatabaseNotConfigured()
        current = self.monitor.metrics.value
        return current if current.checked_at is not None else await self.monitor.check_now()

    async def health_check(self) -> Any:
        """The spec's comprehensiveHealthCheck(): a fresh probe, outside the admission queue."""
        if self.monitor is None:
            raise DatabaseNotConfigured()
        return await self.monitor.check_now()

    def on_violation(self, callback: Any) -> Any:
        """The spec's startMonitoring(interval, callback): called with (violations, metrics)."""
        if self.monitor is None:
            raise DatabaseNotConfigured()
        return self.monitor.on_violation(callback)


class _deadline:
    """`trio.move_on_after(t)` when t is given, else nothing; yields the scope or None."""

    def __init__(self, timeout_s: float | None) -> None:
        self._scope = trio.move_on_after(timeout_s) if timeout_s is not None else None

    def __enter__(self) -> trio.CancelScope | None:
        return self._scope.__enter__() if self._scope is not None else None

    def __exit__(self, *exc: Any) -> bool | None:
        return self._scope.__exit__(*exc) if self._scope is not None else None


async def _execute(conn: PgConnection, query: str, params: Params, row_factory: Any,
                   timeout_s: float | None) -> QueryResult:
    if timeout_s is None:
        return await conn.execute(query, params, row_factory=row_factory)
    with trio.move_on_after(timeout_s):
        return await conn.execute(query, params, row_factory=row_factory)
    raise QueryTimeout(timeout_s)


async def _rollback(conn: PgConnection) -> None:
    """Roll back whatever the connection holds; discard it if that cannot be done quickly."""
    if conn.broken or not conn.in_transaction:
        return
    with trio.move_on_after(ROLLBACK_TIMEOUT_S, shield=True) as scope:
        try:
            await conn.execute("ROLLBACK")
        except psycopg.Error:
            conn.close_now()
    if scope.cancelled_caught:
        conn.close_now()


def _retriable(exc: BaseException) -> bool:
    """True when retrying cannot run a statement twice."""
    if isinstance(exc, ConnectionLost):
        return not exc.statement_sent
    return isinstance(exc, (DatabaseUnavailable, DatabaseNotConfigured))
