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
  ``consume_input``/``is_busy``/``get_result``. Rows are loaded by a
  ``psycopg.adapt.Transformer``, so types round-trip as they do in psycopg.
* Errors: a failed result raises psycopg's class for its SQLSTATE with
  ``.diag`` populated; its message is the server's primary message only
  (DETAIL can echo parameter values). Losing the connection raises
  ``ConnectionLost`` and leaves ``broken = True``.
* Cancellation: if the calling task is cancelled mid-query, a cancel request is
  sent over libpq's non-blocking ``PGcancelConn``, and the connection is
  drained back to idle under a short shielded deadline, or closed.

One query at a time per connection; the pool owns concurrency.

psycopg internals used (each isolated in one function below and pinned by a
``test_pgconn_internals_*`` test): ``psycopg._queries.PostgresQuery`` for
placeholder conversion, the ``psycopg.Connection(pgconn)`` constructor, the
``info=`` argument of psycopg's exceptions, and the cursor attributes that
row factories read (``pgresult``, ``_encoding``).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any
from urllib.parse import quote

import msgspec
import psycopg
import psycopg.errors
import trio
from loguru import logger
from psycopg import pq
from psycopg.adapt import Transformer
from psycopg.conninfo import conninfo_to_dict, make_conninfo

__all__ = ["ConnectionLost", "PgConnection", "QueryResult"]

_OK = pq.ConnStatus.OK
_BAD = pq.ConnStatus.BAD
_POLL_OK = pq.PollingStatus.OK
_POLL_READING = pq.PollingStatus.READING
_POLL_WRITING = pq.PollingStatus.WRITING
_TUPLES_OK = pq.ExecStatus.TUPLES_OK
_FATAL_ERROR = pq.ExecStatus.FATAL_ERROR
_COPY_STATES = (pq.ExecStatus.COPY_IN, pq.ExecStatus.COPY_OUT, pq.ExecStatus.COPY_BOTH)
_DONE_STATES = (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK, pq.ExecStatus.EMPTY_QUERY)
_IDLE = pq.TransactionStatus.IDLE
_ACTIVE = pq.TransactionStatus.ACTIVE
_SQLSTATE = pq.DiagnosticField.SQLSTATE
_MESSAGE_PRIMARY = pq.DiagnosticField.MESSAGE_PRIMARY

# PQcancelCreate (non-blocking cancel) exists from libpq 17; older libpqs only
# have the blocking PQcancel, which we then run in a thread.
_HAS_CANCEL_CONN = pq.version() >= 170000

# After a cancel request, how long to wait for the server to answer before
# sending another one (a cancel that lands before the query starts is ignored).
_CANCEL_RETRY_S = 0.25


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


class QueryResult(msgspec.Struct, frozen=True, kw_only=True):
    """The last result of a query (a multi-statement string yields the last)."""

    rows: list[Any]
    status: str  # command tag: "SELECT 1", "UPDATE 3", "BEGIN"
    rowcount: int  # rows affected/returned; -1 when the command has no count
    columns: list[str]


