"""Health: each status rule alone, the report's shape, and a real outage end to end."""

from __future__ import annotations

from functools import partial

import httpx
import hypercorn.trio
import pytest
import trio
from msgspec.structs import replace

from actors import CircuitOpen, open_monitoring
from actors import health as health_mod
from actors.breaker import BreakerState
from actors.breaker import snapshot as breaker_snapshot
from actors.faults import Down, FaultProxy, proxied_dsn
from actors.health import HealthInputs, HealthState, evaluate, judge
from actors.http.app import create_app, hypercorn_config
from actors.resources import Memory
from actors.scheduler import SchedulerState
from actors.scheduler import snapshot as queue_snapshot
from messages.commands import Crash
from messages.config import AlertRule, AlertsConfig, BreakerConfig, Config, QueueConfig, RatePolicy
from messages.database import DatabaseMetrics
from messages.events import BreakerTransition
from messages.http_config import HttpConfig
from messages.metrics import MetricsSnapshot, Percentiles, SeriesStats, WindowStats
from messages.snapshots import ActorStatus

CFG = Config()
NOW = 1000.0


def db_metrics(**changes) -> DatabaseMetrics:
    base = DatabaseMetrics(is_healthy=True, response_time_ms=3.0, connection_count=4, usage_percentage=40.0,
                           last_checked="2024-01-01T12:00:00.000Z", checked_at=NOW - 1, error=None,
                           max_connections=100, connection_limit=10, probes=5, failures=0,
                           consecutive_failures=0, violations=())
    return replace(base, **changes)


def window(requests: int = 100, errors: int = 0) -> WindowStats:
    p = Percentiles(p50=0.01, p95=0.05, p99=0.1, count=requests)
    return WindowStats(window_s=60.0, requests=requests, rate_per_s=requests / 60, errors=errors,
                       error_rate=errors / requests if requests else 0.0, server_errors=0,
                       server_error_rate=0.0, latency=p, queue_wait=p)


def metrics(requests: int = 100, errors: int = 0, at: float = NOW - 1) -> MetricsSnapshot:
    series = SeriesStats(name="all", windows={k: window(requests, errors) for k in ("1m", "5m", "1h")})
    return MetricsSnapshot(overall=series, routes={}, tiers={}, breaker_activations_per_hour={},
                           rate_limit_violations_per_hour={}, at=at)


def inputs(**changes) -> HealthInputs:
    breakers = {t: BreakerState.initial(t, c, now=0.0) for t, c in CFG.tiers.items()}
    actors = {"scheduler": ActorStatus(name="scheduler", restarts=0, last_restart_at=None, running=True)}
    base = HealthInputs(breakers=breakers, queue=SchedulerState.initial(CFG.queue), database=db_metrics(),
                        metrics=metrics(), actors=actors, started_at=0.0)
    return published(replace(base, **changes))


def published(i: HealthInputs) -> HealthInputs:
    """States as the handles publish them (`statistics()`): breaker and queue snapshots."""
    breakers = {t: breaker_snapshot(b, NOW) if isinstance(b, BreakerState) else b for t, b in i.breakers.items()}
    queue = queue_snapshot(i.queue, NOW) if isinstance(i.queue, SchedulerState) else i.queue
    return replace(i, breakers=breakers, queue=queue)


def report(i: HealthInputs):
    return evaluate(i, CFG, NOW, wall=lambda now: 1_700_000_000.0 + now)


def with_breaker(tier: str, phase: str) -> dict:
    i = inputs()
    return {**i.breakers, tier: replace(i.breakers[tier], state=phase)}


def test_health_all_good_is_healthy_200():
    r = report(inputs())
    assert (r.status, r.http_status(), r.degradation) == ("healthy", 200, [])
    assert r.basic() == {"status": "healthy", "timestamp": r.timestamp, "uptime": 1_000_000,
                         "database": "healthy", "queue": "healthy"}
    assert r.timestamp.endswith("Z") and r.timestamp.startswith("2023-11-14T22:")


