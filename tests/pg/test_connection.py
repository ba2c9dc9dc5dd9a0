"""Tests for actors.pg.connection against a real PostgreSQL (the session's `database_url`)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import select
import time
import uuid
from decimal import Decimal

import psycopg
import psycopg.errors
import pytest
import trio
import trio.testing
from psycopg import sql
from psycopg.rows import class_row, dict_row, namedtuple_row, tuple_row
from psycopg.types.json import Json, Jsonb

from actors.pg import connection as pgconn_module
from actors.pg.connection import ConnectionLost, PgConnection, QueryResult

DSN = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(autouse=True)
def _use_session_database(request, database_url, direct_database_url):
    """The session's database (conftest: TEST_DATABASE_URL, local, or embedded); straight to
    PostgreSQL for a test marked `direct_postgres` (it checks backends by pid)."""
    global DSN
    DSN = direct_database_url if request.node.get_closest_marker("direct_postgres") else database_url
CANARY = "canary-Pw-7f3e9b"


@pytest.fixture
async def conn():
    c = await PgConnection.connect(DSN)
    yield c
    await c.close()


@pytest.fixture
async def admin():
    """A second connection, to watch and disturb the first."""
    c = await PgConnection.connect(DSN, application_name="triage-test-admin")
    yield c
    await c.close()


async def backend_state(admin: PgConnection, pid: int) -> str | None:
    result = await admin.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", [pid])
    return result.rows[0][0] if result.rows else None


async def wait_for_state(admin: PgConnection, pid: int, accept, timeout_s: float) -> str | None:
    """Poll pg_stat_activity until accept(state) or the (real-time) timeout."""
    with trio.move_on_after(timeout_s):
        while not accept(state := await backend_state(admin, pid)):
            await trio.sleep(0.02)
        return state
    return await backend_state(admin, pid)


async def terminate(admin: PgConnection, pid: int) -> None:
    await admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    await wait_for_state(admin, pid, lambda s: s is None, 2.0)


def exception_chain_text(exc: BaseException) -> str:
    parts = []
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen), repr(seen.args)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


# ---- types ------------------------------------------------------------------------

UTC = dt.UTC
ROUND_TRIP_VALUES = [
    pytest.param(42, id="int"),
    pytest.param(-(2**62), id="bigint"),
    pytest.param(1.5, id="float"),
    pytest.param(Decimal("12345.678900"), id="decimal"),
    pytest.param("héllo ☃ 'quoted' %s", id="str"),
    pytest.param(b"\x00\x01\xffbytes", id="bytes"),
    pytest.param(True, id="bool"),
    pytest.param(None, id="none"),
    pytest.param(dt.date(2024, 2, 29), id="date"),
    pytest.param(dt.time(13, 14, 15, 123456), id="time"),
    pytest.param(dt.datetime(2024, 2, 29, 13, 14, 15, 123456), id="timestamp"),
    pytest.param(dt.datetime(2024, 2, 29, 13, 14, 15, 123456, tzinfo=UTC), id="timestamptz"),
    pytest.param(dt.timedelta(days=1, seconds=5), id="interval"),
    pytest.param(uuid.UUID("12345678-1234-5678-1234-567812345678"), id="uuid"),
    pytest.param([1, 2, 3], id="int-array"),
]


@pytest.mark.parametrize("value", ROUND_TRIP_VALUES)
async def test_execute_parameter_value_round_trips_unchanged(conn, value):
    result = await conn.execute("SELECT %s", [value])
    assert result.rows == [(value,)]
    assert type(result.rows[0][0]) is type(value)


async def test_execute_text_list_parameter_round_trips_as_text_array(conn):
    # As in psycopg, a list of str is sent untyped: the query names the type.
    result = await conn.execute("SELECT %s::text[]", [["a", "b,c", None]])
    assert result.rows == [(["a", "b,c", None],)]


@pytest.mark.parametrize("wrapper", [Json, Jsonb])
async def test_execute_json_parameter_loads_back_as_python(conn, wrapper):
    doc = {"a": [1, 2, {"b": None}], "c": "☃"}
    result = await conn.execute("SELECT %s", [wrapper(doc)])
    assert result.rows == [(doc,)]


async def test_execute_server_types_load_as_python_types(conn):
    result = await conn.execute(
        """SELECT 7::int, 1.50::numeric, 'x'::text, '\\x0102'::bytea, true,
                  '2024-01-02'::date, '2024-01-02 03:04:05+00'::timestamptz,
                  '12345678-1234-5678-1234-567812345678'::uuid,
                  '{"k": [1]}'::json, '{"k": 2}'::jsonb, ARRAY[1,2]::int[],
                  ARRAY['a','b']::text[], NULL::int"""
    )
    assert result.rows == [
        (
            7,
            Decimal("1.50"),
            "x",
            b"\x01\x02",
            True,
            dt.date(2024, 1, 2),
            dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
            uuid.UUID("12345678-1234-5678-1234-567812345678"),
            {"k": [1]},
            {"k": 2},
            [1, 2],
            ["a", "b"],
            None,
        )
    ]


async def test_execute_named_parameters_bind_by_name(conn):
    result = await conn.execute("SELECT %(a)s::int + %(b)s, %(a)s", {"a": 40, "b": 2})
    assert result.rows == [(42, 40)]


async def test_execute_without_params_sends_percent_literally(conn):
    assert (await conn.execute("SELECT '100%'")).rows == [("100%",)]
    assert (await conn.execute("SELECT '100%%', %s", [1])).rows == [("100%", 1)]


async def test_execute_composed_sql_query_is_accepted(conn):
    query = sql.SQL("SELECT {} AS {}").format(sql.Literal(5), sql.Identifier("five"))
    result = await conn.execute(query)
    assert (result.rows, result.columns) == ([(5,)], ["five"])


async def test_execute_result_reports_status_rowcount_and_columns(conn):
    await conn.execute("CREATE TEMP TABLE t (id int PRIMARY KEY, v text)")
    ins = await conn.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    upd = await conn.execute("UPDATE t SET v = 'z' WHERE id >= %s", [2])
    sel = await conn.execute("SELECT id, v FROM t ORDER BY id")
    assert (ins.status, ins.rowcount) == ("INSERT 0 3", 3)
    assert (upd.status, upd.rowcount, upd.rows, upd.columns) == ("UPDATE 2", 2, [], [])
    assert (sel.status, sel.rowcount, sel.columns) == ("SELECT 3", 3, ["id", "v"])
    assert sel.rows == [(1, "a"), (2, "z"), (3, "z")]
    assert isinstance(sel, QueryResult)


async def test_execute_several_statements_returns_last_result(conn):
    result = await conn.execute("SELECT 1; SELECT 2 AS two")
    assert (result.rows, result.columns) == ([(2,)], ["two"])


async def test_execute_empty_query_returns_empty_result(conn):
    result = await conn.execute("")
    assert (result.rows, result.status, result.rowcount) == ([], "", -1)


async def test_execute_session_settings_changed_between_queries_take_effect(conn):
    # Loaders read TimeZone, DateStyle and client_encoding when made: a connection that keeps
    # them between queries must notice a change (as psycopg's fresh cursors do).
    query = "SELECT '2024-01-02 03:04:05+00'::timestamptz, 'é'::text, '2024-01-02'::date"
    first = (await conn.execute(query)).rows[0]
    await conn.execute("SET TimeZone = 'Asia/Tokyo'")
    await conn.execute("SET client_encoding = 'LATIN1'")
    second = (await conn.execute(query)).rows[0]
    assert first == second  # the same instant, text and date
    assert second[0].utcoffset() == dt.timedelta(hours=9)
    assert (await conn.execute("SELECT %s::text", ["ü"])).rows == [("ü",)]
    await conn.execute("SET DateStyle = 'German'")
    assert (await conn.execute("SELECT '2024-01-02'::date")).rows == [(dt.date(2024, 1, 2),)]


async def test_execute_server_notice_does_not_disturb_the_connection(conn):
    await conn.execute("DO $$ BEGIN RAISE NOTICE 'hello'; RAISE WARNING 'careful'; END $$")
    assert (await conn.execute("SELECT 1")).rows == [(1,)]


# ---- row factories ----------------------------------------------------------------


@dataclasses.dataclass
class Point:
    x: int
    y: str


async def test_execute_dict_row_returns_dicts(conn):
    result = await conn.execute("SELECT 1 AS x, 'a' AS y", row_factory=dict_row)
    assert result.rows == [{"x": 1, "y": "a"}]


async def test_execute_namedtuple_row_returns_named_tuples(conn):
    result = await conn.execute("SELECT 1 AS x, 'a' AS y", row_factory=namedtuple_row)
    assert (result.rows[0].x, result.rows[0].y) == (1, "a")


async def test_execute_class_row_builds_instances(conn):
    result = await conn.execute("SELECT 1 AS x, 'a' AS y", row_factory=class_row(Point))
    assert result.rows == [Point(1, "a")]


async def test_execute_tuple_row_returns_tuples(conn):
    result = await conn.execute("SELECT 1, 'a'", row_factory=tuple_row)
    assert result.rows == [(1, "a")]


async def test_execute_custom_row_factory_sees_description(conn):
    def upper_names(cursor):
        names = [col.name.upper() for col in cursor.description]
        return lambda values: dict(zip(names, values, strict=True))

    result = await conn.execute("SELECT 1 AS x, 2::int8 AS y", row_factory=upper_names)
    assert result.rows == [{"X": 1, "Y": 2}]


async def test_execute_row_factory_on_command_returns_no_rows(conn):
    result = await conn.execute("SELECT 1 WHERE false", row_factory=dict_row)
    assert result.rows == []


# ---- errors -----------------------------------------------------------------------


async def test_execute_unique_violation_raises_psycopg_class_with_diag(conn):
    await conn.execute("CREATE TEMP TABLE u (k text PRIMARY KEY)")
    await conn.execute("INSERT INTO u VALUES (%s)", ["secret-value"])
    with pytest.raises(psycopg.errors.UniqueViolation) as info:
        await conn.execute("INSERT INTO u VALUES (%s)", ["secret-value"])
    exc = info.value
    assert exc.sqlstate == "23505"
    assert exc.diag.constraint_name == "u_pkey"
    assert str(exc) == exc.diag.message_primary
    # DETAIL quotes the value: it stays in .diag, out of the message.
    assert "secret-value" in (exc.diag.message_detail or "")
    assert "secret-value" not in str(exc)
    assert (await conn.execute("SELECT 1")).rows == [(1,)]


async def test_execute_undefined_table_raises_programming_error(conn):
    with pytest.raises(psycopg.errors.UndefinedTable) as info:
        await conn.execute("SELECT * FROM no_such_table_xyz")
    assert isinstance(info.value, psycopg.ProgrammingError)
    assert info.value.sqlstate == "42P01"
    assert not conn.broken
    assert (await conn.execute("SELECT 1")).rows == [(1,)]


async def test_execute_division_by_zero_raises_data_error(conn):
    with pytest.raises(psycopg.errors.DivisionByZero) as info:
        await conn.execute("SELECT 1 / %s", [0])
    assert isinstance(info.value, psycopg.DataError)
    assert str(info.value) == "division by zero"
    assert (await conn.execute("SELECT 2")).rows == [(2,)]


async def test_execute_syntax_error_raises_and_connection_survives(conn):
    with pytest.raises(psycopg.errors.SyntaxError):
        await conn.execute("SELEKT 1")
    assert (await conn.execute("SELECT 3")).rows == [(3,)]


async def test_execute_error_in_later_statement_raises_it(conn):
    with pytest.raises(psycopg.errors.DivisionByZero):
        await conn.execute("SELECT 1; SELECT 1/0")


async def test_execute_wrong_parameter_count_raises_before_sending(conn):
    with pytest.raises(psycopg.ProgrammingError):
        await conn.execute("SELECT %s, %s", [1])
    assert (await conn.execute("SELECT 1")).rows == [(1,)]


async def test_execute_copy_raises_not_supported_and_discards_connection(conn):
    with pytest.raises(psycopg.NotSupportedError):
        await conn.execute("COPY (SELECT 1) TO STDOUT")
    assert conn.broken


async def test_execute_concurrent_use_raises_interface_error(conn):
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.execute, "SELECT pg_sleep(0.2)")
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(psycopg.InterfaceError):
            await conn.execute("SELECT 1")


# ---- transactions -----------------------------------------------------------------


async def test_execute_commit_makes_rows_visible_elsewhere(conn, admin):
    table = sql.Identifier(f"pgconn_tx_{uuid.uuid4().hex}")  # real table: others must see it
    await admin.execute(sql.SQL("CREATE TABLE {} (v text)").format(table))
    try:
        assert not conn.in_transaction
        await conn.execute("BEGIN")
        assert conn.in_transaction
        await conn.execute(sql.SQL("INSERT INTO {} VALUES ('committed')").format(table))
        count = sql.SQL("SELECT count(*) FROM {}").format(table)
        assert (await admin.execute(count)).rows == [(0,)]
        await conn.execute("COMMIT")
        assert not conn.in_transaction
        assert (await admin.execute(count)).rows == [(1,)]
    finally:
        await admin.execute(sql.SQL("DROP TABLE {}").format(table))


async def test_execute_rollback_discards_changes(conn):
    await conn.execute("CREATE TEMP TABLE r (v int)")
    await conn.execute("BEGIN")
    await conn.execute("INSERT INTO r VALUES (1)")
    await conn.execute("ROLLBACK")
    assert not conn.in_transaction
    assert (await conn.execute("SELECT count(*) FROM r")).rows == [(0,)]


async def test_execute_error_inside_transaction_leaves_it_failed_until_rollback(conn):
    await conn.execute("BEGIN")
    with pytest.raises(psycopg.errors.DivisionByZero):
        await conn.execute("SELECT 1/0")
    assert conn.in_transaction
    with pytest.raises(psycopg.errors.InFailedSqlTransaction):
        await conn.execute("SELECT 1")
    await conn.execute("ROLLBACK")
    assert not conn.in_transaction
    assert (await conn.execute("SELECT 1")).rows == [(1,)]


# ---- cancellation and timeouts --------------------------------------------------------


async def test_cancel_pg_sleep_stops_backend_and_keeps_connection(conn, admin):
    started = time.monotonic()
    with trio.move_on_after(0.5) as scope:
        await conn.execute("SELECT pg_sleep(60)")
    assert scope.cancelled_caught
    assert time.monotonic() - started < 1.5
    state = await wait_for_state(admin, conn.backend_pid, lambda s: s != "active", 2.0)
    assert state != "active"
    assert not conn.broken
    assert (await conn.execute("SELECT 1")).rows == [(1,)]


class _Yields:
    """Spies on `PgConnection.execute`'s yield after sending and its waits on the socket;
    `slow` makes the yield last until the answer is in (as if other tasks ran meanwhile):
    it blocks on the connection's socket first, without a schedule point."""

    def __init__(self, monkeypatch, conn: PgConnection) -> None:
        self.yields = self.waits = 0
        self.slow = False
        real_checkpoint, real_wait = pgconn_module._checkpoint, pgconn_module._wait_readable
        sock = conn._pgconn.socket

        async def checkpoint() -> None:
            self.yields += 1
            if self.slow:
                assert select.select([sock], [], [], 10.0)[0], "no answer within 10 s"
            await real_checkpoint()

        async def wait_readable(sock) -> None:
            self.waits += 1
            await real_wait(sock)

        monkeypatch.setattr(pgconn_module, "_checkpoint", checkpoint)
        monkeypatch.setattr(pgconn_module, "_wait_readable", wait_readable)


