"""Database monitor: the pure core step by step, then the whole monitor against a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial

import psycopg
import pytest
import trio
from loguru import logger
from psycopg.conninfo import make_conninfo

from actors.monitor import (
    RECONNECT_BACKOFF_S,
    WATCHDOG_GRACE_S,
    DatabaseMonitor,
    MonitorCore,
    MonitorSettings,
    MonitorState,
    Secret,
    connection_limit,
    describe,
    step,
)
from actors.pg.connection import PgConnection
from actors.runtime.actor import Emit, Send
from messages.commands import GetSnapshot, Tick
from messages.config import Config, Thresholds
from messages.database import (
    CheckNow,
    DatabaseDown,
    DatabaseMetrics,
    DatabaseUp,
    ProbeRequested,
    ProbeResult,
    ThresholdCleared,
    ThresholdViolated,
    ViolationsObserved,
)
from messages.errors import ConfigError, ShuttingDown

WALL = "2025-01-01T00:00:00.000Z"
CANARY = "CANARY-s3cret"


class Token:
    """Stands in for a parked caller's Reply in pure-core tests."""

    def __repr__(self) -> str:
        return "Token"


def new(now: float = 0.0, interval: float = 30.0, timeout: float = 5.0, **th) -> MonitorState:
    settings = MonitorSettings(interval_s=interval, probe_timeout_s=timeout, thresholds=Thresholds(**th))
    return MonitorState.initial(settings, now=now)


def ok(seq: int, at: float, *, rt: float = 10.0, count: int = 3, max_connections: int | None = 100,
       reserved: int | None = 3) -> ProbeResult:
    return ProbeResult(seq=seq, ok=True, at=at, wall=WALL, connected=True, response_time_ms=rt,
                       connection_count=count, max_connections=max_connections,
                       reserved_connections=reserved)


def bad(seq: int, at: float, error: str = "OperationalError: connection refused") -> ProbeResult:
    return ProbeResult(seq=seq, ok=False, at=at, wall=WALL, connected=False, error=error)


def emitted(effects: list) -> list:
    return [e.event for e in effects if isinstance(e, Emit)]


def events(effects: list) -> list:
    """The events that leave the monitor (not its own traffic)."""
    return [e for e in emitted(effects) if not isinstance(e, ProbeRequested | ViolationsObserved)]


def probe(s: MonitorState, result, now: float) -> tuple[MonitorState, list]:
    """Tick at `now` (a probe must be due), then feed `result(seq)` at the same instant."""
    s, effects = step(s, Tick(), now)
    assert emitted(effects) == [ProbeRequested(seq=s.seq)]
    return step(s, result(s.seq), now)


# --- pure core ------------------------------------------------------------------------------


def test_monitor_initial_metrics_say_not_checked_yet():
    m = new().metrics
    assert m == DatabaseMetrics(
        is_healthy=False, response_time_ms=None, connection_count=None, usage_percentage=None,
        last_checked=None, checked_at=None, error="not checked yet", max_connections=None,
        connection_limit=10, probes=0, failures=0, consecutive_failures=0, violations=())


def test_monitor_schedule_probes_every_interval_start_to_start():
    s = new(now=100.0)
    assert MonitorCore.wakeup(s) == 100.0
    s, effects = step(s, Tick(), 100.0)
    assert emitted(effects) == [ProbeRequested(seq=1)]
    assert MonitorCore.wakeup(s) == 100.0 + 5.0 + WATCHDOG_GRACE_S
    s, effects = step(s, ok(1, 100.2), 100.2)
    assert MonitorCore.wakeup(s) == 130.0
    assert step(s, Tick(), 129.9) == (s, [])
    s, effects = step(s, Tick(), 130.0)
    assert emitted(effects) == [ProbeRequested(seq=2)]


def test_monitor_healthy_probe_builds_whole_metrics():
    s, effects = probe(new(), lambda seq: ok(seq, 0.5, rt=12.5, count=4), 0.5)
    assert events(effects) == []
    assert s.metrics == DatabaseMetrics(
        is_healthy=True, response_time_ms=12.5, connection_count=4, usage_percentage=40.0,
        last_checked=WALL, checked_at=0.5, error=None, max_connections=100, connection_limit=10,
        probes=1, failures=0, consecutive_failures=0, violations=(), monitor_connections=1)