@pytest.mark.parametrize(("name", "changes", "reason"), [
    ("database breaker open", {"breakers": with_breaker("database", "open")}, "circuit breaker database is OPEN"),
    ("probe failed", {"database": db_metrics(is_healthy=False, error="OperationalError: refused",
                                             response_time_ms=None)}, "database unreachable"),
])
def test_health_unhealthy_rules(name, changes, reason):
    r = report(inputs(**changes))
    assert (r.status, r.http_status()) == ("unhealthy", 503)
    assert [d.reason for d in r.degradation] == [reason]


@pytest.mark.parametrize(("changes", "reason", "value", "threshold"), [
    ({"breakers": with_breaker("critical", "open")}, "circuit breaker critical is OPEN", "open", "closed"),
    ({"breakers": with_breaker("analytics", "half_open")}, "circuit breaker analytics is HALF_OPEN",
     "half_open", "closed"),
    ({"breakers": with_breaker("database", "half_open")}, "circuit breaker database is HALF_OPEN",
     "half_open", "closed"),
    ({"actors": {"limiter": ActorStatus(name="limiter", restarts=1, last_restart_at=NOW - 299, running=True)}},
     "actor limiter restarted recently", 1, 0),
    ({"actors": {"limiter": ActorStatus(name="limiter", restarts=1, last_restart_at=None, running=False)}},
     "actor limiter is not running", "stopped", "running"),
    ({"database": db_metrics(checked_at=NOW - 91)}, "database metrics are stale", 91.0, 90.0),
    ({"metrics": metrics(at=NOW - 31)}, "metrics are stale", 31.0, 30.0),
    ({"maintenance": True}, "maintenance mode", True, False),
])
def test_health_degraded_rules_one_by_one(changes, reason, value, threshold):
    r = report(inputs(**changes))
    assert (r.status, r.http_status(), r.http_status(degraded_code=200)) == ("degraded", 206, 200)
    (d,) = r.degradation
    assert (d.reason, d.value, d.threshold) == (reason, value, threshold)


@pytest.mark.parametrize("changes", [
    {"database": db_metrics(response_time_ms=5000.0, usage_percentage=80.0)},
    {"queue": replace(SchedulerState.initial(CFG.queue), depth=50)},
    {"metrics": metrics(requests=100, errors=1)},
    {"metrics": metrics(requests=10, errors=5)},  # too few requests to judge
    {"actors": {"limiter": ActorStatus(name="limiter", restarts=1, last_restart_at=NOW - 301, running=True)}},
])
def test_health_at_or_under_thresholds_stays_healthy(changes):
    assert report(inputs(**changes)).status == "healthy"
    state, r = HealthState(), None
    for t in range(0, 400, 5):  # held for minutes: still healthy
        state, r = judge(state, fresh(inputs(**changes), NOW + t, NOW + t), CFG, NOW + t, WALL)
    assert (r.status, state.rules) == ("healthy", {})


# --- held rules: `for` before degrading, hysteresis to clear ------------------------------------

WALL = staticmethod(lambda now: 1_700_000_000.0 + now)
DEPTH = SchedulerState.initial(CFG.queue)

# rule, over the threshold, in the hysteresis band, clear, for_s, clear_for_s, reason, value, threshold
HELD = [
    ("response_time", {"database": db_metrics(response_time_ms=5001.0)},
     {"database": db_metrics(response_time_ms=4500.0)}, {"database": db_metrics(response_time_ms=3.0)},
     60.0, 60.0, "database response time over threshold", 5001.0, 5000.0),
    ("usage", {"database": db_metrics(usage_percentage=90.0, connection_count=9)},
     {"database": db_metrics(usage_percentage=70.0)}, {"database": db_metrics(usage_percentage=40.0)},
     60.0, 60.0, "database connection usage over threshold", 90.0, 80.0),
    ("error_rate", {"metrics": metrics(requests=100, errors=2)}, {"metrics": metrics(requests=1000, errors=8)},
     {"metrics": metrics(requests=100, errors=0)}, 30.0, 60.0, "error rate over threshold", 0.02, 0.01),
    ("queue_depth", {"queue": replace(DEPTH, depth=51)}, {"queue": replace(DEPTH, depth=45)},
     {"queue": replace(DEPTH, depth=10)}, 10.0, 10.0, "queue depth over threshold", 51, 50),
]


