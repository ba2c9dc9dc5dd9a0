"""Each fault kind against a real PostgreSQL behind the proxy (real time, short timeouts)."""

from __future__ import annotations

import psycopg
import pytest
import trio

from actors.faults import (
    AnyFault,
    Bandwidth,
    BlackHole,
    Down,
    FaultProxy,
    Latency,
    LimitData,
    ResetPeer,
    SlowClose,
    exhausted_connections,
    proxied_dsn,
    terminate_backends,
)
from actors.pg.connection import ConnectionLost, PgConnection


@pytest.fixture
async def proxy(database_url):
    async with FaultProxy.for_dsn(database_url) as p:
        p.dsn = proxied_dsn(database_url, p)
        yield p


async def connect(proxy, timeout_s: float = 2.0) -> PgConnection:
    return await PgConnection.connect(proxy.dsn, connect_timeout_s=timeout_s)


async def test_faults_no_fault_passes_queries_and_counts_bytes(proxy):
    async with await connect(proxy) as conn:
        assert (await conn.execute("select 41 + 1")).rows == [(42,)]
    assert proxy.connections == 1 and proxy.bytes_up > 0 and proxy.bytes_down > 0


async def test_faults_down_refuses_new_and_cuts_existing(proxy):
    conn = await connect(proxy)
    proxy.add(Down())
    with pytest.raises(ConnectionLost):
        await conn.execute("select 1")
    with pytest.raises(psycopg.OperationalError):
        await connect(proxy)
    assert proxy.refused == 1
    proxy.remove("down")
    async with await connect(proxy) as again:
        assert (await again.execute("select 1")).rows == [(1,)]


async def test_faults_latency_delays_each_round_trip(proxy):
    async with await connect(proxy) as conn:
        proxy.add(Latency(latency_ms=150))
        t0 = trio.current_time()
        await conn.execute("select 1")
        assert trio.current_time() - t0 >= 0.3  # one chunk each way
        proxy.remove("latency")


async def test_faults_timeout_black_holes_until_client_gives_up(proxy):
    async with await connect(proxy) as conn:
        proxy.add(BlackHole())
        with trio.move_on_after(0.5) as scope:
            await conn.execute("select 1")
        assert scope.cancelled_caught
    proxy.clear()


async def test_faults_timeout_with_duration_closes_connection(proxy):
    conn = await connect(proxy)
    proxy.add(BlackHole(timeout_ms=200))
    with trio.fail_after(3), pytest.raises(ConnectionLost):
        await conn.execute("select 1")
    conn.close_now()


async def test_faults_reset_peer_cuts_connections(proxy):
    conn = await connect(proxy)
    proxy.add(ResetPeer())
    with pytest.raises(ConnectionLost):
        await conn.execute("select 1")
    proxy.remove("reset_peer")


async def test_faults_bandwidth_slows_large_results(proxy):
    async with await connect(proxy) as conn:
        proxy.add(Bandwidth(rate_kbps=200))
        t0 = trio.current_time()
        await conn.execute("select repeat('x', 100000)")
        assert trio.current_time() - t0 >= 0.4  # ~100 KB at 200 KB/s
        proxy.remove("bandwidth")


async def test_faults_limit_data_closes_after_byte_budget(proxy):
    conn = await connect(proxy)
    proxy.add(LimitData(bytes=proxy.bytes_up + proxy.bytes_down + 100))
    with pytest.raises(ConnectionLost):
        for _ in range(50):
            await conn.execute("select repeat('y', 50)")
    conn.close_now()


async def test_faults_slow_close_delays_teardown(proxy):
    proxy.add(SlowClose(delay_ms=100))
    async with await connect(proxy) as conn:
        assert (await conn.execute("select 1")).rows == [(1,)]


async def test_faults_decode_from_toml_like_data():
    import msgspec

    fault = msgspec.convert({"kind": "latency", "latency_ms": 250, "jitter_ms": 10}, AnyFault)
    assert fault == Latency(latency_ms=250, jitter_ms=10)


async def test_faults_terminate_backends_kills_only_that_application(direct_database_url):
    victim = await PgConnection.connect(direct_database_url, application_name="triage-victim")
    bystander = await PgConnection.connect(direct_database_url, application_name="triage-bystander")
    assert await terminate_backends(direct_database_url, "triage-victim") == 1
    with pytest.raises(ConnectionLost):
        await victim.execute("select 1")
    assert (await bystander.execute("select 1")).rows == [(1,)]
    victim.close_now()
    await bystander.close()


