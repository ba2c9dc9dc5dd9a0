"""Triage behind a real PgBouncer in transaction mode (Debian's /usr/sbin/pgbouncer, started per
test on a loopback port in front of the test database; `.ci/run` installs it).

No session state leaks into PgBouncer's shared server connections; its refusals and the
server's connection limit are backpressure; and a fleet of instances shares a connection budget
(`max_db_connections`) with urgent work on its own pool user (`priority_dsn`).
"""

from __future__ import annotations

import contextlib
import statistics
import uuid
from functools import partial

import psycopg
import pytest
import trio

from actors import ConnectionLimitReached, open_monitoring
from actors.pg.connection import PgConnection
from actors.pg.database import QueryTimeout
from actors.tools.pgbouncer import binary, running_pgbouncer
from messages.config import Config, DatabaseConfig, Priority, QueueConfig


def bouncer_for(direct_database_url: str, **settings):
    if binary() is None:
        pytest.skip("PgBouncer is not installed (apt-get install pgbouncer)")
    return running_pgbouncer(direct_database_url, **settings)


def config_for(url: str, **db) -> Config:
    app = db.pop("application_name", f"triage-pgb-{uuid.uuid4().hex[:8]}")
    queue = db.pop("queue", QueueConfig())
    return Config(database_url=url, queue=queue, database=DatabaseConfig(application_name=app, **db))


async def test_pgbouncer_statement_timeout_stays_with_its_caller_not_the_shared_server_connection(direct_database_url):
    """Two instances with different statement timeouts share PgBouncer's one server connection
    (pool_size = 1). Each keeps its own bound: the 0.3 s one is cut off, the 5 s one is not, and
    the server connection carries no setting of either afterwards."""
    with bouncer_for(direct_database_url, pool_size=1) as bouncer:
        with trio.fail_after(30):
            async with open_monitoring(config_for(bouncer.url, statement_timeout_s=5.0)) as patient, \
                    open_monitoring(config_for(bouncer.url, statement_timeout_s=0.3)) as hasty:
                assert await patient.db.fetchval("select 1") == 1
                assert await hasty.db.fetchval("select 1") == 1   # connected after: its SET came last
                assert await patient.db.fetchval("select 1 from pg_sleep(0.8)") == 1
                t0 = trio.current_time()
                with pytest.raises(QueryTimeout):
                    await hasty.db.fetchval("select pg_sleep(5)")
                assert trio.current_time() - t0 < 2.0
                assert await hasty.db.fetchval("select 2") == 2   # its pool recovers
                assert hasty.breakers["database"].state == "closed"
            async with await PgConnection.connect(bouncer.url) as conn:
                assert (await conn.execute("show statement_timeout")).rows == [("0",)]


async def test_pgbouncer_no_more_connections_allowed_is_backpressure_not_a_breaker_failure(direct_database_url):
    """PgBouncer at `max_client_conn` refuses new clients ("no more connections allowed"): callers
    that needed a new connection get `ConnectionLimitReached` (retriable, a 503 at the edge), the
    breaker stays CLOSED, and the connections the pool holds keep serving."""
    outcomes: list[str] = []

    async def call(mon) -> None:
        try:
            await mon.db.fetchval("select pg_sleep(0.05)")
            outcomes.append("ok")
        except ConnectionLimitReached as exc:
            assert exc.retriable is True and exc.retry_after_s > 0
            outcomes.append("limited")

    with bouncer_for(direct_database_url, max_client_conn=3) as bouncer:
        with trio.fail_after(30):
            async with open_monitoring(config_for(bouncer.url)) as mon:  # monitor + 1 pooled: 2 of 3
                assert await mon.db.fetchval("select 1") == 1
                for _ in range(3):
                    async with trio.open_nursery() as nursery:
                        for _ in range(8):
                            nursery.start_soon(call, mon)
                assert "limited" in outcomes and "ok" in outcomes
                assert set(outcomes) == {"limited", "ok"}
                assert mon.breakers["database"].state == "closed"
                assert await mon.db.fetchval("select 2") == 2