def fresh(i: HealthInputs, probed_at: float, now: float) -> HealthInputs:
    """`i` as the actor sees it at `now`: the probe taken at `probed_at`, metrics just published."""
    db = None if i.database is None else replace(i.database, checked_at=probed_at)
    return replace(i, database=db, metrics=None if i.metrics is None else replace(i.metrics, at=now))


def timeline(changes: list[tuple[float, dict]], until: float) -> tuple[list, object]:
    """Evaluate every second, as the health actor does, over inputs that change at given offsets
    from NOW (each a new probe; the same value probed again every 30 s); the status transitions
    (offset, status) and the last report."""
    state, seen, status, r = HealthState(), [], "healthy", None
    for t in range(int(until) + 1):
        at, change = [c for c in changes if c[0] <= t][-1]
        state, r = judge(state, fresh(inputs(**change), NOW + max(at, t - t % 30), NOW + t), CFG, NOW + t, WALL)
        if r.status != status:
            seen.append((t, r.status))
            status = r.status
    return seen, r


@pytest.mark.parametrize(("rule", "over", "band", "clear", "for_s", "clear_for_s", "reason", "value", "threshold"),
                         HELD)
def test_health_held_rule_short_excursion_does_not_flip_status(rule, over, band, clear, for_s, clear_for_s,
                                                               reason, value, threshold):
    """Over the threshold for less than `for_s` (for a database rule: one probe, held for one
    interval, and more) then back: the status never leaves healthy."""
    seen, r = timeline([(0, clear), (10, over), (10 + for_s - 1, clear)], until=10 + for_s + 100)
    assert seen == []
    assert r.metrics["rules"][rule]["state"] == "quiet"


def test_health_single_slow_probe_does_not_flip_status():
    seen, _ = timeline([(0, {}), (30, {"database": db_metrics(response_time_ms=9000.0)}), (60, {})], until=200)
    assert seen == []


@pytest.mark.parametrize(("rule", "over", "band", "clear", "for_s", "clear_for_s", "reason", "value", "threshold"),
                         HELD)
def test_health_held_rule_sustained_degrades_after_for_and_clears_only_with_hysteresis(
        rule, over, band, clear, for_s, clear_for_s, reason, value, threshold):
    """Over from t=10: degraded at exactly 10 + for_s. Back into the band between the clear
    threshold and the threshold for minutes: still degraded ("recovering"). Under the clear
    threshold from t=600: healthy at exactly 600 + clear_for_s."""
    seen, r = timeline([(0, clear), (10, over)], until=10 + for_s + 5)
    assert seen == [(10 + for_s, "degraded")]
    (d,) = r.degradation
    assert (d.reason, d.value, d.threshold, d.severity) == (reason, value, threshold, "degraded")
    seen, r = timeline([(0, clear), (10, over), (200, band)], until=599)
    assert seen == [(10 + for_s, "degraded")]
    (d,) = r.degradation
    assert d.reason == f"{reason}, recovering" and d.threshold < threshold
    seen, r = timeline([(0, clear), (10, over), (200, band), (600, clear)], until=800)
    assert seen == [(10 + for_s, "degraded"), (600 + clear_for_s, "healthy")]
    assert r.degradation == [] and r.metrics["rules"][rule]["state"] == "quiet"


def test_health_error_rate_needs_minimum_volume_of_rated_requests():
    """19 requests, all failed: too few to judge. 200 rate-limit refusals and health answers do
    not make up the volume, and are not in the rate."""
    few = {"metrics": metrics(requests=19, errors=19)}
    seen, _ = timeline([(0, few)], until=300)
    assert seen == []
    w = window(requests=219, errors=19)
    padded = {"metrics": replace(metrics(), overall=SeriesStats(name="all", windows={
        k: replace(w, excluded=200, error_rate=1.0) for k in ("1m", "5m", "1h")}))}
    seen, _ = timeline([(0, padded)], until=300)
    assert seen == []
    enough = {"metrics": metrics(requests=20, errors=1)}
    seen, _ = timeline([(0, enough)], until=100)
    assert seen == [(30, "degraded")]