async def test_cancel_at_the_yield_after_sending_stops_the_statement_and_keeps_connection(
        conn, admin, monkeypatch):
    """A statement sent back to back with the previous one yields once right after sending
    (its answer usually comes in meanwhile): a cancellation delivered there is a cancellation
    mid-query, as one during the wait is. The server is asked to cancel the statement it got,
    the connection drains back to idle."""
    monkeypatch.setattr(conn, "back_to_back_s", math.inf)  # every statement is back to back
    spy = _Yields(monkeypatch, conn)
    with trio.CancelScope() as scope:
        scope.cancel()  # delivered at the first schedule point: the statement is sent by then
        await conn.execute("SELECT pg_sleep(60)")
    assert scope.cancelled_caught
    assert (spy.yields, spy.waits) == (1, 0)  # it was that yield, not the wait on the socket
    state = await wait_for_state(admin, conn.backend_pid, lambda s: s != "active", 2.0)
    assert state != "active"
    assert not conn.broken
    assert (await conn.execute("SELECT 1")).rows == [(1,)]


def _count_steps_of_this_task():
    """An instrument counting the schedule points of the calling task (`.steps`)."""

    class CountSteps(trio.abc.Instrument):
        steps = 0

        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            self.steps += task is me

    me = trio.lowlevel.current_task()
    return CountSteps()


