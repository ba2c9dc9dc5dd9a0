"""`mon.db` against a real PostgreSQL: guards, pool, transactions, cancellation, failures.

Real time with short explicit timeouts (MockClock cannot drive real sockets).
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import psycopg
import psycopg.errors
import pytest
import trio
import trio.testing
from psycopg.rows import dict_row

from actors import CircuitOpen, open_monitoring
from actors.faults import BlackHole, FaultProxy
from actors.pg.connection import ConnectionLost, PgConnection
from actors.pg.database import DatabaseNotConfigured, QueryTimeout, Watchdog
from messages.config import Config, DatabaseConfig, Priority, QueueConfig


def config_for(url: str, **db) -> Config:
    app = db.pop("application_name", f"triage-test-{uuid.uuid4().hex[:8]}")
    return Config(database_url=url, database=DatabaseConfig(application_name=app, **db))


async def backends(url: str, app: str, state: str | None = None) -> int:
    async with await PgConnection.connect(url) as conn:
        sql = "select count(*) from pg_stat_activity where application_name = %s"
        params: list = [app]
        if state:
            sql += " and state = %s"
            params.append(state)
        return (await conn.execute(sql, params)).rows[0][0]


@pytest.fixture
async def table(database_url):
    name = f"t_{uuid.uuid4().hex[:10]}"
    async with await PgConnection.connect(database_url) as conn:
        await conn.execute(f"create table {name} (id int primary key, note text, qty int not null default 0)")
    yield name
    async with await PgConnection.connect(database_url) as conn:
        await conn.execute(f"drop table if exists {name}")


async def test_db_fetch_variants_and_types_round_trip(database_url):
    async with open_monitoring(config_for(database_url)) as mon:
        values = [42, 1.5, Decimal("12.345"), "tëxt", b"\x00\x01", True, None, dt.date(2024, 1, 2),
                  dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC), uuid.UUID(int=7), [1, 2, 3]]
        row = await mon.db.fetchrow("select " + ", ".join(["%s"] * len(values)), values)
        assert list(row) == values
        assert await mon.db.fetchval("select %(a)s::int + %(b)s::int", {"a": 2, "b": 3}) == 5
        rows = await mon.db.fetch("select g as n from generate_series(1, 3) g", row_factory=dict_row)
        assert rows == [{"n": 1}, {"n": 2}, {"n": 3}]
        assert await mon.db.fetchrow("select 1 where false") is None
        assert await mon.db.execute("select 1") == "SELECT 1"
        snap = await mon.snapshot()
        assert snap.breakers["database"].successes == 5 and snap.queue.in_flight == 0


async def test_db_caller_errors_are_psycopg_classes_and_do_not_trip(database_url, table):
    async with open_monitoring(config_for(database_url)) as mon:
        await mon.db.execute(f"insert into {table} (id) values (1)")
        with pytest.raises(psycopg.errors.UniqueViolation) as info:
            await mon.db.execute(f"insert into {table} (id) values (1)")
        assert info.value.sqlstate == "23505"
        for _ in range(10):
            with pytest.raises(psycopg.errors.UndefinedTable):
                await mon.db.fetch("select * from no_such_table_here")
        with pytest.raises(psycopg.errors.DivisionByZero):
            await mon.db.fetchval("select 1/0")
        snap = (await mon.snapshot()).breakers["database"]
        assert (snap.state, snap.failures, snap.ignored) == ("closed", 0, 12)
        assert await mon.db.fetchval(f"select count(*) from {table}") == 1


async def test_db_transaction_commits_and_rolls_back(database_url, table):
    async with open_monitoring(config_for(database_url)) as mon:
        async with mon.db.transaction(priority=Priority.CRITICAL, tier="critical") as tx:
            await tx.execute(f"insert into {table} (id, qty) values (1, 10)")
            await tx.execute(f"update {table} set qty = qty - 1 where id = 1")
            assert await tx.fetchval(f"select qty from {table} where id = 1") == 9
        with pytest.raises(RuntimeError):
            async with mon.db.transaction() as tx:
                await tx.execute(f"insert into {table} (id) values (2)")
                raise RuntimeError("the caller changed its mind")
        with trio.move_on_after(0.2):
            async with mon.db.transaction() as tx:
                await tx.execute(f"insert into {table} (id) values (3)")
                await trio.sleep_forever()
        assert await mon.db.fetch(f"select id, qty from {table} order by id") == [(1, 9)]
        snap = await mon.snapshot()
        assert snap.queue.in_flight == 0


async def test_db_timeout_cancels_query_and_frees_backend(database_url, direct_database_url):
    """The cancel reaches the backend running the statement (through PgBouncer too): the server
    stops working on it, as PostgreSQL itself reports."""
    cfg = config_for(database_url)
    sleeper = f"select pg_sleep(60) -- {cfg.database.application_name}"

    async def running() -> int:
        async with await PgConnection.connect(direct_database_url) as conn:
            sql = "select count(*) from pg_stat_activity where query = %s and state = 'active'"
            return (await conn.execute(sql, [sleeper])).rows[0][0]

    async with open_monitoring(cfg) as mon:
        async with trio.open_nursery() as nursery:
            async def sleep() -> None:
                with pytest.raises(QueryTimeout) as info:
                    await mon.db.fetchval(sleeper, timeout_s=1.0)
                assert info.value.retriable is False
            nursery.start_soon(sleep)
            with trio.fail_after(2):
                while not await running():  # it did reach the server
                    await trio.sleep(0.05)
        with trio.fail_after(2):
            while await running():
                await trio.sleep(0.05)
        assert await mon.db.fetchval("select 7") == 7


async def test_db_watchdog_never_reuses_a_connection_its_cancel_request_is_on_its_way_to(database_url):
    """A statement that ends by itself just as its statement timeout comes, after the watchdog
    sent the server its cancel request: that request lands on whatever the connection runs
    next (another caller's insert, the next statement of a transaction), so the connection
    is retired, never handed out again."""
    watchdog = Watchdog(cancel_lead_s=1.0)
    async with await PgConnection.connect(database_url) as conn, trio.open_nursery() as nursery:
        watchdog.watch(conn, trio.current_time() + 1.0)  # its statement timeout: now
        assert (await conn.execute("select 1")).rows == [(1,)]  # done by itself, just in time
        watchdog._check(nursery, trio.current_time())  # the watchdog's round sends the cancel
        assert conn.watchdog_verdict == "cancelled"
        await trio.testing.wait_all_tasks_blocked()  # the cancel request on its way (or gone)
        assert watchdog.unwatch(conn) is False  # not closed by the watchdog: by unwatch
        assert conn.broken and not conn.reusable
        nursery.cancel_scope.cancel()


async def test_db_watchdog_retires_a_connection_whose_statement_ended_as_its_query_timeout_came(database_url):
    """The watchdog gives up on a statement (the query timeout) in the instant it ends by
    itself: the connection is closed when its caller stops watching, not later when the
    watchdog's own close runs, so it never goes back to the pool and that close never
    cancels the next caller's statement."""
    watchdog = Watchdog(cancel_lead_s=0.0)
    async with await PgConnection.connect(database_url) as conn, trio.open_nursery() as nursery:
        watchdog.watch(conn, trio.current_time())  # its query timeout: now
        assert (await conn.execute("select 1")).rows == [(1,)]  # done by itself, just in time
        watchdog._check(nursery, trio.current_time())  # the watchdog's round: it gives up on it
        assert conn.watchdog_verdict == "expired" and not conn.broken  # its close: not run yet
        assert not conn.reusable  # the verdict alone keeps it from any pool
        assert watchdog.unwatch(conn) is True
        assert conn.broken and not conn.reusable  # at once, before the watchdog's close runs
        # The verdict was on that statement: a later one on this connection (the next of a
        # transaction) is what it is, a lost connection with nothing sent, not a timeout.
        assert conn.watchdog_verdict is None
        with pytest.raises(ConnectionLost) as info:
            await conn.execute("select 2")
        assert info.value.statement_sent is False


async def test_db_black_holed_query_without_timeout_ends_in_query_timeout_at_its_bound(database_url):
    # No timeout_s: the watchdog is the client-side bound (query_timeout_s). The network
    # swallows everything, so only the client can end the call: outcome unknown, slot back.
    async with FaultProxy.for_dsn(database_url) as proxy:
        dsn = psycopg.conninfo.make_conninfo(database_url, host="127.0.0.1", port=str(proxy.port))
        cfg = config_for(dsn, query_timeout_s=0.5, statement_timeout_s=30.0)
        async with open_monitoring(cfg) as mon:
            assert await mon.db.fetchval("select 1") == 1
            proxy.add(BlackHole())
            started = trio.current_time()
            with trio.fail_after(5), pytest.raises(QueryTimeout) as info:
                await mon.db.fetchval("select 2")
            assert trio.current_time() - started >= 0.5
            assert (info.value.timeout_s, info.value.retriable) == (0.5, False)
            proxy.remove("timeout")
            assert await mon.db.fetchval("select 3") == 3  # on a fresh connection
            with trio.fail_after(5), pytest.raises(QueryTimeout):
                async with mon.db.transaction() as tx:  # a statement in a transaction: the same bound
                    await tx.execute("select 4")
                    proxy.add(BlackHole())
                    await tx.execute("select 5")
            proxy.remove("timeout")
            assert await mon.db.fetchval("select 6") == 6
            snap = await mon.snapshot()
            assert (snap.queue.in_flight, snap.breakers["database"].failures) == (0, 2)


async def test_db_explicit_timeout_longer_than_the_watchdog_bound_is_honoured(database_url):
    async with open_monitoring(config_for(database_url, query_timeout_s=0.3)) as mon:
        assert await mon.db.fetchval("select pg_sleep(0.9)::text || 'done'", timeout_s=5) == "done"


async def test_db_terminated_backend_gives_one_error_then_recovers(database_url):
    cfg = config_for(database_url)
    app = cfg.database.application_name
    async with open_monitoring(cfg) as mon:
        assert await mon.db.fetchval("select 1") == 1

        async def killer():
            async with await PgConnection.connect(database_url) as conn:
                with trio.fail_after(5):
                    while not await backends(database_url, app, "active"):
                        await trio.sleep(0.02)
                await conn.execute("select pg_terminate_backend(pid) from pg_stat_activity "
                                   "where application_name = %s and state = 'active'", [app])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(killer)
            with pytest.raises(psycopg.OperationalError) as info:
                await mon.db.fetchval("select pg_sleep(10)")
        assert isinstance(info.value, ConnectionLost)
        assert info.value.retriable is False  # the statement had been sent: outcome unknown
        assert await mon.db.fetchval("select 2") == 2


async def test_db_idle_connection_killed_is_retried_transparently(database_url):
    cfg = config_for(database_url)
    app = cfg.database.application_name
    async with open_monitoring(cfg) as mon:
        assert await mon.db.fetchval("select 1") == 1
        async with await PgConnection.connect(database_url) as conn:
            await conn.execute("select pg_terminate_backend(pid) from pg_stat_activity "
                               "where application_name = %s", [app])
        with trio.fail_after(5):
            while await backends(database_url, app):
                await trio.sleep(0.02)
        assert await mon.db.fetchval("select 3") == 3


async def test_db_hundred_callers_never_exceed_pool_size(database_url):
    cfg = config_for(database_url)
    app = cfg.database.application_name
    seen: list[int] = []
    async with open_monitoring(cfg) as mon:
        async def caller(i: int):
            assert await mon.db.fetchval("select %s::int from pg_sleep(0.02)", [i]) == i

        async def watch(stop: trio.Event):
            while not stop.is_set():
                seen.append(await backends(database_url, app))
                await trio.sleep(0.01)

        stop = trio.Event()
        async with trio.open_nursery() as watcher:
            watcher.start_soon(watch, stop)
            async with trio.open_nursery() as nursery:
                for i in range(100):
                    nursery.start_soon(caller, i)
            stop.set()
        snap = await mon.snapshot()
    assert max(seen) <= 8 and max(seen) >= 2
    assert snap.queue.admitted == 100 and snap.queue.in_flight == 0


async def test_db_down_opens_breaker_after_threshold(database_url):
    cfg = Config(database_url="postgresql://postgres@127.0.0.1:1/test",
                 queue=QueueConfig(max_concurrent=2))
    async with open_monitoring(cfg) as mon:
        errors = []
        for _ in range(5):
            with pytest.raises(psycopg.OperationalError) as info:
                await mon.db.fetchval("select 1")
            errors.append(info.value)
        assert all(getattr(e, "retriable", False) for e in errors)
        await mon.breakers["database"].wait_state("open")
        with pytest.raises(CircuitOpen):
            await mon.db.fetchval("select 1")


async def test_db_not_configured_is_a_clear_error():
    async with open_monitoring(Config()) as mon:
        with pytest.raises(DatabaseNotConfigured, match="DATABASE_URL"):
            await mon.db.fetchval("select 1")


async def test_db_canary_password_never_emitted(database_url):
    """Connect and query failures with a password in the DSN: it appears in no error, log
    line, snapshot, health report or event."""
    import io

    import msgspec
    from loguru import logger

    canary = "CANARY-pw-7f3a9"
    sink = io.StringIO()
    handler = logger.add(sink, level="DEBUG", serialize=True, diagnose=False)
    logger.enable("actors")
    emitted: list[str] = []
    try:
        cfg = Config(database_url=f"postgresql://postgres:{canary}@127.0.0.1:1/test", health_check_interval_s=0.2)
        async with open_monitoring(cfg) as mon, mon.events(1024) as events:
            for _ in range(8):
                try:
                    await mon.db.fetchval("select %s::text", [canary])
                except Exception as exc:
                    emitted += [str(exc), repr(exc), str(exc.__cause__), str(exc.__context__)]
            await mon.health_report.wait_value(lambda r: r.status == "unhealthy")
            emitted.append(msgspec.json.encode(await mon.snapshot()).decode())
            emitted.append(msgspec.json.encode(await mon.health(detailed=True)).decode())
            emitted.append(msgspec.json.encode(await mon.db.metrics()).decode())
            emitted.append(repr(mon.config))
            while True:
                try:
                    emitted.append(msgspec.json.encode(events.receive_nowait()).decode())
                except trio.WouldBlock:
                    break
    finally:
        logger.remove(handler)
        logger.disable("actors")
    emitted.append(sink.getvalue())
    assert len(emitted) > 10 and sink.getvalue()
    assert not [e for e in emitted if canary in e]


# --- an idle pool keeps min_idle connections (issue #10 item 13, pool part) ------------------

async def test_database_sequential_calls_reuse_one_connection(direct_database_url):
    """One caller at a time needs one connection: ten calls in a row must not open eight."""
    cfg = config_for(direct_database_url)
    async with open_monitoring(cfg) as mon:
        for _ in range(10):
            assert await mon.db.fetchval("select 1") == 1
        assert await backends(direct_database_url, cfg.database.application_name) == 1


async def test_database_after_a_burst_the_idle_pool_shrinks_to_min_idle(direct_database_url):
    cfg = config_for(direct_database_url)
    cfg = Config(database_url=direct_database_url, database=cfg.database,
                 queue=QueueConfig(max_concurrent=8, min_idle=1, max_idle_s=0.5))
    app = cfg.database.application_name
    async with open_monitoring(cfg) as mon:
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(mon.db.fetchval, "select pg_sleep(0.1)")
        assert await backends(direct_database_url, app) == 8
        with trio.fail_after(3.0):
            while await backends(direct_database_url, app) > 1:
                await trio.sleep(0.1)
        await trio.sleep(0.7)  # and the last one is kept: min_idle
        assert await backends(direct_database_url, app) == 1
        assert await mon.db.fetchval("select 2") == 2  # the pool still works, and grows again
        snap = await mon.queue.snapshot()
        assert snap.pool.idle_closed == 7


async def test_database_min_idle_zero_closes_every_idle_connection(database_url):
    cfg = config_for(database_url)
    cfg = Config(database_url=database_url, database=cfg.database,
                 queue=QueueConfig(min_idle=0, max_idle_s=0.3))
    async with open_monitoring(cfg) as mon:
        assert await mon.db.fetchval("select 1") == 1
        with trio.fail_after(3.0):
            while await backends(database_url, cfg.database.application_name) > 0:
                await trio.sleep(0.1)
        assert await mon.db.fetchval("select 1") == 1


async def test_database_reference_service_start_up_leaves_one_pooled_connection(direct_database_url):
    """Schema and seed at start-up, then a few requests one after another: one connection, not
    a full pool (8 pooled + the monitor's of the spec's 10 read as 90 %: degraded)."""
    from examples.vet_tracker.harness import open_service

    cfg = config_for(direct_database_url)
    async with open_service(cfg) as svc:
        for _ in range(5):
            status, _ = await svc.send("GET", "/api/animals", None, {})
            assert status in (200, 401)
        assert await backends(direct_database_url, cfg.database.application_name) == 1


async def test_database_server_at_its_connection_limit_is_backpressure_not_a_breaker_failure(direct_database_url):
    """Another client takes every free connection of the server. The lazy pool holds one
    connection; callers that would need a new one are refused before any SQL was sent
    (`ConnectionLimitReached`: retriable, a `Refused`), the breaker stays CLOSED, and the
    connection the pool holds keeps serving."""
    from actors.faults import exhausted_connections
    from actors.pg.database import ConnectionLimitReached

    cfg = Config(database_url=direct_database_url, database=DatabaseConfig(application_name="triage-limit-test"))
    outcomes: list[str] = []

    async def call() -> None:
        try:
            await mon.db.fetchval("select pg_sleep(0.05)")
            outcomes.append("ok")
        except ConnectionLimitReached as exc:
            assert exc.retriable is True and exc.retry_after_s > 0
            outcomes.append("limited")

    with trio.fail_after(30):
        async with open_monitoring(cfg) as mon:
            assert await mon.db.fetchval("select 1") == 1   # the pool holds one connection
            async with exhausted_connections(direct_database_url):
                for _ in range(3):
                    async with trio.open_nursery() as nursery:
                        for _ in range(8):
                            nursery.start_soon(call)
                assert mon.breakers["database"].state == "closed"
                assert "limited" in outcomes and "ok" in outcomes
            assert await mon.db.fetchval("select 2") == 2
            assert mon.breakers["database"].state == "closed"


async def test_db_offered_call_that_loses_its_connection_is_the_breakers_failure_before_it_returns(database_url):
    """The usual call takes an offered slot and connection without a guard object: when its
    statement loses the connection, the outcome is unknown (not retriable), the breaker has
    applied the failure by the time the caller sees the error, the connection is discarded
    and the slot is free."""
    import msgspec

    cfg = config_for(database_url)
    tiers = dict(cfg.tiers, database=msgspec.structs.replace(cfg.tiers["database"], failure_threshold=1))
    cfg = msgspec.structs.replace(cfg, tiers=tiers)
    async with open_monitoring(cfg) as mon:
        assert await mon.db.fetchval("select 1") == 1  # its connection is on offer now
        assert len(mon.queue.offers.entries) >= 1
        discarded = (await mon.queue.snapshot()).pool.discarded
        with pytest.raises(ConnectionLost) as info:
            await mon.db.fetchval("select pg_terminate_backend(pg_backend_pid())")
        assert info.value.retriable is False and info.value.statement_sent is True
        assert mon.breakers["database"].state == "open"  # applied before the call returned
        with pytest.raises(CircuitOpen) as refused:
            await mon.db.fetchval("select 1")
        assert refused.value.retriable is True  # refused before anything was sent
        snap = await mon.queue.snapshot()
        assert snap.in_flight == 0 and snap.pool.discarded == discarded + 1


async def test_db_offered_call_with_a_caller_error_keeps_its_connection_and_closed_breaker(database_url):
    """A caller's bad query on the offered path: psycopg's class, no breaker failure, and the
    same pooled connection serves the next call (none discarded, none opened). The connection
    is compared, not the backend: behind PgBouncer each statement may get another server."""
    async with open_monitoring(config_for(database_url)) as mon:
        assert await mon.db.fetchval("select 1") == 1
        conn = mon.queue.offers.entries[-1][1].conn
        connects = (await mon.queue.snapshot()).pool.connects
        for _ in range(6):  # past the breaker's threshold of 5, were these failures
            with pytest.raises(psycopg.errors.UndefinedTable):
                await mon.db.fetchval("select * from no_such_table_here")
        assert mon.breakers["database"].state == "closed"
        assert mon.queue.offers.entries[-1][1].conn is conn
        assert await mon.db.fetchval("select 1") == 1
        snap = await mon.queue.snapshot()
        assert snap.in_flight == 0 and snap.pool.discarded == 0 and snap.pool.connects == connects


async def test_db_refuses_an_offered_call_once_the_scheduler_has_stopped(database_url):
    """The scheduler's actor gone (its inbox closed, as when it stops past its restart
    intensity) while the system has not yet stopped accepting: an offered call is refused with
    `ShuttingDown` as a guarded one is, and no call takes the offer off the list (nothing ran;
    the pool's close closes its connection)."""
    from messages.errors import ShuttingDown

    async with open_monitoring(config_for(database_url)) as mon:
        assert await mon.db.fetchval("select 1") == 1  # its connection is on offer
        offered = list(mon.queue.offers.entries)
        used = [g.conn.last_used_at for _, g in offered if g.conn is not None]
        assert used
        inbox = mon.queue.offers.inbox
        inbox.closed = True  # what `Mailbox.close` does first
        try:
            for call in (lambda: mon.db.fetchval("select 1"), lambda: mon.db.fetchval("select 1", timeout_s=1.0),
                         lambda: mon.run(trio.lowlevel.checkpoint)):
                with pytest.raises(ShuttingDown) as info:
                    await call()
                assert info.value.retriable is True
            assert list(mon.queue.offers.entries) == offered
            assert [g.conn.last_used_at for _, g in offered if g.conn is not None] == used
        finally:
            inbox.closed = False


async def test_db_refuses_every_call_with_shutting_down_from_the_moment_the_system_stops_accepting(database_url):
    """The system's shutdown begins with `mon.stop_accepting()`: from then on `mon.db` answers
    `ShuttingDown` (retriable: nothing was sent) on the offered path as on the guarded one,
    while its offered connection is still there, and sends nothing; and after
    `open_monitoring` has exited, the same."""
    from messages.errors import ShuttingDown

    async with open_monitoring(config_for(database_url)) as mon:
        assert await mon.db.fetchval("select 1") == 1  # its connection is on offer
        offered = list(mon.queue.offers.entries)
        used = [g.conn.last_used_at for _, g in offered if g.conn is not None]
        assert used
        pool = (await mon.queue.snapshot()).pool
        mon.stop_accepting()
        for call in (lambda: mon.db.fetchval("select 1"), lambda: mon.db.fetchval("select 1", timeout_s=1.0),
                     lambda: mon.db.execute("select 1", priority=Priority.CRITICAL),
                     lambda: mon.run(trio.lowlevel.checkpoint)):
            with pytest.raises(ShuttingDown) as info:
                await call()
            assert info.value.retriable is True
        assert list(mon.queue.offers.entries) == offered  # the offer untouched: nothing ran
        assert [g.conn.last_used_at for _, g in offered if g.conn is not None] == used  # none ran
        assert (await mon.queue.snapshot()).pool.connects == pool.connects
    with pytest.raises(ShuttingDown) as info:
        await mon.db.fetchval("select 1")
    assert info.value.retriable is True
