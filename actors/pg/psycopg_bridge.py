"""psycopg glue for `actors.pg.connection`: everything here depends on psycopg's behaviour.

Binding parameters, loading results, building psycopg's own exceptions from a failed
result, and connecting non-blocking (host names resolved by trio, the DSN and password
scrubbed from every message). The psycopg internals used are each isolated in one
function here and pinned by a `test_pgconn_internals_*` test.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import quote

import psycopg
import psycopg.errors
import trio
from psycopg import pq
from psycopg._queries import PostgresQuery  # internal: see _bind_server_side
from psycopg.adapt import Transformer
from psycopg.conninfo import conninfo_to_dict

# Plain ints, not the enums: libpq's statuses come back as ints, and an int compared with an
# IntEnum member goes through the subclass checks of a rich comparison (measurable per query).
_OK = int(pq.ConnStatus.OK)
_BAD = int(pq.ConnStatus.BAD)
_POLL_OK = int(pq.PollingStatus.OK)
_POLL_READING = int(pq.PollingStatus.READING)
_POLL_WRITING = int(pq.PollingStatus.WRITING)
_TUPLES_OK = int(pq.ExecStatus.TUPLES_OK)
_COMMAND_OK = int(pq.ExecStatus.COMMAND_OK)
_FATAL_ERROR = int(pq.ExecStatus.FATAL_ERROR)
_COPY_STATES = frozenset(map(int, (pq.ExecStatus.COPY_IN, pq.ExecStatus.COPY_OUT, pq.ExecStatus.COPY_BOTH)))
_DONE_STATES = frozenset(map(int, (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK, pq.ExecStatus.EMPTY_QUERY)))
_IDLE = int(pq.TransactionStatus.IDLE)
_ACTIVE = int(pq.TransactionStatus.ACTIVE)
_SQLSTATE = pq.DiagnosticField.SQLSTATE
_MESSAGE_PRIMARY = pq.DiagnosticField.MESSAGE_PRIMARY

# PQcancelCreate (non-blocking cancel) exists from libpq 17; older libpqs only
# have the blocking PQcancel, which we then run in a thread.
_HAS_CANCEL_CONN = pq.version() >= 170000

# After a cancel request, how long to wait for the server to answer before
# sending another one (a cancel that lands before the query starts is ignored).
_CANCEL_RETRY_S = 0.25


class QueryResult:
    """The last result of a query (a multi-statement string yields the last).

    ``rows`` are loaded when the query returns; ``status`` (the command tag: "SELECT 1",
    "UPDATE 3", "BEGIN"), ``rowcount`` (rows affected or returned; -1 when the command has
    no count) and ``columns`` are read from libpq's result when asked, as psycopg's
    ``cursor.description`` is, so a caller that wants only the rows pays for nothing else.
    The result (its raw text) lives as long as this object.
    """

    __slots__ = ("rows", "_result", "_encoding")  # (`PgConnection.execute` sets them itself)

    def __init__(self, rows: list[Any], result: pq.abc.PGresult, encoding: str) -> None:
        self.rows, self._result, self._encoding = rows, result, encoding

    @property
    def status(self) -> str:
        return (self._result.command_status or b"").decode(self._encoding, "replace")

    @property
    def rowcount(self) -> int:
        result = self._result
        if result.status == _TUPLES_OK:
            return result.ntuples
        count = result.command_tuples
        return -1 if count is None else count

    @property
    def columns(self) -> list[str]:
        result, encoding = self._result, self._encoding
        return [(result.fname(i) or b"").decode(encoding, "replace") for i in range(result.nfields)]

    def __repr__(self) -> str:
        return f"<QueryResult {self.status!r} rowcount={self.rowcount} columns={self.columns}>"


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
    tx: Transformer, query: Any, params: Sequence[Any] | dict[str, Any]
) -> tuple[bytes, Sequence[Any], Sequence[int], Sequence[pq.Format]]:
    """Convert ``%s`` / ``%(name)s`` to ``$n`` and dump the values, as ``psycopg.Cursor`` does.

    ``tx`` is the connection's Transformer (kept across queries, as a cursor keeps its own).
    Server-side binding keeps psycopg's types (a float stays float8; with
    client-side quoting ``1.5`` becomes numeric) and keeps values out of the
    SQL text the server shows in pg_stat_activity and its logs.
    INTERNAL: ``psycopg._queries.PostgresQuery`` is psycopg's own converter
    (there is no public one). Guarded by test_pgconn_internals_*.
    """
    pgq = PostgresQuery(tx)
    pgq.convert(query, params)
    return pgq.query, pgq.params or (), pgq.types, pgq.formats or ()


class Adaptation:
    """The connection's Transformer and encoding, kept across queries as a cursor keeps its own.

    A fresh Transformer per query would look every column's loader up again (~0.7 µs for
    one column, more for more); a kept one remembers them. psycopg's loaders and dumpers
    read session settings when they are made (the text encoding, timestamptz's zone, the
    date and interval formats), so `PgConnection.execute` reads those four before each query
    (one libpq read each, written out there: a call here would cost as much as the reads) and
    `renew` starts afresh after a change, which a `SET` or `set_config()` in any query can make.
    """

    __slots__ = ("_conn", "settings", "tx", "encoding")

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn
        self.settings: tuple = ()
        self.tx: Transformer = Transformer(conn)
        self.encoding = "utf-8"

    def renew(self, settings: tuple) -> None:
        """The session's settings changed to `settings` (client_encoding, TimeZone, DateStyle,
        IntervalStyle, as `PgConnection.execute` reads them): a fresh Transformer."""
        self.settings, self.tx = settings, Transformer(self._conn)
        self.encoding = self._conn.info.encoding


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
    tx: Transformer,
    conn: psycopg.Connection[Any],
    result: pq.abc.PGresult,
    encoding: str,
    row_factory: Callable[[Any], Any] | None,
) -> QueryResult:
    if result.status != _TUPLES_OK:
        return QueryResult([], result, encoding)
    tx.set_pgresult(result)
    # tuple itself (not an equivalent function) hits psycopg's C fast path.
    make_row = tuple if row_factory is None else row_factory(_ResultCursor(conn, result, encoding))
    rows = tx.load_rows(0, result.ntuples, make_row)
    tx.set_pgresult(None)  # the kept Transformer holds no result between queries
    return QueryResult(rows, result, encoding)


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