class PgConnection:
    """One PostgreSQL connection driven by the calling trio task.

    Create with ``await PgConnection.connect(dsn)``; not safe for concurrent
    use by several tasks (a second concurrent ``execute`` raises
    ``psycopg.InterfaceError``).
    """

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
        self.backend_pid: int = self._pgconn.backend_pid
        self.created_at: float = trio.current_time()
        self.last_used_at: float = self.created_at

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

        ``application_name`` overrides one given in the DSN. Errors are
        ``psycopg.OperationalError`` (``psycopg.errors.ConnectionTimeout`` on
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
        self._check_usable()
        self._busy = True
        try:
            self._send(query, params)
            results = await self._roundtrip()
        finally:
            self._busy = False
            self.last_used_at = trio.current_time()
        return self._build_result(results, row_factory)

    def _check_usable(self) -> None:
        if self._busy:
            raise psycopg.InterfaceError("another query is already running on this connection")
        if self.broken:
            raise ConnectionLost("the connection is closed", statement_sent=False)

    def _send(self, query: Any, params: Any) -> None:
        """Bind and hand the query to libpq, not yet flushed.

        Bind errors (wrong parameter count, unadaptable value) are raised
        before anything touches the connection.
        """
        self._flushed = False
        values: Sequence[Any] = ()
        if params is None:
            sql = _query_bytes(self._conn, query)
        else:
            sql, values, types, formats = _bind_server_side(self._conn, query, params)
        self._check_alive()
        try:
            if values:
                self._pgconn.send_query_params(sql, values, types, formats)
            else:
                self._pgconn.send_query(sql)  # simple protocol: allows several statements
        except psycopg.OperationalError as exc:
            raise self._lost(exc, statement_sent=False) from exc

    def _check_alive(self) -> None:
        """Notice a connection the server dropped while we were idle, before sending.

        That failure is then safely retriable (``statement_sent=False``)
        instead of "outcome unknown". Costs one non-blocking recv.
        """
        try:
            self._pgconn.consume_input()  # EOF raises here
            self._pgconn.is_busy()  # parses what was read: runs the notice handler
        except psycopg.OperationalError as exc:
            raise self._lost(exc, statement_sent=False) from exc
        if self._goodbyes:
            raise self._lost_before_send(self._goodbyes[0])

    async def _roundtrip(self) -> list[pq.abc.PGresult]:
        try:
            await self._flush()
            self._flushed = True
            return await self._fetch_results()
        except trio.Cancelled:
            await self._abandon_query()
            raise
        except (psycopg.OperationalError, trio.ClosedResourceError, OSError) as exc:
            raise self._lost(exc, statement_sent=self._flushed) from exc
        except BaseException:
            self.close_now()  # e.g. KeyboardInterrupt: protocol state unknown
            raise

    async def _flush(self) -> None:
        pgconn = self._pgconn
        while pgconn.flush():  # 1 = output left over, the socket buffer is full
            # Read whatever arrived meanwhile, so a server that is writing to
            # us can't block us both.
            pgconn.consume_input()
            await trio.lowlevel.wait_writable(self._sock)

    async def _fetch_results(self) -> list[pq.abc.PGresult]:
        """Collect results until libpq reports the end of the query cycle."""
        pgconn = self._pgconn
        results: list[pq.abc.PGresult] = []
        while True:
            try:
                while pgconn.is_busy():
                    await trio.lowlevel.wait_readable(self._sock)
                    pgconn.consume_input()
            except psycopg.OperationalError:
                # The server often says why (e.g. 57P01) and then closes:
                # keep its error rather than libpq's "connection closed".
                if any(r.status == _FATAL_ERROR for r in results):
                    return results
                raise
            result = pgconn.get_result()
            if result is None:
                return results
            results.append(result)
            if result.status in _COPY_STATES:
                return results  # libpq would hand out COPY results forever

    def _build_result(
        self, results: list[pq.abc.PGresult], row_factory: Callable[[Any], Any] | None
    ) -> QueryResult:
        encoding = self._conn.info.encoding  # "utf-8" once the connection is gone
        failed = next((r for r in results if r.status == _FATAL_ERROR), None)
        if self.broken or self._pgconn.status != _OK:
            raise self._lost_after_result(failed, encoding)
        if failed is not None:
            raise _error_from_result(failed, encoding)
        if not results:
            raise psycopg.InternalError("the server returned no result")
        last = results[-1]
        if last.status in _COPY_STATES:
            self.close_now()  # mid-COPY: no cheap way back to idle
            raise psycopg.NotSupportedError("COPY is not supported by PgConnection")
        if last.status not in _DONE_STATES:
            raise psycopg.InternalError(
                f"unexpected result status {pq.ExecStatus(last.status).name}"
            )
        return _load_result(self._conn, last, encoding, row_factory)

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


# ---- psycopg glue: everything here depends on psycopg's behaviour ---------------


def _collect_fatal(
    sink: list[tuple[str | None, str | None]], diag: psycopg.errors.Diagnostic
) -> None:
    # libpq hands a server error that arrives while idle to the notice
    # processor, and psycopg on to us. Copy the fields now: the Diagnostic
    # is only valid during this call.
    if diag.severity_nonlocalized in ("FATAL", "PANIC"):
        sink.append((diag.sqlstate, diag.message_primary))


def _wrap_pgconn(pgconn: pq.abc.PGconn) -> psycopg.Connection[Any]:
    """A ``psycopg.Connection`` around a live PGconn: the adaptation context.

    psycopg's adapters, transformers and ``Column`` expect a connection (for
    encoding, DateStyle, TimeZone, server version). The constructor taking a
    PGconn is what ``Connection.connect`` itself uses, but it is not a
    documented entry point: guarded by test_pgconn_internals_*.
    """
    return psycopg.Connection(pgconn)


def _bind_server_side(
    conn: psycopg.Connection[Any], query: Any, params: Sequence[Any] | dict[str, Any]
) -> tuple[bytes, Sequence[Any], Sequence[int], Sequence[pq.Format]]:
    """Convert ``%s`` / ``%(name)s`` to ``$n`` and dump the values, as ``psycopg.Cursor`` does.

    Server-side binding keeps psycopg's types (a float stays float8; with
    client-side quoting ``1.5`` becomes numeric) and keeps values out of the
    SQL text the server shows in pg_stat_activity and its logs.
    INTERNAL: ``psycopg._queries.PostgresQuery`` is psycopg's own converter
    (there is no public one). Guarded by test_pgconn_internals_*.
    """
    from psycopg._queries import PostgresQuery

    pgq = PostgresQuery(Transformer(conn))
    pgq.convert(query, params)
    return pgq.query, pgq.params or (), pgq.types, pgq.formats or ()


def _query_bytes(conn: psycopg.Connection[Any], query: Any) -> bytes:
    if isinstance(query, str):
        return query.encode(conn.info.encoding)
    if isinstance(query, bytes):
        return query
    return query.as_bytes(conn)  # psycopg.sql.Composable


def _error_from_result(
    result: pq.abc.PGresult, encoding: str, cls: type[psycopg.Error] | None = None
) -> Any:
    """psycopg's exception for a failed result, with ``.diag``/``.sqlstate``.

    The message is the primary message only: DETAIL and CONTEXT may quote
    parameter values, and messages end up in logs (they stay in ``.diag``).
    ``info=`` is how psycopg attaches the result (not documented):
    guarded by test_pgconn_internals_*.
    """
    sqlstate = (result.error_field(_SQLSTATE) or b"").decode("ascii", "replace")
    primary = result.error_field(_MESSAGE_PRIMARY)
    if primary is not None:
        message = primary.decode(encoding, "replace")
    else:
        message = result.get_error_message(encoding).strip()
    return (cls or _error_class(sqlstate))(message, info=result, encoding=encoding)


def _error_class(sqlstate: str) -> type[psycopg.Error]:
    """The class for a SQLSTATE, else the class of its category (e.g. 22xxx -> 22000)."""
    for code in (sqlstate, sqlstate[:2] + "000"):
        try:
            return psycopg.errors.lookup(code)
        except KeyError:
            pass
    return psycopg.DatabaseError


class _ResultCursor:
    """The slice of a psycopg cursor that row factories and ``Column`` read.

    psycopg 3.3's ``dict_row``/``namedtuple_row``/``class_row`` read
    ``pgresult`` and ``_encoding``; ``Column`` also reads ``adapters``.
    Guarded by the row-factory tests.
    """

    def __init__(self, conn: psycopg.Connection[Any], result: pq.abc.PGresult, encoding: str):
        self.connection = conn
        self.adapters = conn.adapters
        self.pgresult = result
        self._encoding = encoding

    @property
    def description(self) -> list[psycopg.Column]:
        return [psycopg.Column(self, i) for i in range(self.pgresult.nfields)]  # type: ignore[arg-type]


def _load_result(
    conn: psycopg.Connection[Any],
    result: pq.abc.PGresult,
    encoding: str,
    row_factory: Callable[[Any], Any] | None,
) -> QueryResult:
    status = (result.command_status or b"").decode(encoding, "replace")
    rowcount = result.command_tuples
    if result.status != _TUPLES_OK:
        return QueryResult(
            rows=[], status=status, rowcount=-1 if rowcount is None else rowcount, columns=[]
        )
    tx = Transformer(conn)
    tx.set_pgresult(result)
    # tuple itself (not an equivalent function) hits psycopg's C fast path.
    make_row = tuple if row_factory is None else row_factory(_ResultCursor(conn, result, encoding))
    rows = tx.load_rows(0, result.ntuples, make_row)
    columns = [(result.fname(i) or b"").decode(encoding, "replace") for i in range(result.nfields)]
    return QueryResult(rows=rows, status=status, rowcount=result.ntuples, columns=columns)


# ---- connecting ------------------------------------------------------------------


def _conninfo_params(dsn: str, application_name: str) -> tuple[dict[str, Any], list[str]]:
    """Parse the DSN; return its parameters and the strings never to show anyone."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        # libpq quotes the offending fragment, which may be the password.
        failure = psycopg.OperationalError(f"invalid connection string: {_redact_quoted(str(exc))}")
    else:
        params["application_name"] = application_name
        password = str(params.get("password") or "")
        secrets = [s for s in (dsn, password, quote(password), quote(password, safe="")) if s]
        return params, secrets
    raise failure  # outside the except block: no __context__ holding the DSN


def _redact_quoted(message: str) -> str:
    parts = message.split('"')
    return '"'.join(p if i % 2 == 0 else "***" for i, p in enumerate(parts)).strip()


def _scrub(message: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        message = message.replace(secret, "***")
    return message


async def _resolve_hosts(params: dict[str, Any], secrets: list[str]) -> dict[str, Any]:
    """Resolve host names with trio and pass libpq numeric ``hostaddr``s.

    libpq resolves names with a blocking getaddrinfo inside connect_start /
    connect_poll, which would stall every task. ``host`` stays, for TLS
    verification and messages. Every address of every host is kept, in
    order, so libpq still fails over between them.
    """
    if params.get("hostaddr"):
        return params
    hosts = str(params.get("host") or os.environ.get("PGHOST", "")).split(",")
    if any(not h or h.startswith(("/", "@")) for h in hosts):
        return params  # Unix-domain sockets: nothing to resolve
    ports = str(params.get("port") or "").split(",")
    port_per_host = len(hosts) > 1 and len(ports) == len(hosts)
    out_hosts, out_addrs, out_ports = [], [], []
    for i, host in enumerate(hosts):
        for addr in await _addresses(host):
            out_hosts.append(host)
            out_addrs.append(addr)
            out_ports.append(ports[i] if port_per_host else "")
    if not out_addrs:
        message = f'could not translate host name "{",".join(hosts)}" to address'
        raise psycopg.OperationalError(_scrub(message, secrets))
    resolved = {**params, "host": ",".join(out_hosts), "hostaddr": ",".join(out_addrs)}
    if port_per_host:
        resolved["port"] = ",".join(out_ports)
    return resolved


async def _addresses(host: str) -> list[str]:
    try:
        ipaddress.ip_address(host)
        return [host]
    except ValueError:
        pass
    try:
        infos = await trio.socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def _connect_pgconn(conninfo: bytes, secrets: list[str]) -> pq.abc.PGconn:
    """libpq's non-blocking connect, waiting on the socket with trio."""
    pgconn = pq.PGconn.connect_start(conninfo)
    try:
        while True:
            if pgconn.status == _BAD:
                raise _connect_error(pgconn, secrets)
            status = pgconn.connect_poll()
            if status == _POLL_OK:
                break
            # libpq may switch sockets between attempts: re-read it each time.
            if status == _POLL_READING:
                await trio.lowlevel.wait_readable(pgconn.socket)
            elif status == _POLL_WRITING:
                await trio.lowlevel.wait_writable(pgconn.socket)
            else:
                raise _connect_error(pgconn, secrets)
    except BaseException:
        pgconn.finish()
        raise
    pgconn.nonblocking = 1  # so send/flush never block the trio thread
    return pgconn


def _connect_error(pgconn: pq.abc.PGconn, secrets: list[str]) -> psycopg.OperationalError:
    # Never attach pgconn (it exposes .password) to the exception.
    message = _scrub(pgconn.get_error_message("utf-8").strip(), secrets)
    return psycopg.OperationalError(f"connection failed: {message}")


def _to_ms(seconds: float) -> int:
    if seconds < 0:
        raise ValueError("statement_timeout_s must be >= 0")
    return max(1, round(seconds * 1000)) if seconds > 0 else 0