def test_health_rules_configurable_from_toml():
    cfg = Config.from_toml("[health.rules.queue_depth]\nfor_s = 0\nclear_for_s = 0\nclear_ratio = 1.0\n"
                           "[health.rules.usage]\nenabled = false\n")
    i = inputs(queue=replace(DEPTH, depth=51), database=db_metrics(usage_percentage=99.0))
    state, r = judge(HealthState(), fresh(i, NOW, NOW), cfg, NOW, WALL)
    assert [d.reason for d in r.degradation] == ["queue depth over threshold"]
    assert "usage" not in r.metrics["rules"]
    assert cfg.health.rules["error_rate"].for_s == 30.0   # rules it does not name keep their defaults


def test_health_detailed_keys_match_spec_jq_paths():
    d = report(inputs(breakers=with_breaker("critical", "open"))).detailed()
    assert set(d) >= {"status", "timestamp", "uptime", "database", "queue", "components", "metrics",
                      "alerts", "degradation"}
    assert set(d["components"]) == {"database", "queue", "circuitBreakers", "rateLimiter", "actors"}
    assert set(d["metrics"]) == {"database", "queue", "circuitBreakers", "errors", "latency", "rules",
                                 "resources"}
    assert d["components"]["circuitBreakers"]["critical"]["state"] == "OPEN"
    assert d["metrics"]["database"]["isHealthy"] is True and d["metrics"]["database"]["responseTimeMs"] == 3.0
    assert d["metrics"]["circuitBreakers"]["critical"]["openings"] == 0
    assert d["metrics"]["queue"]["inFlight"] == 0 and d["metrics"]["latency"]["1m"]["p95"] == 0.05
    assert d["degradation"][0]["reason"] == "circuit breaker critical is OPEN"
    assert report(inputs()).minimal() == {"status": "healthy", "timestamp": d["timestamp"]}


def test_health_without_database_reports_not_configured():
    r = report(inputs(database=None))
    assert (r.status, r.database) == ("healthy", "not_configured")


async def test_health_actor_restart_degrades_for_five_minutes(autojump_clock):
    async with open_monitoring(Config()) as mon:
        await mon.health_report.wait_value(lambda r: r.status == "healthy")
        mon._limiter.put(Crash())
        r = await mon.health_report.wait_value(
            lambda r: "actor limiter restarted recently" in [d.reason for d in r.degradation])
        assert r.status == "degraded"
        restarted = mon.actors()["limiter"].last_restart_at
        await mon.health_report.wait_value(lambda r: r.status == "healthy")
        assert 300 <= trio.current_time() - restarted <= 300 + 1.0  # next evaluation after 5 min


async def test_health_maintenance_mode_degrades_then_recovers(autojump_clock):
    async with open_monitoring(Config()) as mon:
        await mon.maintenance(True)
        body = await mon.health()
        r = await mon.health_report.wait_value(lambda r: r.status == "degraded")
        assert [d.reason for d in r.degradation] == ["maintenance mode"] and body["status"] in ("healthy", "degraded")
        await mon.maintenance(False)
        await mon.health_report.wait_value(lambda r: r.status == "healthy")