@pytest.mark.parametrize(("count", "max_connections", "reserved", "limit", "usage"), [
    (3, 100, 3, 10, 30.0),       # the configured cap is lower than the server's
    (3, 7, 3, 4, 75.0),          # the server's usable slots are lower
    (1, 3, 3, 1, 100.0),         # never divide by zero
    (5, None, None, 10, 50.0),   # server limits unknown: the configured cap
])
def test_monitor_usage_percentage_against_lower_limit(count, max_connections, reserved, limit, usage):
    assert connection_limit(10, max_connections, reserved) == limit
    s, _ = probe(new(), lambda seq: ok(seq, 0.0, count=count, max_connections=max_connections,
                                       reserved=reserved), 0.0)
    assert (s.metrics.connection_limit, s.metrics.usage_percentage) == (limit, usage)


def test_monitor_threshold_violated_once_and_cleared_once():
    s = new()
    s, effects = probe(s, lambda seq: ok(seq, 0.0, count=12), 0.0)
    assert events(effects) == [
        ThresholdViolated(name="maxUsagePercentage", value=120.0, threshold=80.0, at=0.0),
        ThresholdViolated(name="maxConnectionCount", value=12.0, threshold=10.0, at=0.0)]
    assert s.metrics.violations == ("maxUsagePercentage", "maxConnectionCount")
    s, effects = probe(s, lambda seq: ok(seq, 30.0, count=11), 30.0)
    assert events(effects) == []
    s, effects = probe(s, lambda seq: ok(seq, 60.0, count=9), 60.0)
    assert events(effects) == [
        ThresholdCleared(name="maxConnectionCount", value=9.0, threshold=10.0, at=60.0)]
    assert s.metrics.violations == ("maxUsagePercentage",)
    s, effects = probe(s, lambda seq: ok(seq, 90.0, count=2), 90.0)
    assert events(effects) == [
        ThresholdCleared(name="maxUsagePercentage", value=20.0, threshold=80.0, at=90.0)]
    assert s.metrics.violations == ()


def test_monitor_response_time_threshold_is_strictly_greater():
    s, effects = probe(new(), lambda seq: ok(seq, 0.0, rt=5000.0), 0.0)
    assert events(effects) == []
    s, effects = probe(s, lambda seq: ok(seq, 30.0, rt=5000.5), 30.0)
    assert events(effects) == [
        ThresholdViolated(name="maxResponseTime", value=5000.5, threshold=5000.0, at=30.0)]


def test_monitor_violations_observed_after_every_violating_probe():
    s = new(max_response_time_ms=1.0)
    for i in range(3):
        s, effects = probe(s, lambda seq, i=i: ok(seq, 30.0 * i, rt=2.0), 30.0 * i)
        assert [e for e in emitted(effects) if isinstance(e, ViolationsObserved)] == [
            ViolationsObserved(names=("maxResponseTime",), metrics=s.metrics)]


def test_monitor_failures_emit_down_once_then_up_on_recovery():
    s = new()
    s, effects = probe(s, lambda seq: ok(seq, 0.0, count=12), 0.0)
    s, effects = probe(s, lambda seq: bad(seq, 30.0), 30.0)
    assert events(effects) == [DatabaseDown(error="OperationalError: connection refused", at=30.0)]
    m = s.metrics
    assert (m.is_healthy, m.response_time_ms, m.connection_count, m.usage_percentage) == (False, None, None, None)
    assert (m.error, m.failures, m.consecutive_failures, m.probes) == (
        "OperationalError: connection refused", 1, 1, 2)
    assert m.violations == ("maxUsagePercentage", "maxConnectionCount")  # unknown is not cleared
    assert not any(isinstance(e, ViolationsObserved) for e in emitted(effects))
    s, effects = probe(s, lambda seq: bad(seq, 60.0), 60.0)
    assert events(effects) == []
    assert (s.metrics.failures, s.metrics.consecutive_failures) == (2, 2)
    s, effects = probe(s, lambda seq: ok(seq, 90.0, count=2), 90.0)
    assert events(effects) == [
        ThresholdCleared(name="maxUsagePercentage", value=20.0, threshold=80.0, at=90.0),
        ThresholdCleared(name="maxConnectionCount", value=2.0, threshold=10.0, at=90.0),
        DatabaseUp(at=90.0)]
    assert (s.metrics.is_healthy, s.metrics.error, s.metrics.consecutive_failures) == (True, None, 0)
    assert s.metrics.failures == 2


def test_monitor_first_probe_success_is_not_a_recovery():
    _, effects = probe(new(), lambda seq: ok(seq, 0.0), 0.0)
    assert events(effects) == []


