"""`mon.db`: guarded PostgreSQL queries, trio-native, on pooled connections.

Theory of operation. Every call goes through the one guard `mon.run` and
`mon.guard` use (`actors.guard.Guard`: breaker permit, admission, outcome,
metrics), asking for a slot *and* a pooled connection in one grant (the pool,
`actors.pg.pool`, gives at most one connection per slot, so the database never
sees more than `max_concurrent` of our backends). The usual call (breaker
CLOSED, a slot and its connection on offer, no `timeout_s`) does what the guard
would do without making one: it takes the offer, runs the statement, and on
success puts the offer back, tells the metrics and counts the success
(`_run`); anything else that happens to it (an error, a
cancellation) gets the guard it would have had, holding that slot (`_failed`).
The query runs on a `PgConnection` driven from the calling task; the connection goes back to the
pool with the slot, or is discarded if it broke, is inside a transaction it
should not be, has outlived `max_lifetime_s`, or had a cancel request sent.

No session state (behind PgBouncer in transaction mode sessions are shared): the
statement timeout is the watchdog's, a cancel request from the client. With
`priority_dsn` the call's priority picks its DSN (e.g. another PgBouncer pool user);
the pool hands out a connection to that DSN, still one per slot.

Errors are psycopg's own classes. Triage adds:
  * `DatabaseUnavailable` (an `OperationalError`): opening a connection is
    backing off after a failure; nothing was sent.
  * `QueryTimeout`: the caller's `timeout_s` (or the statement timeout) expired; the
    server was asked to cancel the statement; its outcome is unknown.
  * `ConnectionLimitReached` (a `Refused`): the server or a pooler is at its connection
    limit, or PgBouncer found no server connection in time (`query_wait_timeout`);
    nothing reached the server. Backpressure, no breaker failure.
Every error leaving `mon.db` carries `retriable`: True when no statement
reached the server, or the transaction it was in was rolled back.

Breaker verdicts: connection and timeout errors are failures; the tier's
ignored classes (by default psycopg's IntegrityError, ProgrammingError,
DataError — a caller's bad query) are not.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import trio

from actors.guard import Guard, Guards
from actors.pg.connection import ConnectionLost, PgConnection, QueryResult
from actors.pg.errors import (
    ConnectionLimitReached,
    DatabaseNotConfigured,
    DatabaseUnavailable,
    QueryTimeout,
    connection_limit_reached,
)
from actors.pg.pool import CONNECT_BACKOFF_MIN_S, ConnectionLease, Connections, release_with
from messages.config import Config, Priority

__all__ = ["ConnectionLimitReached", "Database", "DatabaseNotConfigured", "DatabaseUnavailable",
           "QueryTimeout", "Transaction", "connection_limit_reached"]

Params = Sequence[Any] | dict[str, Any] | None

# Rolling back after an error or cancellation: how long before the connection is discarded.
ROLLBACK_TIMEOUT_S = 2.0
# The watchdog's verdicts (`PgConnection.watchdog_verdict`).
CANCELLED, EXPIRED = "cancelled", "expired"

# What a query method returns of its statement's result (`Database._run`'s `shape`).
_ROWS, _ROW, _VALUE, _STATUS = range(4)


def _shaped(result: QueryResult, shape: int) -> Any:
    """The rows (`fetch`), the first row (`fetchrow`), its first value (`fetchval`) or the
    command status (`execute`) of `result`."""
    if shape == _STATUS:
        return result.status
    rows = result.rows
    if shape == _ROWS:
        return rows
    if not rows:
        return None
    return rows[0][0] if shape == _VALUE else rows[0]


def _mark(exc: BaseException, retriable: bool) -> None:
    if isinstance(exc, Exception) and not hasattr(exc, "retriable"):
        with contextlib.suppress(AttributeError):
            exc.retriable = retriable  # type: ignore[attr-defined]


class Watchdog:
    """The client-side bound on queries that have no `timeout_s` of their own.

    A cancel scope per query costs ~7 µs of trio bookkeeping (measured here), more than
    the rest of a guarded `SELECT 1`. So queries without an explicit timeout register
    their connection here instead, with the instant it is given up (`query_timeout_s`:
    statement timeout + 2 s by default). `cancel_lead_s` before that (at the statement
    timeout) this one task asks the server to cancel the statement — the statement timeout,
    kept on the client so no session state is set (a pooler in transaction mode shares
    sessions); the caller then gets `QueryTimeout`. If the server has not answered by the
    deadline (a dead network: a black hole), the connection is closed and the waiting caller
    gets `QueryTimeout` all the same.
    """

    EVERY_S = 0.25

    def __init__(self, cancel_lead_s: float = 0.0) -> None:
        # The connections with a statement in flight, and when each is given up. A caller may
        # set and pop its entry itself (`Database._run`: the hot path, no method call).
        self.watched: dict[PgConnection, float] = {}
        self._lead = cancel_lead_s

    def watch(self, conn: PgConnection, deadline: float) -> None:
        self.watched[conn] = deadline

    def unwatch(self, conn: PgConnection) -> bool:
        """Stop watching; True if the watchdog gave up on the statement (the query timeout).

        The watchdog's verdict is on the connection until then (`conn.watchdog_verdict`, read
        by the caller first): "cancelled", the server was asked to cancel the statement at the
        statement timeout; "expired", the watchdog closes the connection at the query timeout.
        It is the verdict on this statement: cleared here, so a later statement on the same
        (closed) connection fails as what it is, `ConnectionLost` with nothing sent.
        Such a connection is closed here, never reused (the pool opens another): a statement
        that ended while its cancel request was on its way (it finished just as the statement
        timeout came) leaves that request to land on whatever the connection runs next —
        another caller's insert, the next statement of a transaction; and one that ended as
        the query timeout came must not go back to the pool before the watchdog's close."""
        self.watched.pop(conn, None)
        verdict = conn.watchdog_verdict
        if verdict is None:
            return False
        conn.close_now()  # (its statement has ended: no cancel request is needed any more)
        conn.watchdog_verdict = None
        return verdict == EXPIRED

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:  # the cancel requests in flight
            task_status.started()
            while True:
                await trio.sleep(self.EVERY_S)
                self._check(nursery, trio.current_time())

    def _check(self, nursery: trio.Nursery, now: float) -> None:
        lead = self._lead
        for conn, deadline in list(self.watched.items()):
            if now >= deadline:
                del self.watched[conn]
                cancel_sent = conn.watchdog_verdict is not None
                conn.watchdog_verdict = EXPIRED
                if cancel_sent:
                    conn.close_now()  # wakes the waiting caller with ConnectionLost
                else:  # no cancel sent yet: send it, then close (the server must stop too)
                    nursery.start_soon(conn.close)
            elif lead > 0 and now >= deadline - lead and conn.watchdog_verdict is None:
                conn.watchdog_verdict = CANCELLED
                nursery.start_soon(conn.cancel)


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

    def __init__(self, guards: Guards, config: Config, dsn: str | None, monitor: Any = None,
                 priority_dsn: dict[int, str] | None = None) -> None:
        """`priority_dsn`: priority value -> DSN for those calls (the others use `dsn`)."""
        self._guards, self.queue, self._dsn = guards, guards.queue, dsn
        self._routes, self._serves = _routes(dsn, priority_dsn or {})
        if len(set(self._routes.values())) > 1 and self.queue.offers is not None:
            self.queue.offers.routed = True
        db = config.database
        self.connect_timeout_s = db.connect_timeout_s
        self.statement_timeout_s = db.statement_timeout_s or config.queue.request_timeout_s
        self.query_timeout_s = db.query_timeout_s or self.statement_timeout_s + 2.0
        self.watchdog = Watchdog(cancel_lead_s=self.query_timeout_s - self.statement_timeout_s)
        self.max_lifetime_s = db.max_lifetime_s
        self.application_name = db.application_name
        self.monitor = monitor
        self.connections = Connections(self._connect, db.max_lifetime_s)
        # What `_run` reads on every call.
        self._now = trio.lowlevel.current_clock().current_time  # made inside the run it serves
        self._watched = self.watchdog.watched
        self._offers = offers = self.queue.offers
        # The offered path is off with several DSNs (an offer's connection must suit the call's
        # priority: the guard matches them) and once the system closes (`stop_offering`).
        self._entries = offers.entries if offers is not None and not offers.routed else ()
        self._breakers, self._metrics = guards.breakers, guards.metrics

    def stop_offering(self) -> None:
        """The system is closing: from now on every call goes through the guard, which refuses
        it (`ShuttingDown`), instead of taking an offered slot."""
        self._entries = ()

    @property
    def configured(self) -> bool:
        return self._dsn is not None

    async def _connect(self, priority: int | None = None) -> PgConnection:
        """A connection to the DSN for `priority`. No session settings (a pooler in transaction
        mode shares sessions): the statement timeout is the watchdog's, on the client."""
        dsn = self._routes.get(priority, self._dsn) if priority is not None else self._dsn
        if dsn is None:
            raise DatabaseNotConfigured()
        conn = await PgConnection.connect(
            dsn, connect_timeout_s=self.connect_timeout_s, application_name=self.application_name)
        conn.serves = self._serves.get(dsn)
        return conn

    def _guarded(self, tier: str, priority: int) -> tuple[Guard, ConnectionLease]:
        """The one guard (breaker, slot, outcome, metrics) plus the slot's pooled connection."""
        return self._guards(tier, priority, None, conn=True), self.connections.lease(priority)

    async def _run(self, query: str, params: Params, priority: int, tier: str,
                   timeout_s: float | None, row_factory: Any, shape: int) -> Any:
        """One guarded statement; what `shape` says of its result. The usual call takes its
        slot and connection from the offer list, without a coroutine or a guard object, when
        nothing needs deciding: no `timeout_s`, the priority a `Priority`, one DSN serving
        all, the system running, the breaker admitting from its published state (CLOSED, or
        off), an offered connection within its lifetime. Any other call goes through the guard (`_run_guarded`). (A connection
        libpq found dead is found by `execute`, before sending: then the failure path
        opens another, as `ConnectionLease.vet` would have.)"""
        entries = self._entries
        breaker = self._breakers.get(tier) if entries and timeout_s is None else None
        if breaker is None or type(priority) is not Priority or (epoch := breaker.admitting_epoch()) is None:
            return _shaped(await self._run_guarded(query, params, priority, tier, timeout_s, row_factory), shape)
        token, granted = entries[-1]
        conn = granted.conn
        now = self._now()
        offers = self._offers
        inbox = offers.inbox  # closed: the scheduler has stopped, and the guard says ShuttingDown
        if conn is None or now - conn.created_at > self.max_lifetime_s or inbox.closed:
            return _shaped(await self._run_guarded(query, params, priority, tier, timeout_s, row_factory), shape)
        inbox.tally += 1  # as `Offers.take` tells the scheduler (`tell_count`, without its frame)
        entries.pop()
        watched = self._watched
        watched[conn] = now + self.query_timeout_s  # `Watchdog.watch`, inline
        try:
            result = await conn.execute(query, params, row_factory=row_factory)
        except BaseException as exc:
            # Anything but success: the guard the call would have had, holding this slot, and
            # the same handling as every other call (timeouts, a retry, the breaker's verdict).
            guard = self._guards.holding(breaker, priority, token, granted, now, epoch)
            held = self.connections.lease(priority)
            held.adopt(conn)
            return _shaped(await self._failed(guard, held, exc, conn, query, params, row_factory), shape)
        # Success: what `Guard.leave` does, without the guard. The watch ended, the slot back
        # (the connection with it when clean: straight onto the offer list while nobody
        # waits), the metrics told, a success counted.
        watched.pop(conn, None)  # (gone if the watchdog gave up on it just as it ended)
        if conn.reusable and offers.may_keep(conn):  # `release_with`'s usual end, written out
            entries.append((token, granted))  # (two frames less): the offer back as it came
        else:  # e.g. a watchdog's verdict: the connection is discarded
            release_with(self.queue, token, conn, counted=True, lease=granted)
        end = conn.last_used_at  # `execute` read the clock as it returned
        self._metrics.tell_call((tier, priority), end - now, granted.waited_s)  # as `observe_call`
        if not breaker.count_success():  # the breaker left CLOSED meanwhile: it must hear this
            await breaker.report("success", False, epoch, end - now - granted.waited_s)
        if shape == _VALUE:  # `_shaped`, inline for the commonest two
            rows = result.rows
            return rows[0][0] if rows else None
        return result.rows if shape == _ROWS else _shaped(result, shape)

    async def _failed(self, guard: Guard, held: ConnectionLease, exc: BaseException, conn: PgConnection,
                      query: str, params: Params, row_factory: Any) -> QueryResult:
        """An offered call's statement raised `exc`: handled as `_run_guarded` handles it."""
        exc_out: BaseException | None = exc
        try:
            try:
                try:
                    if isinstance(exc, (ConnectionLost, psycopg.errors.QueryCanceled)):
                        self._raise_if_timed_out(conn, exc)
                    raise exc
                finally:
                    self.watchdog.unwatch(conn)
            except ConnectionLost as lost:
                result = await self._retry_lost(held, lost, query, params, row_factory, None)
                exc_out = None
                return result
        except BaseException as exc2:
            exc_out = exc2
            _mark(exc2, _retriable(exc2))
            raise
        finally:
            if not guard.leave(exc_out, held):
                await guard.report(exc_out)

    async def _run_guarded(self, query: str, params: Params, priority: int, tier: str,
                           timeout_s: float | None, row_factory: Any) -> QueryResult:
        guard = held = None
        exc_out: BaseException | None = None
        try:
            guard, held = self._guarded(tier, priority)
            conn = await _enter(guard, held)
            try:
                return await self._execute(conn, query, params, row_factory, timeout_s)
            except ConnectionLost as exc:
                return await self._retry_lost(held, exc, query, params, row_factory, timeout_s)
        except BaseException as exc:
            exc_out = exc
            _mark(exc, _retriable(exc))
            raise
        finally:
            if guard is not None and guard.entered and not guard.leave(exc_out, held):
                await guard.report(exc_out)

    async def _retry_lost(self, held: ConnectionLease, exc: ConnectionLost, query: str, params: Params,
                          row_factory: Any, timeout_s: float | None) -> QueryResult:
        """The connection was lost: a pooler at its limit, outcome unknown, or (nothing was sent:
        it died while idle) one more try on a fresh connection."""
        if connection_limit_reached(exc):  # a pooler found no server connection: nothing ran
            raise ConnectionLimitReached(CONNECT_BACKOFF_MIN_S) from None
        if exc.statement_sent:
            raise exc
        conn = await held.reconnect()
        return await self._execute(conn, query, params, row_factory, timeout_s)

    async def _execute(self, conn: PgConnection, query: str, params: Params, row_factory: Any,
                       timeout_s: float | None) -> QueryResult:
        """Run one statement: the caller's `timeout_s` exactly, else the watchdog's bound."""
        if timeout_s is not None:
            return await _execute(conn, query, params, row_factory, timeout_s)
        watchdog = self.watchdog
        watchdog.watch(conn, self._now() + self.query_timeout_s)
        try:
            return await conn.execute(query, params, row_factory=row_factory)
        except (ConnectionLost, psycopg.errors.QueryCanceled) as exc:
            self._raise_if_timed_out(conn, exc)
            raise
        finally:
            watchdog.unwatch(conn)

    def _raise_if_timed_out(self, conn: PgConnection, exc: BaseException) -> None:
        """QueryTimeout if the watchdog ended the statement: it closed the connection past
        `query_timeout_s` (ConnectionLost), or had the server cancel it at the statement
        timeout (QueryCanceled)."""
        verdict = conn.watchdog_verdict
        if isinstance(exc, ConnectionLost):
            if verdict == EXPIRED:
                raise QueryTimeout(self.query_timeout_s) from None
        elif verdict is not None:
            raise QueryTimeout(self.statement_timeout_s) from None

    # The query methods are plain functions returning `_run`'s coroutine: awaiting it is the
    # call (one coroutine a query, not two).
    def fetch(self, query: str, params: Params = None, *, priority: int = Priority.NORMAL,
              tier: str = "database", timeout_s: float | None = None, row_factory: Any = None) -> Awaitable[list]:
        """All rows (tuples, or what `row_factory` makes)."""
        return self._run(query, params, priority, tier, timeout_s, row_factory, _ROWS)

    def fetchrow(self, query: str, params: Params = None, *, priority: int = Priority.NORMAL,
                 tier: str = "database", timeout_s: float | None = None, row_factory: Any = None) -> Awaitable[Any]:
        """The first row, or None."""
        return self._run(query, params, priority, tier, timeout_s, row_factory, _ROW)

    def fetchval(self, query: str, params: Params = None, *, priority: int = Priority.NORMAL,
                 tier: str = "database", timeout_s: float | None = None) -> Awaitable[Any]:
        """The first column of the first row, or None."""
        return self._run(query, params, priority, tier, timeout_s, None, _VALUE)

    def execute(self, query: str, params: Params = None, *, priority: int = Priority.NORMAL,
                tier: str = "database", timeout_s: float | None = None) -> Awaitable[str]:
        """The command status, e.g. "UPDATE 3"."""
        return self._run(query, params, priority, tier, timeout_s, None, _STATUS)

    @asynccontextmanager
    async def transaction(self, *, priority: int = Priority.NORMAL, tier: str = "database",
                          timeout_s: float | None = None) -> AsyncIterator[Transaction]:
        """One slot and one connection for the block; COMMIT if it ends normally, else ROLLBACK.

        `timeout_s` bounds the whole block (the statements and the COMMIT).
        """
        guard = held = None
        exc_out: BaseException | None = None
        try:
            guard, held = self._guarded(tier, priority)
            conn = await _enter(guard, held)
            with _deadline(timeout_s) as scope:
                try:
                    await self._execute(conn, "BEGIN", None, None, None)
                except ConnectionLost as exc:
                    if connection_limit_reached(exc):
                        raise ConnectionLimitReached(CONNECT_BACKOFF_MIN_S) from None
                    if exc.statement_sent:
                        raise
                    conn = await held.reconnect()
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
            if guard is not None and guard.entered and not guard.leave(exc_out, held):
                await guard.report(exc_out)

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