async def test_lone_back_to_back_queries_mostly_wait_for_their_answer_at_once(conn, monkeypatch):
    """With nothing else to run, one yield after sending finds no answer yet, so a connection
    then waits for its answers at once for a while: a lone caller's query is one schedule point
    in nearly every case, not two (a yield, then the wait)."""
    monkeypatch.setattr(conn, "back_to_back_s", math.inf)  # however loaded the machine
    queries = 68
    trio.lowlevel.add_instrument(counter := _count_steps_of_this_task())
    try:
        for _ in range(queries):
            await conn.execute("SELECT pg_sleep(0.001)")  # the answer is never in after one yield
    finally:
        trio.lowlevel.remove_instrument(counter)
    # One schedule point a query, plus a yield that found nothing in at most one query of
    # eight; trying first on every query would make it two a query (136).
    assert queries <= counter.steps <= queries + queries // 8, counter.steps


async def test_back_to_back_statements_whose_answer_is_in_after_the_yield_never_wait_on_the_socket(
        conn, monkeypatch):
    """The point of the yield: when the answer came in meanwhile, it is read then, with no
    wait on the socket (no epoll registration), statement after statement."""
    monkeypatch.setattr(conn, "back_to_back_s", math.inf)
    spy = _Yields(monkeypatch, conn)
    spy.slow = True
    for n in range(30):
        assert (await conn.execute("SELECT %s::int", [n])).rows == [(n,)]
    assert (spy.yields, spy.waits) == (30, 0)


