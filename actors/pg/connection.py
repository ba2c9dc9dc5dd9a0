"""A trio-native PostgreSQL connection on top of psycopg's libpq wrapper.

Theory of operation
-------------------
psycopg's async API only runs on asyncio and its sync API blocks the thread,
so this module drives libpq directly, non-blocking, from the calling trio
task. No threads are involved in a query.

* Connect: host names are resolved with trio's resolver and handed to libpq as
  numeric ``hostaddr`` (libpq's own getaddrinfo would block the event loop);
  then ``PGconn.connect_start`` + ``connect_poll``, waiting on the socket with
  ``trio.lowlevel.wait_readable/wait_writable``. The live ``PGconn`` is
  wrapped in a ``psycopg.Connection`` only so that psycopg's adapters,
  transformers and row factories have the context they expect; we never run
  a query through it.
* Query: parameters are bound server-side by psycopg's own machinery, exactly
  as ``psycopg.Cursor`` does, and sent with ``send_query_params``; a query
  without parameters goes over the simple protocol (``send_query``), so it
  may hold several statements. Then flush, and collect results with
  ``consume_input``/``is_busy``/``get_result``. A statement sent back to back
  with the connection's previous one (within ``back_to_back_s``: a loop, a
  transaction, a batch) yields once after sending before it looks for its
  answer: the other tasks run meanwhile, the answer is in by then and is read
  without registering the socket with epoll. Any other statement waits for its
  answer at once, as does a connection whose answers lately were not in after
  that yield. Rows are loaded by a ``psycopg.adapt.Transformer``, so types
  round-trip as they do in psycopg.
* Errors: a failed result raises psycopg's class for its SQLSTATE with
  ``.diag`` populated; its message is the server's primary message only
  (DETAIL can echo parameter values). Losing the connection raises
  ``ConnectionLost`` and leaves ``broken = True``.
* Cancellation: if the calling task is cancelled mid-query, a cancel request is
  sent over libpq's non-blocking ``PGcancelConn``, and the connection is
  drained back to idle under a short shielded deadline, or closed.

One query at a time per connection; the pool owns concurrency.

psycopg internals used (each isolated in one function in `actors.pg.psycopg_bridge` and pinned by a
``test_pgconn_internals_*`` test): ``psycopg._queries.PostgresQuery`` for
placeholder conversion, the ``psycopg.Connection(pgconn)`` constructor, the
``info=`` argument of psycopg's exceptions, and the cursor attributes that
row factories read (``pgresult``, ``_encoding``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import psycopg
import psycopg.errors
import trio
from loguru import logger
from psycopg import pq
from psycopg.conninfo import make_conninfo

from actors.pg.psycopg_bridge import (  # noqa: F401  (tests reach the glue through this module)
    _ACTIVE,
    _BAD,
    _CANCEL_RETRY_S,
    _COMMAND_OK,
    _COPY_STATES,
    _DONE_STATES,
    _FATAL_ERROR,
    _HAS_CANCEL_CONN,
    _IDLE,
    _MESSAGE_PRIMARY,
    _OK,
    _POLL_OK,
    _POLL_READING,
    _POLL_WRITING,
    _SQLSTATE,
    _TUPLES_OK,
    Adaptation,
    QueryResult,
    _addresses,
    _bind_server_side,
    _collect_fatal,
    _connect_error,
    _connect_pgconn,
    _conninfo_params,
    _error_class,
    _error_from_result,
    _load_result,
    _query_bytes,
    _redact_quoted,
    _resolve_hosts,
    _ResultCursor,
    _scrub,
    _to_ms,
    _wrap_pgconn,
)

__all__ = ["ConnectionLost", "PgConnection", "QueryResult"]

_new = object.__new__
_wait_readable = trio.lowlevel.wait_readable
_perf_counter = time.perf_counter  # real time, for `back_to_back_s` (cheaper than trio's clock)
_checkpoint = trio.lowlevel.checkpoint
# After answers that were not in after one yield, the next 1, 2, 4, ... up to this many
# statements wait for theirs at once (doubling while the yields keep finding nothing).
_WAIT_FIRST = 16

class ConnectionLost(psycopg.OperationalError):
    """The connection died; the ``PgConnection`` is now ``broken``.

    ``statement_sent`` tells a pool whether retrying elsewhere is safe:

    * ``False``: the statement never fully reached the server (the connection
      was found dead before or while sending it). The server cannot have run
      or committed it, so a retry on another connection is safe, unless the
      caller was inside an explicit transaction, which the server has rolled
      back anyway.
    * ``True``: the whole statement was sent; it may or may not have run and
      committed. The outcome is unknown.

    When the server said why before closing (e.g. 57P01 admin shutdown from
    ``pg_terminate_backend``), ``sqlstate`` and ``diag`` carry it and
    ``__cause__`` is psycopg's own exception for that SQLSTATE.
    """

    # Default True (the conservative answer) so unpickling, which calls the
    # class with only the message, still works.
    def __init__(self, *args: Any, statement_sent: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.statement_sent = statement_sent


class PgConnection:
    """One PostgreSQL connection driven by the calling trio task.

    Create with ``await PgConnection.connect(dsn)``; not safe for concurrent
    use by several tasks (a second concurrent ``execute`` raises
    ``psycopg.InterfaceError``).
    """

    # A statement sent within this many seconds (real time) of the end of the connection's
    # previous one is "back to back" and yields once before looking for its answer (see
    # `execute`). Such statements were at most ~50 µs apart on 8 connections in a loop
    # (scripts/bench/db.py), a request handler's at least ~200 µs (scripts/bench/http.py
    # --route animals).
    back_to_back_s: float = 100e-6

    def __init__(self, conn: psycopg.Connection[Any], *, cancel_timeout_s: float) -> None:
        # Private: use connect().
        self._conn = conn
        self._pgconn = conn.pgconn
        self._sock = self._pgconn.socket  # libpq keeps this fd for the connection's life
        self._cancel_timeout_s = cancel_timeout_s
        self._broken = False
        self._busy = False
        # FATAL messages the server sent while we were idle (it is about to
        # close, e.g. pg_terminate_backend, idle_session_timeout, shutdown).
        self._goodbyes: list[tuple[str | None, str | None]] = []  # (sqlstate, message)
        conn.add_notice_handler(partial(_collect_fatal, self._goodbyes))
        self._flushed = False
        self._wait_first = 0  # statements left that wait for their answer at once (see `execute`)
        self._after_miss = 1  # how many wait at once after the next yield that finds nothing
        self._ended_at = -math.inf  # when the last statement ended, in real time (`_perf_counter`)
        self._adaptation = Adaptation(conn)
        self.backend_pid: int = self._pgconn.backend_pid
        self._now = trio.lowlevel.current_clock().current_time  # the clock of the run it lives in
        self.created_at: float = self._now()
        self.last_used_at: float = self.created_at
        # A cancel was requested (`cancel()`): it may land on a later statement, so a pool
        # must not reuse this connection.
        self.cancel_requested = False
        # The verdict of `Database`'s watchdog on the statement in flight: None, "cancelled" (the
        # server was asked to cancel it) or "expired" (closed at the query timeout); cleared when
        # its caller stops watching, which closes the connection (`Watchdog.unwatch`).
        self.watchdog_verdict: str | None = None
        # The priorities this connection's DSN serves (a pool's `priority_dsn`); None: all.
        self.serves: frozenset[int] | None = None

    # ---- lifecycle -------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        connect_timeout_s: float = 10.0,
        statement_timeout_s: float | None = None,
        application_name: str = "triage",
        cancel_timeout_s: float = 1.0,
    ) -> PgConnection:
        """Open a connection without blocking the trio thread.

        ``statement_timeout_s`` is a ``SET`` on the session: not for a pooler in transaction
        mode (PgBouncer), where sessions are shared; `mon.db` bounds statements from the client
        side instead (a cancel request, then closing). ``application_name`` overrides one
        given in the DSN. Errors are ``psycopg.OperationalError`` (``psycopg.errors.ConnectionTimeout`` on
        timeout) and never contain the DSN or the password.
        ``cancel_timeout_s`` bounds the clean-up after a cancelled query.
        """
        timeout_ms = None if statement_timeout_s is None else _to_ms(statement_timeout_s)
        params, secrets = _conninfo_params(dsn, application_name)
        with trio.move_on_after(connect_timeout_s):
            params = await _resolve_hosts(params, secrets)
            pgconn = await _connect_pgconn(make_conninfo("", **params).encode(), secrets)
            conn = cls(_wrap_pgconn(pgconn), cancel_timeout_s=cancel_timeout_s)
            try:
                if timeout_ms is not None:
                    await conn.execute(f"SET statement_timeout = {timeout_ms}")
            except BaseException:
                conn.close_now()
                raise
            return conn
        raise psycopg.errors.ConnectionTimeout("connection timeout")

    async def close(self) -> None:
        """Close; if another task has a query in flight, cancel it on the server first.

        That task then gets ``ConnectionLost`` (``statement_sent=True``).
        """
        in_flight = self._busy and self._flushed and not self.broken
        self._broken = True  # from now on, whatever the query task receives is moot
        if in_flight:
            with trio.move_on_after(self._cancel_timeout_s, shield=True):
                try:
                    await self._send_cancel_request()
                except (psycopg.Error, OSError):
                    pass  # closing anyway; statement_timeout is the backstop
        self.close_now()
        await trio.lowlevel.checkpoint()

    def close_now(self) -> None:
        """Close immediately without waiting for anything. Idempotent."""
        self._broken = True
        if self._pgconn.status != _BAD:
            # Wake any task waiting on the socket (it gets ConnectionLost)
            # before libpq closes the fd and the number can be reused.
            try:
                trio.lowlevel.notify_closing(self._sock)
            except RuntimeError:
                pass  # not inside trio.run: nobody can be waiting
        self._conn.close()

    async def cancel(self) -> None:
        """Ask the server to cancel the statement in flight, if any; never raises.

        The request travels on a new connection (PostgreSQL's cancel protocol; PgBouncer
        forwards it to the server connection running our statement) and may arrive after the
        statement has ended, so the connection is marked ``cancel_requested``. The waiting
        task gets the server's answer (usually ``QueryCanceled``).
        """
        self.cancel_requested = True
        if not (self._busy and self._flushed) or self.broken:
            return
        with trio.move_on_after(self._cancel_timeout_s):
            try:
                await self._send_cancel_request()
            except (psycopg.Error, OSError):
                pass  # the client-side deadline closes the connection anyway

    async def __aenter__(self) -> PgConnection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ---- state -----------------------------------------------------------

    @property
    def broken(self) -> bool:
        """True once the connection is unusable (lost, abandoned or closed)."""
        return self._broken or self._pgconn.status != _OK

    @property
    def reusable(self) -> bool:
        """Fit to go back to a pool: open, idle outside a transaction, no cancel request sent
        or on its way (the watchdog's verdict)."""
        pgconn = self._pgconn
        return (not self._broken and not self.cancel_requested and self.watchdog_verdict is None
                and pgconn.status == _OK and pgconn.transaction_status == _IDLE)

    @property
    def in_transaction(self) -> bool:
        """libpq transaction status is not IDLE (in a block, failed block, or busy)."""
        return self._pgconn.transaction_status != _IDLE

    def __repr__(self) -> str:
        state = (
            "broken"
            if self.broken
            else pq.TransactionStatus(self._pgconn.transaction_status).name.lower()
        )
        return f"<PgConnection backend_pid={self.backend_pid} {state}>"

    # ---- queries -----------------------------------------------------------

    async def execute(
        self,
        query: str | bytes | psycopg.sql.Composable,
        params: Sequence[Any] | dict[str, Any] | None = None,
        *,
        row_factory: Callable[[Any], Callable[[Sequence[Any]], Any]] | None = None,
    ) -> QueryResult:
        """Run one query (``%s`` / ``%(name)s`` placeholders) and return its result.

        With ``params=None`` the text is sent as is over the simple protocol,
        so several ``;``-separated statements are allowed and ``%`` needs no
        escaping (as in psycopg).
        """
        # The hot path of every query, written out flat: no coroutine below this one until
        # trio's wait_readable (each helper call or coroutine layer costs a measurable share
        # of a SELECT 1). In order: check, bind, notice a dead connection, send, flush, and
        # collect the results as `_fetch_results` does.
        pgconn = self._pgconn
        if self._busy or self._broken or pgconn.status != _OK:
            self._check_usable()
        adaptation = self._adaptation  # the kept Transformer, renewed if a setting changed
        setting = pgconn.parameter_status
        settings = (setting(b"client_encoding"), setting(b"TimeZone"), setting(b"DateStyle"),
                    setting(b"IntervalStyle"))
        if settings != adaptation.settings:
            adaptation.renew(settings)
        tx = adaptation.tx
        # Bind errors (wrong parameter count, unadaptable value) are raised before anything
        # touches the connection.
        if params is None:
            sql = query.encode(adaptation.encoding) if type(query) is str else _query_bytes(self._conn, query)
            values: Sequence[Any] = ()
        else:
            sql, values, types, formats = _bind_server_side(tx, query, params)
        self._busy = True
        self._flushed = False
        try:
            # A connection the server dropped while we were idle is noticed before sending,
            # so that failure is safely retriable (statement_sent=False), not "outcome
            # unknown". Costs one non-blocking recv.
            try:
                pgconn.consume_input()  # EOF raises here
                pgconn.is_busy()  # parses what was read: runs the notice handler (goodbyes)
            except psycopg.OperationalError as exc:
                raise self._lost(exc, statement_sent=False) from exc
            if self._goodbyes:
                raise self._lost_before_send(self._goodbyes[0])
            try:
                if values:
                    pgconn.send_query_params(sql, values, types, formats)
                else:
                    pgconn.send_query(sql)  # simple protocol: allows several statements
            except psycopg.OperationalError as exc:
                raise self._lost(exc, statement_sent=False) from exc
            last = failed = None
            try:
                sock = self._sock
                if pgconn.flush():  # 1 = output left over, the socket buffer is full
                    await self._flush()
                    self._flushed = True
                elif self._wait_first or _perf_counter() - self._ended_at > self.back_to_back_s:
                    # Sent in one go, and not back to back (or lately the answer was not in
                    # after one yield): wait for the answer at once (nothing read since
                    # sending, so no answer yet).
                    self._flushed = True
                    if self._wait_first:
                        self._wait_first -= 1
                    await _wait_readable(sock)
                    pgconn.consume_input()
                else:
                    # Sent in one go, back to back with the previous statement (a loop, a
                    # transaction). Yield first: while the other tasks run, the answer usually
                    # comes in, and reading it then costs no registration with epoll (its
                    # `epoll_ctl`, trio's bookkeeping): such queries cost ~10 % less. When it
                    # was not in (nothing else ran long enough), wait as usual, and let the
                    # next 1, 2, 4 ... `_WAIT_FIRST` statements wait at once: a lone caller
                    # pays one yield in ~17 statements, a busy one's rare miss costs one. A
                    # statement amid other work (a request handler's) waits at once: there the
                    # yield saved nothing measurable and made `GET /api/animals` dearer
                    # (README, Performance).
                    self._flushed = True
                    await _checkpoint()
                    pgconn.consume_input()
                    if pgconn.is_busy():
                        self._wait_first = after_miss = self._after_miss
                        self._after_miss = after_miss * 2 if after_miss < _WAIT_FIRST else after_miss
                    else:
                        self._after_miss = 1
                while True:
                    try:
                        while pgconn.is_busy():
                            await _wait_readable(sock)
                            pgconn.consume_input()
                    except psycopg.OperationalError:
                        # The server often says why (e.g. 57P01) and then closes: keep its
                        # error rather than libpq's "connection closed".
                        if failed is None:
                            raise
                        break
                    result = pgconn.get_result()
                    if result is None:
                        break
                    last = result
                    status = result.status
                    if status == _FATAL_ERROR and failed is None:
                        failed = result
                    elif status in _COPY_STATES:
                        break  # libpq would hand out COPY results forever
            except trio.Cancelled:
                await self._abandon_query()
                raise
            except (psycopg.OperationalError, trio.ClosedResourceError, OSError) as exc:
                raise self._lost(exc, statement_sent=self._flushed) from exc
            except BaseException:
                self.close_now()  # e.g. KeyboardInterrupt: protocol state unknown
                raise
        finally:
            self._busy = False
            self.last_used_at = self._now()
            self._ended_at = _perf_counter()
        if failed is not None or last is None or self._broken or pgconn.status != _OK:
            self._raise_failed(last, failed)
        # `status`: the loop's, that of `last`
        if status == _TUPLES_OK and row_factory is None:  # `_load_result`'s usual case, inline
            tx.set_pgresult(last)
            rows = tx.load_rows(0, last.ntuples, tuple)  # tuple itself: psycopg's C fast path
            tx.set_pgresult(None)  # the kept Transformer holds no result between queries
            made = _new(QueryResult)  # QueryResult(rows, last, encoding) without its __init__'s frame
            made.rows, made._result, made._encoding = rows, last, adaptation.encoding
            return made
        if status != _TUPLES_OK and status != _COMMAND_OK:
            self._check_done(last)
        return _load_result(tx, self._conn, last, adaptation.encoding, row_factory)

    def _check_usable(self) -> None:
        if self._busy:
            raise psycopg.InterfaceError("another query is already running on this connection")
        if self.broken:
            raise ConnectionLost("the connection is closed", statement_sent=False)

    async def _flush(self) -> None:
        pgconn = self._pgconn
        while True:
            # Read whatever arrived meanwhile, so a server that is writing to
            # us can't block us both.
            pgconn.consume_input()
            await trio.lowlevel.wait_writable(self._sock)
            if not pgconn.flush():
                return

    async def _fetch_results(self) -> tuple[pq.abc.PGresult | None, pq.abc.PGresult | None]:
        """Collect results until libpq reports the end of the query cycle.

        (the last result, the first failed one); a multi-statement string yields several.
        """
        pgconn = self._pgconn
        wait_readable, sock = trio.lowlevel.wait_readable, self._sock
        last = failed = None
        while True:
            try:
                while pgconn.is_busy():
                    await wait_readable(sock)
                    pgconn.consume_input()
            except psycopg.OperationalError:
                # The server often says why (e.g. 57P01) and then closes:
                # keep its error rather than libpq's "connection closed".
                if failed is not None:
                    return last, failed
                raise
            result = pgconn.get_result()
            if result is None:
                return last, failed
            last = result
            status = result.status
            if status == _FATAL_ERROR and failed is None:
                failed = result
            elif status in _COPY_STATES:
                return last, failed  # libpq would hand out COPY results forever

    def _raise_failed(self, last: pq.abc.PGresult | None, failed: pq.abc.PGresult | None) -> None:
        """The query cycle ended badly: the connection went, a statement failed, or no result."""
        encoding = self._conn.info.encoding  # "utf-8" once the connection is gone
        if self.broken:
            raise self._lost_after_result(failed, encoding)
        if failed is not None:
            raise _error_from_result(failed, encoding)
        raise psycopg.InternalError("the server returned no result")

    def _check_done(self, last: pq.abc.PGresult) -> None:
        if last.status in _COPY_STATES:
            self.close_now()  # mid-COPY: no cheap way back to idle
            raise psycopg.NotSupportedError("COPY is not supported by PgConnection")
        if last.status not in _DONE_STATES:
            raise psycopg.InternalError(
                f"unexpected result status {pq.ExecStatus(last.status).name}"
            )

    # ---- failure handling ------------------------------------------------------

    def _lost(self, exc: BaseException, *, statement_sent: bool) -> ConnectionLost:
        self.close_now()
        logger.debug("Database connection lost (backend {})", self.backend_pid)
        if isinstance(exc, psycopg.Error):
            message = str(exc).strip() or "connection lost"
        else:
            message = "the connection was closed while a query was in progress"
        return ConnectionLost(message, statement_sent=statement_sent)

    def _lost_before_send(self, goodbye: tuple[str | None, str | None]) -> ConnectionLost:
        sqlstate, message = goodbye
        lost = self._lost(
            psycopg.OperationalError(message or "the server closed the connection"),
            statement_sent=False,
        )
        lost.sqlstate = sqlstate
        return lost

    def _lost_after_result(self, failed: pq.abc.PGresult | None, encoding: str) -> ConnectionLost:
        self.close_now()
        logger.debug("Database connection lost (backend {})", self.backend_pid)
        if failed is None:
            return ConnectionLost("server closed the connection unexpectedly")
        lost = _error_from_result(failed, encoding, cls=ConnectionLost)
        lost.__cause__ = _error_from_result(failed, encoding)
        return lost

    async def _abandon_query(self) -> None:
        """The caller was cancelled mid-query: stop the server and get back to idle, or close.

        Runs shielded and bounded by ``cancel_timeout_s``.
        """
        if not self._flushed:
            # Half-sent message: the server can't run it, but the protocol is
            # out of step; dropping the connection is the clean way out.
            self.close_now()
            return
        with trio.move_on_after(self._cancel_timeout_s, shield=True):
            try:
                while True:
                    await self._send_cancel_request()
                    with trio.move_on_after(_CANCEL_RETRY_S):
                        await self._fetch_results()  # discard: usually 57014
                        break
            except (psycopg.Error, trio.ClosedResourceError, OSError):
                pass
        status = self._pgconn.transaction_status
        if self._pgconn.status != _OK or status == _ACTIVE:
            logger.debug(
                "Database query could not be cancelled in time (backend {})", self.backend_pid
            )
            self.close_now()

    async def _send_cancel_request(self) -> None:
        if not _HAS_CANCEL_CONN:
            cancel = self._pgconn.get_cancel()
            await trio.to_thread.run_sync(cancel.cancel, abandon_on_cancel=True)
            return
        cancel = self._pgconn.cancel_conn()
        try:
            cancel.start()
            while (status := cancel.poll()) != _POLL_OK:
                if status == _POLL_READING:
                    await trio.lowlevel.wait_readable(cancel.socket)
                elif status == _POLL_WRITING:
                    await trio.lowlevel.wait_writable(cancel.socket)
                else:
                    raise psycopg.OperationalError(
                        f"cancel request failed: {cancel.get_error_message().strip()}"
                    )
        finally:
            cancel.finish()