def test_monitor_check_now_while_idle_probes_and_shifts_schedule():
    s, _ = probe(new(), lambda seq: ok(seq, 0.0), 0.0)
    t = Token()
    s, effects = step(s, CheckNow(reply=t), 10.0)
    assert emitted(effects) == [ProbeRequested(seq=2)]
    s, effects = step(s, ok(2, 10.1), 10.1)
    assert [(e.to, e.value) for e in effects if isinstance(e, Send)] == [(t, s.metrics)]
    assert s.metrics.probes == 2 and MonitorCore.wakeup(s) == 40.0


def test_monitor_check_now_joins_probe_in_flight():
    s, _ = step(new(), Tick(), 0.0)
    t1, t2 = Token(), Token()
    s, e1 = step(s, CheckNow(reply=t1), 0.1)
    s, e2 = step(s, CheckNow(reply=t2), 0.2)
    assert e1 == e2 == [] and MonitorCore.parked(s) == (t1, t2)
    s, effects = step(s, ok(1, 0.3), 0.3)
    assert [e.to for e in effects if isinstance(e, Send)] == [t1, t2]
    assert MonitorCore.parked(s) == ()


def test_monitor_check_now_within_reconnect_backoff_answers_current_metrics():
    s, _ = probe(new(interval=2.0), lambda seq: bad(seq, 0.0), 0.0)
    t = Token()
    s2, effects = step(s, CheckNow(reply=t), RECONNECT_BACKOFF_S - 0.01)
    assert s2 is s and [(e.to, e.value) for e in effects] == [(t, s.metrics)]
    s, effects = step(s, CheckNow(reply=t), RECONNECT_BACKOFF_S)
    assert emitted(effects) == [ProbeRequested(seq=2)]
    s, _ = step(s, bad(2, 1.0), 1.0)
    assert s.reconnect_at == 1.0 + 2 * RECONNECT_BACKOFF_S
    s, _ = step(s, CheckNow(reply=t), 2.0)
    s, _ = step(s, bad(3, 2.0), 2.0)
    assert s.reconnect_at == 2.0 + 2.0  # capped at the interval


def test_monitor_watchdog_writes_off_lost_probe_and_ignores_late_result():
    s, _ = step(new(), Tick(), 0.0)
    t = Token()
    s, _ = step(s, CheckNow(reply=t), 1.0)
    deadline = 5.0 + WATCHDOG_GRACE_S
    s, effects = step(s, Tick(), deadline)
    assert [type(e) for e in events(effects)] == [DatabaseDown]
    assert s.metrics.error.startswith("ProbeLost:") and not s.probing
    assert [e.to for e in effects if isinstance(e, Send)] == [t]
    assert step(s, ok(1, deadline + 1), deadline + 1) == (s, [])


def test_monitor_get_snapshot_answers_metrics_and_unknown_message_raises():
    s, t = new(), Token()
    assert step(s, GetSnapshot(reply=t), 0.0)[1][0].value is s.metrics
    with pytest.raises(TypeError):
        step(s, object(), 0.0)


def test_monitor_probe_timeout_must_be_positive_and_metrics_start_unchecked():
    with pytest.raises(ConfigError):
        DatabaseMonitor(Config(), "postgresql://x@127.0.0.1:1/x", print, probe_timeout_s=0)
    monitor = DatabaseMonitor(Config(), "postgresql://x@127.0.0.1:1/x", print)
    assert monitor.metrics.value == new().metrics


@pytest.mark.parametrize("dsn", [
    "postgresql://postgres:CANARY%2Fs3cret%40x@db.example:5432/app",
    "host=db.example user=postgres password='CANARY/s3cret@x' dbname=app",
])
@pytest.mark.parametrize("leak", ["{dsn}", "CANARY/s3cret@x", "CANARY%2Fs3cret%40x"])
def test_monitor_describe_scrubs_dsn_and_password_in_every_spelling(dsn, leak):
    hidden = Secret(dsn)
    assert repr(hidden) == "<hidden>"
    text = describe(psycopg.OperationalError(f"failed for {leak.format(dsn=dsn)}\n  detail"), hidden, 1.0)
    assert text == "OperationalError: failed for *** detail"


def test_monitor_describe_names_a_timeout_with_its_limit():
    assert describe(trio.TooSlowError(), Secret("postgresql://h/db"), 0.5) == (
        "TooSlowError: no answer within 0.5s")


# --- against a real PostgreSQL --------------------------------------------------------------

COUNT_SQL = "SELECT count(*)::int FROM pg_stat_activity WHERE backend_type = 'client backend'"