async def test_yields_resume_once_answers_are_in_again_after_a_run_of_misses(conn, monkeypatch):
    """Misses (the answer never in after one yield) make the next 1, 2, 4 ... 16 statements
    wait at once; once answers are in again after the yield, one hit resets that: from then
    on every statement yields and none waits on the socket, and a later lone miss makes only
    the next statement wait."""
    monkeypatch.setattr(conn, "back_to_back_s", math.inf)
    spy = _Yields(monkeypatch, conn)
    for _ in range(40):
        await conn.execute("SELECT pg_sleep(0.005)")  # the answer is never in after one yield
    misses = spy.yields
    assert 4 <= misses <= 12, misses  # 1, 2, 4, 8, 16 waited between: six yields in 40
    spy.slow, spy.yields, spy.waits = True, 0, 0
    for _ in range(16):  # at most the 16 the last miss left wait at once
        await conn.execute("SELECT 1")
    assert spy.yields >= 1  # the back-off ran out within them
    spy.yields, spy.waits = 0, 0
    for _ in range(20):
        await conn.execute("SELECT 1")
    assert (spy.yields, spy.waits) == (20, 0)  # the hit reset the back-off: no wait since
    spy.slow, spy.yields, spy.waits = False, 0, 0
    await conn.execute("SELECT pg_sleep(0.05)")  # one miss after those hits
    spy.slow = True
    for _ in range(5):
        await conn.execute("SELECT 1")
    # The miss's own wait, then one statement waits at once and the rest yield again: a lone
    # miss after hits costs one wait, not 16.
    assert (spy.yields, spy.waits) == (5, 2)