def _routes(dsn: str | None, priority_dsn: dict[int, str]) -> tuple[dict[int, str], dict[str, frozenset]]:
    """(priority -> DSN, DSN -> the priorities it serves); one DSN for all: no `serves` entry."""
    routes = {p.value: priority_dsn.get(p.value, dsn) for p in Priority if priority_dsn.get(p.value, dsn)}
    if len(set(routes.values())) <= 1:
        return routes, {}
    serves: dict[str, set] = {}
    for p, d in routes.items():
        serves.setdefault(d, set()).add(p)
    return routes, {d: frozenset(ps) for d, ps in serves.items()}


class _deadline:
    """`trio.move_on_after(t)` when t is given, else nothing; yields the scope or None."""

    def __init__(self, timeout_s: float | None) -> None:
        self._scope = trio.move_on_after(timeout_s) if timeout_s is not None else None

    def __enter__(self) -> trio.CancelScope | None:
        return self._scope.__enter__() if self._scope is not None else None

    def __exit__(self, *exc: Any) -> bool | None:
        return self._scope.__exit__(*exc) if self._scope is not None else None


async def _enter(guard: Guard, held: ConnectionLease) -> PgConnection:
    """The slot and its connection. The usual call takes an offered slot and its connection
    without a coroutine (breaker CLOSED, a slot on offer, the connection fit for use)."""
    now = trio.current_time()
    admitted = guard.enter_now(now)
    if admitted is None:
        return await held.take(await guard.enter())
    conn = held.vet(admitted, now)
    return conn if conn is not None else await held.open()


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
    """True when retrying cannot run a statement twice. (A refusal — `CircuitOpen`,
    `QueueFull`, `ShuttingDown`... — says so itself: `Refused.retriable`.)"""
    if isinstance(exc, ConnectionLost):
        return not exc.statement_sent
    return isinstance(exc, (DatabaseUnavailable, DatabaseNotConfigured))