@pytest.fixture
def log_lines():
    lines: list[str] = []
    logger.enable("actors")
    sink = logger.add(lines.append, level="DEBUG", format="{level} {message} | {extra}")
    yield lines
    logger.remove(sink)
    logger.disable("actors")


async def started(nursery: trio.Nursery, monitor: DatabaseMonitor, probes: int = 1) -> DatabaseMetrics:
    await nursery.start(monitor.run)
    with trio.fail_after(10):
        return await monitor.metrics.wait_value(lambda m: m.probes >= probes)


async def test_monitor_real_database_metrics_agree_with_pg_stat_activity(database_url):
    async with trio.open_nursery() as nursery, await PgConnection.connect(database_url) as conn:
        monitor = DatabaseMonitor(Config(), database_url, lambda e: None)
        await started(nursery, monitor)
        before = (await conn.execute(COUNT_SQL)).rows[0][0]
        with trio.fail_after(10):
            m = await monitor.check_now()
        after = (await conn.execute(COUNT_SQL)).rows[0][0]
        settings = (await conn.execute(
            "SELECT current_setting('max_connections')::int,"
            " current_setting('superuser_reserved_connections')::int")).rows[0]
        nursery.cancel_scope.cancel()
    assert m.is_healthy and m.error is None
    assert min(before, after) - 2 <= m.connection_count <= max(before, after) + 2
    assert m.max_connections == settings[0]
    assert m.connection_limit == min(10, settings[0] - settings[1])
    assert m.usage_percentage == round(m.connection_count / m.connection_limit * 100, 2)
    assert 0 < m.response_time_ms < 5000
    checked = datetime.fromisoformat(m.last_checked.replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - checked).total_seconds()) < 60


async def test_monitor_check_now_returns_a_fresh_probe(database_url):
    async with trio.open_nursery() as nursery:
        monitor = DatabaseMonitor(Config(), database_url, lambda e: None)
        first = await started(nursery, monitor)
        with trio.fail_after(10):
            m = await monitor.check_now()
        assert m.probes == first.probes + 1 and m.checked_at > first.checked_at
        assert monitor.metrics.value is m
        nursery.cancel_scope.cancel()


async def test_monitor_wrong_port_reports_unhealthy_within_one_interval():
    emitted_events: list = []
    async with trio.open_nursery() as nursery:
        monitor = DatabaseMonitor(Config(health_check_interval_s=0.5),
                                  "postgresql://postgres@127.0.0.1:1/test", emitted_events.append)
        t0 = trio.current_time()
        m = await started(nursery, monitor)
        assert trio.current_time() - t0 < 0.5
        assert not m.is_healthy and m.error.startswith("OperationalError: ")
        with trio.fail_after(5):
            await monitor.metrics.wait_value(lambda m: m.probes >= 3)
        nursery.cancel_scope.cancel()
    assert [type(e) for e in emitted_events] == [DatabaseDown]