async def test_statements_apart_from_the_previous_one_wait_for_their_answer_without_a_yield(
        conn, monkeypatch):
    """A statement sent longer than `back_to_back_s` after the connection's previous one
    ended (a request handler's, amid other work) waits for its answer at once: no yield first,
    one schedule point a query."""
    monkeypatch.setattr(conn, "back_to_back_s", 0.0)  # each statement further apart than that
    spy = _Yields(monkeypatch, conn)
    queries = 20
    trio.lowlevel.add_instrument(counter := _count_steps_of_this_task())
    try:
        for _ in range(queries):
            assert (await conn.execute("SELECT 1")).rows == [(1,)]
    finally:
        trio.lowlevel.remove_instrument(counter)
    assert (spy.yields, spy.waits) == (0, queries)
    assert counter.steps == queries


async def test_cancel_with_blocking_cancel_fallback_stops_backend(conn, admin, monkeypatch):
    # libpq < 17 has no PGcancelConn: PQcancel then runs in a worker thread.
    monkeypatch.setattr(pgconn_module, "_HAS_CANCEL_CONN", False)
    with trio.move_on_after(0.3):
        await conn.execute("SELECT pg_sleep(60)")
    state = await wait_for_state(admin, conn.backend_pid, lambda s: s != "active", 2.0)
    assert state != "active"
    assert (await conn.execute("SELECT 1")).rows == [(1,)]