async def test_pgbouncer_passes_on_the_servers_53300_as_backpressure(direct_database_url):
    """PostgreSQL refuses PgBouncer's server connection with 53300 (here: the pool user's
    CONNECTION LIMIT is 0, "too many connections for role"); a fresh PgBouncer pool passes the
    refusal on at login. `ConnectionLimitReached` (retriable), the breaker stays CLOSED, and
    once PostgreSQL accepts connections again calls succeed."""
    role = "triage_pgb_full"
    async with await PgConnection.connect(direct_database_url) as admin:
        if not (await admin.execute("select 1 from pg_roles where rolname = %s", [role])).rows:
            with contextlib.suppress(psycopg.errors.DuplicateObject):
                await admin.execute(f"create role {role} login")
        await admin.execute(f"alter role {role} connection limit 0")
        try:
            with bouncer_for(direct_database_url, users={role: 0},
                             extra="server_login_retry = 1\n") as bouncer:
                with trio.fail_after(40):
                    async with open_monitoring(config_for(bouncer.url_for(role))) as mon:
                        for _ in range(3):
                            with pytest.raises(ConnectionLimitReached) as info:
                                await mon.db.fetchval("select 1")
                            assert info.value.retriable is True
                        assert mon.breakers["database"].state == "closed"
                        await admin.execute(f"alter role {role} connection limit -1")
                        while True:  # PgBouncer retries its server login every server_login_retry
                            try:
                                assert await mon.db.fetchval("select 1") == 1
                                break
                            except ConnectionLimitReached:
                                await trio.sleep(0.2)
                        assert mon.breakers["database"].state == "closed"
        finally:
            await admin.execute(f"alter role {role} connection limit -1")


async def test_pgbouncer_query_wait_timeout_is_backpressure(direct_database_url):
    """Every server connection of PgBouncer's pool is busy (pool_size = 1, held by an open
    transaction): a statement waits in PgBouncer until `query_wait_timeout`, which then drops
    the client — the statement never reached the server. `ConnectionLimitReached`, retriable,
    not a breaker failure; the pool recovers once the transaction ends."""
    with bouncer_for(direct_database_url, pool_size=1, extra="query_wait_timeout = 1\n") as bouncer:
        with trio.fail_after(40):
            async with open_monitoring(config_for(bouncer.url)) as mon:
                assert await mon.db.fetchval("select 1") == 1
                async with mon.db.transaction() as tx:            # holds the one server connection
                    await tx.execute("select 1")
                    for _ in range(2):
                        with pytest.raises(ConnectionLimitReached) as info:
                            await mon.db.fetchval("select 2", priority=Priority.HIGH)
                        assert info.value.retriable is True
                    assert mon.breakers["database"].state == "closed"
                assert await mon.db.fetchval("select 3") == 3
                assert mon.breakers["database"].state == "closed"


ROLES = {"triage_pgb_urgent": 3, "triage_pgb_batch": 7}   # PgBouncer [users]: max_user_connections
BUDGET = 10                                               # max_db_connections: the database's budget


@pytest.fixture
async def pool_roles(direct_database_url):
    async with await PgConnection.connect(direct_database_url) as conn:
        for role in ROLES:
            exists = (await conn.execute("select 1 from pg_roles where rolname = %s", [role])).rows
            if not exists:
                try:
                    await conn.execute(f"create role {role} login")
                except psycopg.errors.DuplicateObject:
                    pass  # created meanwhile by a parallel run
    yield list(ROLES)


