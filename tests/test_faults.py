"""Each fault kind against a real PostgreSQL behind the proxy (real time, short timeouts)."""

from __future__ import annotations

import psycopg
import pytest
import trio

from actors.faults import (
    AnyFault,
    Bandwidth,
    Down,
    FaultProxy,
    Latency,
    LimitData,
    ResetPeer,
    SlowClose,
    Timeout,
    exhausted_connections,
    proxied_dsn,
    terminate_backends,
)
from actors.pgconn import ConnectionLost, PgConnection


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
        proxy.add(Timeout())
        with trio.move_on_after(0.5) as scope:
            await conn.execute("select 1")
        assert scope.cancelled_caught
    proxy.clear()


async def test_faults_timeout_with_duration_closes_connection(proxy):
    conn = await connect(proxy)
    proxy.add(Timeout(timeout_ms=200))
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


async def test_faults_terminate_backends_kills_only_that_application(database_url):
    victim = await PgConnection.connect(database_url, application_name="triage-victim")
    bystander = await PgConnection.connect(database_url, application_name="triage-bystander")
    assert await terminate_backends(database_url, "triage-victim") == 1
    with pytest.raises(ConnectionLost):
        await victim.execute("select 1")
    assert (await bystander.execute("select 1")).rows == [(1,)]
    victim.close_now()
    await bystander.close()


async def test_faults_exhausted_connections_refuses_new_clients(database_url):
    async with exhausted_connections(database_url) as held:
        assert held > 0
        with pytest.raises(psycopg.OperationalError) as info:
            await PgConnection.connect(database_url, connect_timeout_s=2)
        assert "too many" in str(info.value).lower() or info.value.sqlstate == "53300"
    async with await PgConnection.connect(database_url) as conn:
        assert (await conn.execute("select 1")).rows == [(1,)]


async def test_faults_inject_through_monitoring_handle(database_url):
    from actors import open_monitoring
    from actors.faults import TerminateBackends
    from messages.config import Config, DatabaseConfig, FaultsConfig

    cfg = Config(database_url=database_url, faults=FaultsConfig(enabled=True),
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
        async with await PgConnection.connect(database_url) as admin:
            with trio.fail_after(2.0):
                while (await admin.execute("select count(*) from pg_stat_activity where "
                                           "application_name = 'triage-inject-test'")).rows[0][0]:
                    await trio.sleep(0.01)
        assert await mon.db.fetchval("select 3") == 3  # died while idle: retried on a fresh one


async def test_faults_disabled_inject_is_a_clear_error():
    from actors import open_monitoring
    from actors.handles import FaultsDisabled
    from messages.config import Config

    async with open_monitoring(Config()) as mon:
        with pytest.raises(FaultsDisabled, match="TRIAGE_FAULTS"):
            await mon.inject(Down())


async def test_faults_lock_table_makes_queries_wait_until_removed(database_url):
    from actors import open_monitoring
    from actors.database import QueryTimeout
    from actors.faults import LockTable
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