async def test_cancel_inside_transaction_leaves_failed_transaction(conn):
    await conn.execute("BEGIN")
    with trio.move_on_after(0.2):
        await conn.execute("SELECT pg_sleep(60)")
    assert conn.in_transaction and not conn.broken
    await conn.execute("ROLLBACK")
    assert not conn.in_transaction


async def test_cancel_unanswered_closes_connection_within_cancel_timeout(admin, monkeypatch):
    async def lost_cancel_request(self):
        await trio.sleep_forever()

    monkeypatch.setattr(PgConnection, "_send_cancel_request", lost_cancel_request)
    conn = await PgConnection.connect(DSN, cancel_timeout_s=0.3)
    pid = conn.backend_pid
    started = time.monotonic()
    with trio.move_on_after(0.2):
        await conn.execute("SELECT pg_sleep(30)")
    assert 0.4 < time.monotonic() - started < 1.5
    assert conn.broken
    with pytest.raises(ConnectionLost) as info:
        await conn.execute("SELECT 1")
    assert info.value.statement_sent is False
    await terminate(admin, pid)  # the backend never heard the cancel


@pytest.mark.direct_postgres  # a session SET: behind PgBouncer it would stay on a shared server connection
async def test_connect_statement_timeout_cancels_long_query(admin):
    async with await PgConnection.connect(DSN, statement_timeout_s=0.2) as conn:
        assert (await conn.execute("SHOW statement_timeout")).rows == [("200ms",)]
        with pytest.raises(psycopg.errors.QueryCanceled):
            await conn.execute("SELECT pg_sleep(5)")
        assert (await conn.execute("SELECT 1")).rows == [(1,)]


# ---- connection loss ----------------------------------------------------------------


@pytest.mark.direct_postgres
async def test_execute_backend_terminated_mid_query_raises_connection_lost(conn, admin):
    async def kill_soon():
        await wait_for_state(admin, conn.backend_pid, lambda s: s == "active", 2.0)
        await admin.execute("SELECT pg_terminate_backend(%s)", [conn.backend_pid])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(kill_soon)
        with pytest.raises(psycopg.OperationalError) as info:
            await conn.execute("SELECT pg_sleep(10)")
    exc = info.value
    assert isinstance(exc, ConnectionLost)
    assert exc.statement_sent is True
    assert exc.sqlstate == "57P01"
    assert isinstance(exc.__cause__, psycopg.errors.AdminShutdown)
    assert conn.broken


@pytest.mark.direct_postgres
async def test_execute_backend_terminated_while_idle_is_safe_to_retry(conn, admin):
    await terminate(admin, conn.backend_pid)
    with pytest.raises(ConnectionLost) as info:
        await conn.execute("SELECT 1")
    assert info.value.statement_sent is False
    assert info.value.sqlstate == "57P01"
    assert conn.broken


@pytest.mark.direct_postgres
async def test_close_from_another_task_interrupts_query_and_stops_backend(conn, admin):
    async def close_soon():
        await wait_for_state(admin, conn.backend_pid, lambda s: s == "active", 2.0)
        await conn.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(close_soon)
        with pytest.raises(ConnectionLost) as info:
            await conn.execute("SELECT pg_sleep(10)")
    assert info.value.statement_sent is True
    assert conn.broken
    state = await wait_for_state(admin, conn.backend_pid, lambda s: s != "active", 2.0)
    assert state != "active"


async def test_close_then_execute_raises_connection_lost_not_sent(conn):
    await conn.close()
    assert conn.broken
    assert conn.in_transaction  # libpq reports UNKNOWN: not reusable as idle
    with pytest.raises(ConnectionLost) as info:
        await conn.execute("SELECT 1")
    assert info.value.statement_sent is False


async def test_close_now_is_idempotent_and_safe_outside_trio(conn):
    conn.close_now()
    conn.close_now()
    await conn.close()
    assert conn.broken


# ---- connecting -------------------------------------------------------------------------


@pytest.mark.direct_postgres
async def test_connect_sets_identity_and_timestamps(conn, admin):
    assert conn.backend_pid > 0
    assert conn.created_at <= conn.last_used_at <= trio.current_time()
    result = await admin.execute(
        "SELECT application_name FROM pg_stat_activity WHERE pid = %s", [conn.backend_pid]
    )
    assert result.rows == [("triage",)]
    before = conn.last_used_at
    await trio.sleep(0.01)
    await conn.execute("SELECT 1")
    assert conn.last_used_at > before