async def test_pgbouncer_fleet_of_four_shares_a_budget_of_ten_and_critical_waits_less(direct_database_url, pool_roles):
    """Four instances × 8 slots (in-process `open_monitoring` instances) behind PgBouncer with
    `max_db_connections = 10`: BATCH work through a pool user capped at 7, CRITICAL through
    another (`priority_dsn`). Under load PostgreSQL never sees more than 10 backends of the two
    users (the monitors' included: they go through PgBouncer too), no request fails, and
    CRITICAL requests wait less than BATCH ones."""
    urgent, batch = pool_roles
    latencies: dict[str, list[float]] = {"CRITICAL": [], "BATCH": []}
    failures: list[str] = []
    peak = 0

    with bouncer_for(direct_database_url, max_db_connections=BUDGET, users=ROLES, max_client_conn=500) as bouncer:
        def cfg(i: int) -> Config:
            return config_for(bouncer.url_for(batch), application_name=f"triage-fleet-{i}",
                              priority_dsn={"CRITICAL": bouncer.url_for(urgent)},
                              queue=QueueConfig(max_concurrent=8, max_queue_size=1000))

        async def sample(stop: trio.Event) -> None:
            nonlocal peak
            async with await PgConnection.connect(direct_database_url) as admin:
                while not stop.is_set():
                    rows = (await admin.execute("select count(*) from pg_stat_activity where usename = any(%s)",
                                                [list(ROLES)])).rows
                    peak = max(peak, rows[0][0])
                    await trio.sleep(0.01)

        async def worker(mon, priority: Priority, until: float, pause_s: float) -> None:
            while trio.current_time() < until:
                t0 = trio.current_time()
                try:
                    await mon.db.fetchval("select pg_sleep(0.02)", priority=priority, timeout_s=20)
                except Exception as exc:
                    failures.append(f"{priority.name}: {type(exc).__name__}: {exc}")
                    return
                latencies[priority.name].append(trio.current_time() - t0)
                await trio.sleep(pause_s)

        with trio.fail_after(90):
            async with open_monitoring(cfg(0)) as m0, open_monitoring(cfg(1)) as m1, \
                    open_monitoring(cfg(2)) as m2, open_monitoring(cfg(3)) as m3:
                stop = trio.Event()
                async with trio.open_nursery() as sampling:
                    sampling.start_soon(sample, stop)
                    until = trio.current_time() + 4.0
                    async with trio.open_nursery() as load:
                        for mon in (m0, m1, m2, m3):
                            for _ in range(16):
                                load.start_soon(worker, mon, Priority.BATCH, until, 0.0)
                            for _ in range(2):
                                load.start_soon(worker, mon, Priority.CRITICAL, until, 0.05)
                    stop.set()
                states = {m.breakers["database"].state for m in (m0, m1, m2, m3)}

    crit, bat = statistics.median(latencies["CRITICAL"]), statistics.median(latencies["BATCH"])
    print(f"\nfleet of 4 × 8 slots behind PgBouncer (max_db_connections = {BUDGET}): peak backends "
          f"{peak}; median latency CRITICAL {crit * 1000:.1f} ms ({len(latencies['CRITICAL'])} calls), "
          f"BATCH {bat * 1000:.1f} ms ({len(latencies['BATCH'])} calls)")
    assert failures == [], sorted(set(failures))[:5]
    assert 0 < peak <= BUDGET
    assert len(latencies["CRITICAL"]) >= 20 and len(latencies["BATCH"]) >= 20
    assert crit < bat
    assert states == {"closed"}


async def test_priority_dsn_picks_the_connection_by_the_calls_priority(direct_database_url, pool_roles):
    """`priority_dsn = { CRITICAL = <another user> }`: CRITICAL calls run as that user, every
    other priority on DATABASE_URL's; mixed calls in a row reuse the pool's connections."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    urgent, _ = pool_roles
    other = make_conninfo("", **{**conninfo_to_dict(direct_database_url), "user": urgent})
    default_user = conninfo_to_dict(direct_database_url).get("user") or "postgres"
    cfg = config_for(direct_database_url, priority_dsn={"CRITICAL": other})
    with trio.fail_after(20):
        async with open_monitoring(cfg) as mon:
            for _ in range(3):
                assert await mon.db.fetchval("select current_user", priority=Priority.CRITICAL) == urgent
                assert await mon.db.fetchval("select current_user", priority=Priority.BATCH) == default_user
                assert await mon.db.fetchval("select current_user") == default_user
            async with mon.db.transaction(priority=Priority.CRITICAL) as tx:
                assert await tx.fetchval("select current_user") == urgent
            async with trio.open_nursery() as nursery:   # concurrent, mixed
                for p in (Priority.CRITICAL, Priority.BATCH) * 4:
                    nursery.start_soon(partial(mon.db.fetchval, "select pg_sleep(0.05)", priority=p))
            assert await mon.db.fetchval("select current_user", priority=Priority.CRITICAL) == urgent
            assert mon.queue.statistics().pool.opened <= 8


async def test_priority_dsn_password_never_emitted(direct_database_url):
    import io

    from loguru import logger

    canary = "CANARY-prio-91b2"
    sink = io.StringIO()
    handler = logger.add(sink, level="DEBUG", serialize=True, diagnose=False)
    logger.enable("actors")
    emitted: list[str] = []
    try:
        cfg = config_for(direct_database_url, connect_timeout_s=1.0,
                         priority_dsn={"CRITICAL": f"postgresql://postgres:{canary}@127.0.0.1:1/test"})
        async with open_monitoring(cfg) as mon:
            assert await mon.db.fetchval("select 1") == 1
            for _ in range(3):
                try:
                    await mon.db.fetchval("select 1", priority=Priority.CRITICAL)
                except Exception as exc:
                    emitted += [str(exc), repr(exc), str(exc.__cause__), str(exc.__context__)]
            emitted += [repr(mon.config), repr(mon.config.database), str(await mon.snapshot())]
    finally:
        logger.remove(handler)
        logger.disable("actors")
    emitted.append(sink.getvalue())
    assert len([e for e in emitted if "connect" in e.lower()]) >= 1
    assert not [e for e in emitted if canary in e]