async def test_monitor_unanswering_server_times_out_within_one_interval():
    async def hold(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, hold, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        monitor = DatabaseMonitor(Config(health_check_interval_s=0.5),
                                  f"postgresql://postgres@127.0.0.1:{port}/test", lambda e: None)
        t0 = trio.current_time()
        m = await started(nursery, monitor)
        assert trio.current_time() - t0 < 0.5 + 0.3
        assert not m.is_healthy
        assert m.error in ("TooSlowError: no answer within 0.5s", "ConnectionTimeout: connection timeout")
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("make_dsn", [
    lambda url: f"postgresql://postgres:{CANARY}@127.0.0.1:1/test",
    lambda url: make_conninfo(url, dbname="triage_no_such_db", password=CANARY),
], ids=["wrong-port", "wrong-database"])
async def test_monitor_canary_password_never_leaks(database_url, log_lines, make_dsn):
    emitted_events: list = []
    async with trio.open_nursery() as nursery:
        monitor = DatabaseMonitor(Config(health_check_interval_s=0.5), make_dsn(database_url),
                                  emitted_events.append)
        await started(nursery, monitor, probes=2)
        with trio.fail_after(5):
            checked = await monitor.check_now()
        nursery.cancel_scope.cancel()
    assert not checked.is_healthy and checked.error
    assert emitted_events and any("Database" in line for line in log_lines)
    seen = " ".join([repr(checked), repr(monitor.metrics.value), repr(monitor), *map(repr, emitted_events),
                     *log_lines])
    assert "CANARY" not in seen and "s3cret" not in seen


async def test_monitor_on_violation_calls_sync_and_async_callbacks_until_unsubscribed(database_url):
    emitted_events: list = []
    sync_calls: list = []
    async_names: list = []
    async_called = trio.Event()

    async def on_async(names, metrics):
        async_names.append(names)
        async_called.set()

    def broken(names, metrics):
        raise RuntimeError("a callback bug must not stop the monitor")

    config = Config(thresholds=Thresholds(max_response_time_ms=1e-6))
    monitor = DatabaseMonitor(config, database_url, emitted_events.append)
    unsubscribe = monitor.on_violation(lambda names, m: sync_calls.append((names, m)))
    monitor.on_violation(on_async)
    monitor.on_violation(broken)
    async with trio.open_nursery() as nursery:
        first = await started(nursery, monitor)
        assert "maxResponseTime" in sync_calls[0][0] and sync_calls[0][1] == first
        with trio.fail_after(10):
            await async_called.wait()
            unsubscribe()
            unsubscribe()
            m = await monitor.check_now()
        assert len(sync_calls) == 1 and m.is_healthy and "maxResponseTime" in m.violations
        nursery.cancel_scope.cancel()
    assert "maxResponseTime" in async_names[0]
    assert [e.name for e in emitted_events if isinstance(e, ThresholdViolated)].count("maxResponseTime") == 1


async def test_monitor_cancelled_leaves_nothing_and_refuses_check_now(database_url):
    monitor = DatabaseMonitor(Config(), database_url, lambda e: None)
    async with trio.open_nursery() as nursery:
        await started(nursery, monitor)
        nursery.cancel_scope.cancel()
    with pytest.raises(ShuttingDown):
        await monitor.check_now()
    with pytest.raises(RuntimeError):
        await monitor.run()
    assert monitor.metrics.value.probes >= 1


# --- connection_scope: which backends count against MAX_CONNECTION_COUNT --------------------

OTHER_ROLE, OTHER_DB = "triage_scope_other", "triage_scope_other_db"


@pytest.fixture
def other_app(direct_database_url):
    """Another application's role and database on the same server (needs CREATEROLE/CREATEDB)."""
    try:
        with psycopg.connect(direct_database_url, autocommit=True) as c:
            if not c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [OTHER_ROLE]).fetchone():
                c.execute(f"CREATE ROLE {OTHER_ROLE} LOGIN")
            if not c.execute("SELECT 1 FROM pg_database WHERE datname = %s", [OTHER_DB]).fetchone():
                c.execute(f"CREATE DATABASE {OTHER_DB}")
    except psycopg.errors.InsufficientPrivilege:
        pytest.skip("the test server does not let us create another role and database")
    return lambda **kw: make_conninfo(direct_database_url, application_name="other-app", **kw)


def test_monitor_scope_picks_its_count_from_the_probe():
    for scope, expected in (("server", 9), ("database", 5), ("role", 4)):
        s = MonitorState.initial(MonitorSettings(interval_s=30, probe_timeout_s=5, thresholds=Thresholds(),
                                                 connection_scope=scope), now=0.0)
        s, _ = step(s, Tick(), 0.0)
        r = ProbeResult(seq=1, ok=True, at=0.1, wall=WALL, connected=True, response_time_ms=1.0,
                        connection_count=9, connections_by_scope={"server": 9, "database": 5, "role": 4},
                        max_connections=100, reserved_connections=3)
        s, _ = step(s, r, 0.1)
        m = s.metrics
        assert (m.connection_scope, m.connection_count, m.usage_percentage, m.monitor_connections) == (
            scope, expected, expected * 10.0, 1)
        assert m.connections_by_scope == {"server": 9, "database": 5, "role": 4}