async def test_health_breaker_alert_chain_on_real_outage(database_url):
    """Queries through a proxy that goes down: breaker opens -> activation warning -> unhealthy ->
    critical alert; the proxy comes back -> alerts resolve -> healthy."""
    rules = dict(AlertsConfig().rules)
    rules["health_unhealthy"] = AlertRule(severity="critical", threshold=0.5, clear_threshold=0.5)
    async with FaultProxy.for_dsn(database_url) as proxy:
        cfg = Config(database_url=proxied_dsn(database_url, proxy), health_check_interval_s=0.2,
                     tiers={**Config().tiers, "database": BreakerConfig(failure_threshold=5,
                                                                         recovery_timeout_s=1.0)},
                     alerts=AlertsConfig(rules=rules))
        seen: list[str] = []
        async with open_monitoring(cfg) as mon, mon.events(1024) as events:
            with trio.fail_after(10):
                await mon.health_report.wait_value(lambda r: r.status == "healthy")
                assert await mon.db.fetchval("select 1") == 1
                proxy.add(Down())
                while True:
                    try:
                        await mon.db.fetchval("select 1")
                    except CircuitOpen:
                        break
                    except Exception:
                        pass
                await mon.health_report.wait_value(lambda r: r.status == "unhealthy")
                while not {"alert:health_unhealthy:firing", "alert:breaker_activation:database:firing"} <= set(seen):
                    ev = await events.receive()
                    seen.append(_name(ev))
                proxy.remove("down")
                await mon.breakers["database"].wait_state("half_open")
                try:
                    assert await mon.db.fetchval("select 2") == 2
                except CircuitOpen:  # the monitor's probe holds the one trial: it decides
                    await mon.breakers["database"].wait_state("closed")
                    assert await mon.db.fetchval("select 2") == 2
                await mon.health_report.wait_value(lambda r: r.status == "healthy")
                while not {"alert:health_unhealthy:resolved",
                           "alert:breaker_activation:database:resolved"} <= set(seen):
                    seen.append(_name(await events.receive()))
    at = {x: seen.index(x) for x in seen}
    assert at["breaker:database:open"] < at["alert:breaker_activation:database:firing"]
    # Health turns unhealthy as the breaker opens (or as the monitor's probe fails, if first).
    assert at["alert:health_unhealthy:firing"] < at["alert:health_unhealthy:resolved"]
    assert at["alert:breaker_activation:database:firing"] < at["alert:breaker_activation:database:resolved"]
    assert proxy.connections >= 2
    assert mon.actors()["health"].restarts == 0


def _name(ev) -> str:
    if isinstance(ev, BreakerTransition):
        return f"breaker:{ev.tier}:{ev.to_state}"
    if hasattr(ev, "rule"):
        return f"alert:{ev.id}:{ev.state}"
    return type(ev).__name__


async def test_health_queue_backlog_degrades_after_for_not_on_a_burst(autojump_clock):
    """The real queue, one slot, on MockClock: 55 callers waiting for 5 s leave health healthy;
    waiting on, it degrades exactly `for_s` (10 s) after health first saw the backlog, and is
    healthy again exactly `clear_for_s` after the queue drained."""
    cfg = Config(queue=QueueConfig(max_concurrent=1, request_timeout_s=1000.0))
    statuses: list[str] = []

    async def wait_in_queue(release: trio.Event) -> None:
        async with mon.guard():
            await release.wait()

    async with open_monitoring(cfg) as mon, trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _watch(mon, statuses))
        for hold_s in (5.0, None):
            release = trio.Event()
            for _ in range(56):
                nursery.start_soon(wait_in_queue, release)
            pending = await mon.health_report.wait_value(
                lambda r: r.metrics["rules"]["queue_depth"]["state"] == "pending")
            if hold_s is not None:
                await trio.sleep(hold_s)
                release.set()
                await mon.health_report.wait_value(lambda r: r.metrics["rules"]["queue_depth"]["state"] == "quiet")
                await trio.sleep(60)
                assert statuses == ["healthy"]
                continue
            degraded = await mon.health_report.wait_value(lambda r: r.status == "degraded")
            assert degraded.at - pending.at == 10.0
            assert [d.reason for d in degraded.degradation] == ["queue depth over threshold"]
            release.set()
            clearing = await mon.health_report.wait_value(
                lambda r: r.metrics["rules"]["queue_depth"]["state"] == "clearing")
            healthy = await mon.health_report.wait_value(lambda r: r.status == "healthy")
            assert healthy.at - clearing.at == 10.0
        nursery.cancel_scope.cancel()
    assert statuses == ["healthy", "degraded", "healthy"]


async def _watch(mon, statuses: list[str]) -> None:
    while True:
        r = await mon.health_report.wait_value(lambda r: not statuses or r.status != statuses[-1])
        statuses.append(r.status)