async def test_faults_exhausted_connections_refuses_new_clients(direct_database_url):
    async with exhausted_connections(direct_database_url) as held:
        assert held > 0
        with pytest.raises(psycopg.OperationalError) as info:
            await PgConnection.connect(direct_database_url, connect_timeout_s=2)
        assert "too many" in str(info.value).lower() or info.value.sqlstate == "53300"
    async with await PgConnection.connect(direct_database_url) as conn:
        assert (await conn.execute("select 1")).rows == [(1,)]


async def test_faults_inject_through_monitoring_handle(direct_database_url):
    from actors import open_monitoring
    from actors.faults import TerminateBackends
    from messages.config import Config, DatabaseConfig, FaultsConfig

    cfg = Config(database_url=direct_database_url, faults=FaultsConfig(enabled=True),
                 database=DatabaseConfig(application_name="triage-inject-test"))
    async with open_monitoring(cfg) as mon:
        assert await mon.db.fetchval("select 1") == 1
        assert mon.injector.proxy.connections >= 1  # the pool goes through the proxy
        await mon.inject(Down())
        with pytest.raises(psycopg.OperationalError):
            await mon.db.fetchval("select 1")
        await mon.clear_faults()
        assert await mon.db.fetchval("select 2") == 2
        await mon.inject(TerminateBackends())
        # pg_terminate_backend returns before the backend is gone: wait until it is, so the
        # pooled connection has died *idle* (its goodbye is in the socket before the next query)
        async with await PgConnection.connect(direct_database_url) as admin:
            with trio.fail_after(2.0):
                while (await admin.execute("select count(*) from pg_stat_activity where "
                                           "application_name = 'triage-inject-test'")).rows[0][0]:
                    await trio.sleep(0.01)
        assert await mon.db.fetchval("select 3") == 3  # died while idle: retried on a fresh one


async def test_faults_disabled_inject_is_a_clear_error():
    from actors import open_monitoring
    from actors.guard import FaultsDisabled
    from messages.config import Config

    async with open_monitoring(Config()) as mon:
        with pytest.raises(FaultsDisabled, match="TRIAGE_FAULTS"):
            await mon.inject(Down())


async def test_faults_lock_table_makes_queries_wait_until_removed(database_url):
    from actors import open_monitoring
    from actors.faults import LockTable
    from actors.pg.database import QueryTimeout
    from messages.config import Config, FaultsConfig

    async with await PgConnection.connect(database_url) as admin:
        await admin.execute("create table if not exists triage_lock_probe (id int)")
    async with open_monitoring(Config(database_url=database_url, faults=FaultsConfig(enabled=True))) as mon:
        await mon.inject(LockTable(table="public.triage_lock_probe"))
        assert mon.injector.active == ["lock_table"]
        with pytest.raises(QueryTimeout):
            await mon.db.fetchval("select count(*) from triage_lock_probe", timeout_s=0.3)
        await mon.remove_fault("lock_table")
        with trio.fail_after(5):
            assert await mon.db.fetchval("select count(*) from triage_lock_probe") == 0


# --- TerminateBackends touches only this instance ------------------------------------------------

BACKENDS_SQL = "select pid from pg_stat_activity where application_name = %s order by pid"


async def backends_of(admin: PgConnection, app: str) -> list[int]:
    return [r[0] for r in (await admin.execute(BACKENDS_SQL, [app])).rows]


async def warm_pool(mon, n: int = 3) -> None:
    """Hold `n` pool connections at once so the pool has several backends."""
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(mon.db.fetchval, "select pg_sleep(0.05)")


async def test_faults_terminate_backends_kills_only_this_instances_pool(direct_database_url):
    import os
    import socket

    from actors import open_monitoring
    from actors.faults import TerminateBackends
    from messages.config import Config, FaultsConfig

    cfg = Config(database_url=direct_database_url, faults=FaultsConfig(enabled=True))
    admin = await PgConnection.connect(direct_database_url, application_name="triage-test-admin")
    with trio.fail_after(20):
        async with open_monitoring(cfg) as a, open_monitoring(cfg) as b:
            app_a, app_b = a.config.database.application_name, b.config.database.application_name
            assert app_a != app_b
            assert app_a.startswith(f"triage/{socket.gethostname()[:20]}") and f"/{os.getpid()}" in app_a
            await warm_pool(a)
            await warm_pool(b)
            before_b = await backends_of(admin, app_b)
            assert len(await backends_of(admin, app_a)) >= 2 and len(before_b) >= 2
            await a.inject(TerminateBackends())
            with trio.fail_after(5):
                while await backends_of(admin, app_a):
                    await trio.sleep(0.02)
            assert await backends_of(admin, app_b) == before_b   # the other instance untouched
            assert await b.db.fetchval("select 7") == 7
            assert await a.db.fetchval("select 8") == 8          # a recovers on fresh backends
    await admin.close()