async def test_monitor_connection_scope_database_and_role_exclude_other_applications(direct_database_url, other_app):
    """Extra connections of "another application": 3 as another role in another database, 2 as
    our role in another database, 2 as another role in our database. `server` counts all 7,
    `database` only the 2 in ours, `role` only the 2 of ours elsewhere."""
    monitors = {scope: DatabaseMonitor(Config.from_toml(f'[health]\nconnection_scope = "{scope}"'),
                                       direct_database_url, lambda e: None) for scope in ("server", "database", "role")}
    extra = [other_app(user=OTHER_ROLE, dbname=OTHER_DB)] * 3 + [other_app(dbname=OTHER_DB)] * 2 + \
            [other_app(user=OTHER_ROLE)] * 2
    async with trio.open_nursery() as nursery:
        for monitor in monitors.values():
            await started(nursery, monitor)
        with trio.fail_after(10):
            before = {scope: (await m.check_now()) for scope, m in monitors.items()}
            conns = [await PgConnection.connect(dsn) for dsn in extra]
            try:
                after = {scope: (await m.check_now()) for scope, m in monitors.items()}
            finally:
                for c in conns:
                    c.close_now()
        nursery.cancel_scope.cancel()
    grew = {scope: after[scope].connection_count - before[scope].connection_count for scope in monitors}
    assert grew == {"server": 7, "database": 2, "role": 2}
    assert {scope: m.connection_scope for scope, m in after.items()} == {s: s for s in monitors}
    for scope, m in after.items():
        assert m.connections_by_scope[scope] == m.connection_count and m.monitor_connections == 1
        assert m.usage_percentage == round(m.connection_count / m.connection_limit * 100, 2)
    assert after["server"].connection_count > after["database"].connection_count


def test_monitor_connection_scope_config_from_env_and_toml():
    assert Config().health.connection_scope == "server"
    assert Config.from_env({"TRIAGE_CONNECTION_SCOPE": "Role", "TRIAGE_EMBEDDED_DB": "1"}).health.connection_scope == "role"
    with pytest.raises(ConfigError, match="TRIAGE_CONNECTION_SCOPE.*expected server, database or role"):
        Config.from_env({"TRIAGE_CONNECTION_SCOPE": "cluster"})
    with pytest.raises(ConfigError, match="health.connection_scope"):
        Config.from_toml('[health]\nconnection_scope = "everything"')
# --- recovery without traffic: the probe through the pool is the breakers' trial (issue #10 item 4)

def _idle_recovery_config(database_url: str, **tier: object) -> Config:
    from messages.config import BreakerConfig, FaultsConfig

    tiers = {t: BreakerConfig(failure_threshold=1, recovery_timeout_s=1.0, **tier)
             for t in ("database", "critical", "analytics", "batch")}
    return Config(database_url=database_url, faults=FaultsConfig(enabled=True),
                  health_check_interval_s=0.5, tiers=tiers)


async def _open_every_tier_during_down(mon) -> None:
    from actors.faults import Down

    await mon.inject(Down())
    for tier in ("database", "critical", "analytics", "batch"):
        with pytest.raises(psycopg.OperationalError):
            await mon.db.fetchval("select 1", tier=tier)
        with trio.fail_after(1.0):
            await mon.breakers[tier].wait_state("open")


async def test_monitor_idle_service_recovers_within_recovery_timeout_plus_one_interval(database_url):
    from actors import open_monitoring

    async with open_monitoring(_idle_recovery_config(database_url)) as mon:
        await _open_every_tier_during_down(mon)
        await mon.clear_faults()
        t0 = trio.current_time()
        with trio.fail_after(1.0 + 0.5 + 0.5):  # recovery timeout + one interval (+ probe time)
            for tier in ("database", "critical", "analytics", "batch"):
                await mon.breakers[tier].wait_state("closed")
            await mon.health_report.wait_value(lambda r: r.status == "healthy")
        assert trio.current_time() - t0 >= 1.0  # not before the recovery timeout
        snap = await mon.breakers["database"].snapshot()
        assert snap.calls == 2 and snap.failures == 1  # the probe counted as the one trial


async def test_monitor_idle_probe_failing_reopens_with_a_fresh_timer(database_url):
    from actors import open_monitoring
    from messages.events import BreakerTransition

    async with open_monitoring(_idle_recovery_config(database_url)) as mon, mon.events(64) as events:
        await _open_every_tier_during_down(mon)  # and the database stays down
        seen: list[tuple[str, str]] = []
        with trio.fail_after(1.0 + 0.5 + 0.5):
            async for ev in events:
                if isinstance(ev, BreakerTransition) and ev.tier == "database":
                    seen.append((ev.to_state, ev.reason))
                    if len(seen) == 3:
                        break
        assert [to for to, _ in seen] == ["open", "half_open", "open"]
        assert seen[2][1] == "trial call failed"


async def test_monitor_tier_not_guarding_database_is_not_tried_by_the_probe(database_url):
    from actors import open_monitoring

    async with open_monitoring(_idle_recovery_config(database_url, guards_database=False)) as mon:
        await _open_every_tier_during_down(mon)
        await mon.clear_faults()
        await trio.sleep(2.0)
        assert mon.breakers["database"].state in ("open", "half_open")  # waits for real traffic