async def test_connect_hostname_is_resolved_and_connects():
    from actors.faults import FaultProxy

    async with FaultProxy.for_dsn(DSN) as proxy:  # a TCP port even for an embedded (socket) server
        dsn = psycopg.conninfo.make_conninfo(DSN, host="localhost", port=str(proxy.port))
        async with await PgConnection.connect(dsn) as conn:
            assert (await conn.execute("SELECT 1")).rows == [(1,)]


async def test_connect_closed_port_raises_operational_error_quickly():
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as info:
        await PgConnection.connect("postgresql://postgres@127.0.0.1:1/test")
    assert time.monotonic() - started < 2.0
    assert not isinstance(info.value, psycopg.errors.ConnectionTimeout)
    assert "127.0.0.1" in str(info.value)


async def test_connect_silent_server_raises_connection_timeout():
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")  # accepts, never answers
    port = listeners[0].socket.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(psycopg.errors.ConnectionTimeout, match="connection timeout"):
        await PgConnection.connect(
            f"postgresql://postgres:{CANARY}@127.0.0.1:{port}/test", connect_timeout_s=0.3
        )
    assert time.monotonic() - started < 1.0
    for listener in listeners:
        await listener.aclose()


@pytest.mark.parametrize(
    "dsn",
    [
        pytest.param(f"postgresql://postgres:{CANARY}@127.0.0.1:1/test", id="uri-refused"),
        pytest.param(f"host=127.0.0.1 port=1 password={CANARY} dbname=test", id="kv-refused"),
        pytest.param(f"postgresql://postgres:{CANARY} x@127.0.0.1/test", id="uri-malformed"),
        pytest.param(f"host=127.0.0.1 password={CANARY} garbage", id="kv-malformed"),
        pytest.param(f"host=127.0.0.1 port={CANARY} password={CANARY}", id="bad-port"),
    ],
)
async def test_connect_failure_never_reveals_password_or_dsn(dsn):
    with pytest.raises(psycopg.OperationalError) as info:
        await PgConnection.connect(dsn)
    text = exception_chain_text(info.value)
    assert CANARY not in text
    assert dsn not in text
    assert info.value.pgconn is None


async def test_connect_negative_statement_timeout_raises_value_error():
    with pytest.raises(ValueError):
        await PgConnection.connect(DSN, statement_timeout_s=-1)


# ---- psycopg internals we rely on (fail loudly if psycopg changes them) -----------------


async def test_pgconn_internals_wrapped_pgconn_is_an_adaptation_context(conn):
    wrapped = conn._conn
    assert isinstance(wrapped, psycopg.Connection)
    assert wrapped.pgconn is conn._pgconn
    assert wrapped.info.encoding == "utf-8"
    assert wrapped.adapters.get_loader(20, psycopg.pq.Format.TEXT) is not None
    assert psycopg.ClientCursor(wrapped).mogrify("SELECT %s", ["it's"]) == "SELECT 'it''s'"


async def test_pgconn_internals_error_from_result_attaches_result(conn):
    with pytest.raises(psycopg.errors.DivisionByZero) as info:
        await conn.execute("SELECT 1/0")
    exc = info.value
    assert exc.pgresult is not None
    assert exc.diag.sqlstate == "22012"
    assert exc.diag.severity_nonlocalized == "ERROR"
    assert exc.diag.message_primary == "division by zero"


async def test_pgconn_internals_row_factories_read_only_the_shim(conn):
    result = await conn.execute("SELECT 1 AS a", row_factory=psycopg.rows.scalar_row)
    assert result.rows == [1]
    kwargs = await conn.execute("SELECT 1 AS a", row_factory=psycopg.rows.kwargs_row(dict))
    assert kwargs.rows == [{"a": 1}]


async def test_pgconn_internals_bind_server_side_matches_psycopg_cursor(conn):
    bind = pgconn_module._bind_server_side
    tx = psycopg.adapt.Transformer(conn._conn)
    query, values, types, _formats = bind(tx, "SELECT %s, %s, '100%%'", [1, 1.5])
    assert query == b"SELECT $1, $2, '100%'"
    assert len(values) == 2
    assert types[1] == psycopg.adapters.types["float8"].oid
    query, values, _types, _formats = bind(
        tx, "SELECT %(a)s, %(b)s, %(a)s", {"a": 1, "b": 2}
    )
    assert query == b"SELECT $1, $2, $1"
    assert len(values) == 2