async def test_faults_terminate_backends_refused_behind_a_pooler(database_url):
    """A plain TCP relay between Triage and the server stands in for PgBouncer: the server sees
    the relay's socket, not ours, so backends may be shared — refused, saying why."""
    from actors import open_monitoring
    from actors.faults import FaultRefused, TerminateBackends
    from messages.config import Config, DatabaseConfig, FaultsConfig

    bystander = await PgConnection.connect(database_url)
    async with FaultProxy.for_dsn(database_url) as relay:
        pooled = proxied_dsn(database_url, relay)
        cfg = Config(database_url=pooled, faults=FaultsConfig(enabled=True))
        with trio.fail_after(20):
            async with open_monitoring(cfg) as mon:
                assert await mon.db.fetchval("select 1") == 1
                with pytest.raises(FaultRefused, match="pooler") as info:
                    await mon.inject(TerminateBackends())
                assert "shared" in str(info.value)
                assert await mon.db.fetchval("select 2") == 2  # nothing was terminated
            declared = Config(database_url=database_url, faults=FaultsConfig(enabled=True),
                              database=DatabaseConfig(behind_pooler=True))
            async with open_monitoring(declared) as mon:
                with pytest.raises(FaultRefused, match="behind_pooler"):
                    await mon.inject(TerminateBackends())
    assert (await bystander.execute("select 1")).rows == [(1,)]
    await bystander.close()


async def test_faults_pooler_detection_tcp_unix_and_relay(direct_database_url):
    from actors.faults import through_pooler
    from actors.pg.embedded import open_embedded

    with trio.fail_after(60):
        assert not await through_pooler(direct_database_url)
        async with open_embedded() as db:  # a Unix socket: the postmaster accepted, then forked
            assert not await through_pooler(db.dsn)
        async with FaultProxy.for_dsn(direct_database_url) as relay:
            assert await through_pooler(proxied_dsn(direct_database_url, relay))


@pytest.fixture
def pgbouncer(direct_database_url):
    """A real PgBouncer (transaction pooling) in front of the test database; its URL."""
    from actors.tools.pgbouncer import binary, running_pgbouncer

    if binary() is None:
        pytest.skip("PgBouncer is not installed (apt-get install pgbouncer)")
    with running_pgbouncer(direct_database_url) as bouncer:
        yield bouncer.url


async def test_faults_terminate_backends_refused_behind_real_pgbouncer(pgbouncer):
    from actors import open_monitoring
    from actors.faults import FaultRefused, TerminateBackends, through_pooler
    from messages.config import Config, FaultsConfig

    with trio.fail_after(20):
        assert await through_pooler(pgbouncer)
        cfg = Config(database_url=pgbouncer, faults=FaultsConfig(enabled=True))
        async with open_monitoring(cfg) as mon:
            assert await mon.db.fetchval("select 1") == 1
            with pytest.raises(FaultRefused, match="pooler"):
                await mon.inject(TerminateBackends())
            assert await mon.db.fetchval("select 2") == 2
async def test_faults_down_then_up_breaker_stays_closed_under_concurrent_load(database_url):
    """Issue #10 item 5: after the outage, the first trial closes the breaker and it stays closed:
    guarded queries from 8 concurrent callers must not fail after the close."""
    from actors import open_monitoring
    from messages.config import BreakerConfig, Config, FaultsConfig

    cfg = Config(database_url=database_url, faults=FaultsConfig(enabled=True),
                 tiers={**Config().tiers, "database": BreakerConfig(recovery_timeout_s=0.3)})
    async with open_monitoring(cfg) as mon:
        breaker = mon.breakers["database"]
        failures_after_close: list[str] = []
        closed_again = trio.Event()

        async def caller() -> None:
            while True:
                try:
                    await mon.db.fetchval("select pg_sleep(0.005)")
                except psycopg.OperationalError as exc:
                    if closed_again.is_set():
                        failures_after_close.append(f"{type(exc).__name__}: {exc}")
                except Exception:
                    await trio.sleep(0.01)  # CircuitOpen while the breaker is not closed
                await trio.sleep(0)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for _ in range(8):
                    nursery.start_soon(caller)
                await trio.sleep(0.2)
                await mon.inject(Down())
                await breaker.wait_state("open")
                await trio.sleep(1.0)  # failed trials: the pool's connect back-off grows
                await mon.clear_faults()
                await breaker.wait_state("closed")
                closed_again.set()
                await trio.sleep(1.0)
                state = breaker.state
                nursery.cancel_scope.cancel()
        assert failures_after_close == []
        assert state == "closed"