async def test_health_real_database_slow_probes_degrade_only_after_for_and_report_scope(database_url):
    """Every probe over a (tiny) MAX_RESPONSE_TIME: the first leaves health healthy with the rule
    pending; degraded only once `for_s` (two intervals) has passed. The detailed report shows the
    scoped connection count, the scope and this instance's own connections side by side."""
    cfg = Config.from_toml(f'database_url = "{database_url}"\nhealth_check_interval_s = 0.2\n'
                           '[thresholds]\nmax_response_time_ms = 0.000001\n'
                           '[health]\nconnection_scope = "database"\n')
    async with open_monitoring(cfg) as mon:
        with trio.fail_after(10):
            assert await mon.db.fetchval("select 1") == 1
            pending = await mon.health_report.wait_value(
                lambda r: r.metrics["rules"]["response_time"]["state"] == "pending")
            degraded = await mon.health_report.wait_value(lambda r: r.status == "degraded")
    assert pending.status == "healthy"
    assert degraded.at - pending.at >= 0.4 - 1e-9
    assert [d.reason for d in degraded.degradation] == ["database response time over threshold"]
    db = degraded.detailed()["components"]["database"]
    assert db["connectionScope"] == "database"
    assert db["connectionCount"] == db["connectionsByScope"]["database"] <= db["connectionsByScope"]["server"]
    own = db["ownConnections"]
    assert own["monitor"] == 1 and own["total"] == own["pooled"] + 1 and own["pooled"] >= 0


# --- over real HTTP: what enters request latency and the error rate ------------------------------

async def test_health_http_streams_refusals_and_health_503s_stay_out_of_latency_and_error_rate(database_url):
    """Over loopback: the alert stream and the dashboard stream held open for a second (then
    ended by the drain), 10 requests of which 6 are refused by rate limiting (429), and 5 health
    checks answered 503 (the database breaker is open). The streams are not requests: neither
    their durations nor their routes appear. The 429s and health's 503s are requests, but in no
    error rate."""
    cfg = Config(database_url=database_url,
                 policies={**Config().policies, "general": RatePolicy(limit=5, window_s=60.0)})
    http = HttpConfig(port=0, sse_heartbeat_s=0.2)
    async with open_monitoring(cfg) as mon:
        app = create_app(mon, http)
        stop = trio.Event()
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                binds = await nursery.start(partial(hypercorn.trio.serve, app, hypercorn_config(http),
                                                    shutdown_trigger=app.shutdown_trigger(stop.wait)))
                host, port = binds[0].removeprefix("http://").rsplit(":", 1)
                streams = []
                for path, marker in ((b"/api/alerts/stream", b": connected"), (b"/api/dashboard/stream", b"retry:")):
                    stream = await trio.open_tcp_stream(host, int(port))
                    await stream.send_all(b"GET %s HTTP/1.1\r\nhost: x\r\n\r\n" % path)
                    assert (await _read_until(stream, marker)).startswith(b"HTTP/1.1 200")
                    streams.append(stream)
                async with httpx.AsyncClient(base_url=binds[0], timeout=5) as client:
                    codes = [(await client.get("/nope")).status_code for _ in range(10)]
                    await mon.breakers["database"].force_open()
                    await mon.health_report.wait_value(lambda r: r.status == "unhealthy")
                    codes += [(await client.get("/api/health")).status_code for _ in range(5)]
                await trio.sleep(1.0)      # the streams stay open: a dashboard left open
                stop.set()                 # the drain ends the streams; serve returns when all are done
                for stream in streams:
                    await _read_until(stream, b"\r\n0\r\n\r\n")
                    await stream.aclose()
            snap = await mon.metrics()
    assert codes == [404] * 4 + [429] * 6 + [503] * 5
    w = snap.overall.windows["1m"]
    assert (w.requests, w.latency.count) == (15, 15)
    assert (w.errors, w.server_errors, w.excluded, w.error_rate, w.server_error_rate) == (0, 0, 11, 0.0, 0.0)
    assert set(snap.routes) == {"GET <unmatched>", "GET /api/health"}


async def _read_until(stream: trio.SocketStream, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = await stream.receive_some(4096)
        assert chunk, data
        data += chunk
    return data


async def test_health_crash_in_step_is_restarted_from_last_state_and_counted(autojump_clock, monkeypatch):
    """Health runs under the supervisor like every other actor: a crash inside its step is
    restarted (after the supervisor's back-off) from its last state, and counted."""
    real, crashes = health_mod.judge, []

    def judge_once_broken(*args, **kwargs):
        if not crashes:
            crashes.append(trio.current_time())
            raise RuntimeError("a bug in health's step")
        return real(*args, **kwargs)

    async with open_monitoring(Config()) as mon:
        before = await mon.health_report.wait_value(lambda r: r.status == "healthy")
        monkeypatch.setattr(health_mod, "judge", judge_once_broken)
        await mon.maintenance(True)  # an event: health evaluates, and crashes
        after = await mon.health_report.wait_value(lambda r: r is not before)
        status = mon.actors()["health"]
    assert (len(crashes), status.restarts, status.running) == (1, 1, True)
    assert status.last_restart_at == crashes[0]
    reasons = [d.reason for d in after.degradation]
    assert reasons == ["actor health restarted recently", "maintenance mode"]
    assert after.uptime_ms > before.uptime_ms  # the same actor's clock: restarted, not re-created


def test_health_breaker_opened_and_closed_between_two_evaluations_still_activates():
    """Health folds a burst of events into one evaluation: a breaker that opened and was reset
    before health looked must still raise its activation signal (it did open), and only once."""
    i = inputs()
    closed_again = replace(i.breakers["analytics"], openings=1)
    i = replace(i, breakers={**i.breakers, "analytics": closed_again})
    r = report(i)
    values, _ = health_mod.signals(r, i, openings_seen={t: 0 for t in i.breakers})
    assert values["breaker_activation:analytics"] == 1.0
    assert values["breaker_activation:critical"] == 0.0
    again, _ = health_mod.signals(r, i, openings_seen={t: b.openings for t, b in i.breakers.items()})
    assert again["breaker_activation:analytics"] == 0.0


def test_health_memory_is_reported_and_alerted_but_never_changes_the_status():
    hot = Memory(rss_bytes=950, limit_bytes=1000, limit_source="cgroup", percent=95.0)
    i = inputs(memory=hot)
    r = report(i)
    assert r.status == "healthy"
    assert r.detailed()["metrics"]["resources"]["memory"] == {
        "rssBytes": 950, "limitBytes": 1000, "limitSource": "cgroup", "percent": 95.0}
    values, _ = health_mod.signals(r, i)
    assert values["memory_high"] == 95.0


def test_health_without_a_memory_reading_has_no_memory_signal():
    i = inputs()
    assert report(i).detailed()["metrics"]["resources"] == {"memory": None}
    values, _ = health_mod.signals(report(i), i)
    assert "memory_high" not in values


async def test_health_actor_samples_this_process_memory(autojump_clock):
    async with open_monitoring(Config()) as mon:
        r = await mon.health_report.wait_value(lambda r: r.metrics.get("resources") is not None)
        memory = r.detailed()["metrics"]["resources"]["memory"]
    assert memory["limitSource"] in ("cgroup", "host")
    assert 0 < memory["rssBytes"] < memory["limitBytes"]


async def test_health_shows_a_changed_queue_limit_at_once(autojump_clock):
    # An operator reduces the slots and reads /api/health at once: it says so, without the
    # second's wait for the next evaluation (and the same when the limit is restored).
    cfg = Config(queue=QueueConfig(max_concurrent=3))
    async with open_monitoring(cfg) as mon:
        for limit, shown in ((1, 1), (None, 3)):
            await trio.sleep(0.4)  # between two evaluations
            asked_at = trio.current_time()
            await mon.queue.set_limit(limit)
            report = await mon.health_report.wait_value(lambda r, n=shown: r.components["queue"]["maxConcurrent"] == n)
            assert report.at == asked_at
