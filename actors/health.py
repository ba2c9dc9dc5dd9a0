"""Health: every actor's latest state folded into one `HealthReport`.

Theory of operation. Actors publish their state as values; the health actor
reads them through each handle's `statistics()` — it never asks an actor, never waits on the
admission queue or the database — and `evaluate()` (pure) turns them into a
report. The actor (`HealthCore`, under the supervisor like every other actor, restarted
from its last state) re-evaluates when something changes (a breaker transition,
a database probe, an alert, maintenance) and at least every `EVAL_EVERY_S`, so
the time-based rules (staleness, recent restarts) hold without any event.

Status rules, in order (the first that applies decides; every reason is
listed in `degradation`):

unhealthy
  * the database breaker is OPEN
  * the database monitor's last probe failed (database unreachable)
degraded
  * any other breaker OPEN, or any breaker HALF_OPEN
  * held rules (`actors.health_rules`: over the threshold for `for_s`, cleared
    with hysteresis, so a single probe or burst does not flip the status):
    database response time over MAX_RESPONSE_TIME, database usage (in
    `connection_scope`) over MAX_DB_USAGE_PERCENTAGE, queue depth over 50,
    error rate over 1 % in the last minute (with at least `min_requests`
    requests it rates: rate-limit refusals and health's own answers are not)
  * an actor restarted in the last 5 minutes, or is not running
  * a snapshot is stale: the last database probe is older than 3 health-check
    intervals, or the metrics summary older than 3 of its periods
  * maintenance mode
healthy otherwise.

Process memory (RSS against the cgroup limit, else the host's memory; `actors.resources`)
is reported in `metrics.resources` and feeds the `memory_high` alert, but never the status.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import msgspec
from loguru import logger
from msgspec.structs import replace

from actors import health_rules
from actors.alerts import SignalValues, iso
from actors.hysteresis import Track
from actors.resources import read_memory
from messages.commands import Tick
from messages.config import Config
from messages.errors import ShuttingDown
from messages.health import Alert, Changed, Degradation, HealthReport
from messages.snapshots import ActorStatus

RESTART_WINDOW_S = 300.0
STALE_INTERVALS = 3
EVAL_EVERY_S = 1.0
METRICS_PERIOD_S = 10.0    # the metrics actor publishes at its 10 s bucket ticks


class HealthInputs(msgspec.Struct, frozen=True, kw_only=True):
    """The latest published values, as the health actor found them."""

    breakers: dict[str, Any]                 # tier -> BreakerSnapshot (`BreakerHandle.statistics()`)
    queue: Any                               # QueueSnapshot (`QueueHandle.statistics()`)
    database: Any = None                     # DatabaseMetrics, or None without a database
    metrics: Any = None                      # MetricsSnapshot, or None before the first one
    limiter: Any = None                      # LimiterSnapshot (detailed view only)
    actors: dict[str, ActorStatus] = {}
    maintenance: bool = False
    alerts: tuple[Alert, ...] = ()
    started_at: float = 0.0
    memory: Any = None                       # resources.Memory, or None off Linux


def _breaker_reasons(inputs: HealthInputs, now: float) -> list[Degradation]:
    out = []
    for tier, s in inputs.breakers.items():
        if s.state == "open":
            sev = "unhealthy" if tier == "database" else "degraded"
            out.append(Degradation(reason=f"circuit breaker {tier} is OPEN", component=f"circuitBreakers.{tier}",
                                   severity=sev, value="open", threshold="closed"))
        elif s.state == "half_open":
            out.append(Degradation(reason=f"circuit breaker {tier} is HALF_OPEN",
                                   component=f"circuitBreakers.{tier}", severity="degraded",
                                   value="half_open", threshold="closed"))
    return out


def _database_reasons(db: Any, cfg: Config, now: float) -> list[Degradation]:
    if db is None:
        return []
    if db.checked_at is None:
        return [Degradation(reason="database not checked yet", component="database", severity="degraded")]
    if not db.is_healthy:
        return [Degradation(reason="database unreachable", component="database", severity="unhealthy",
                            value=db.error)]
    out = []
    stale_after = STALE_INTERVALS * cfg.health_check_interval_s
    if now - db.checked_at > stale_after:
        out.append(Degradation(reason="database metrics are stale", component="database",
                               severity="degraded", value=round(now - db.checked_at, 3),
                               threshold=stale_after))
    return out


def _metrics_reasons(metrics: Any, now: float) -> list[Degradation]:
    if metrics is None:
        return []
    out = []
    if now - metrics.at > STALE_INTERVALS * METRICS_PERIOD_S:
        out.append(Degradation(reason="metrics are stale", component="metrics", severity="degraded",
                               value=round(now - metrics.at, 3), threshold=STALE_INTERVALS * METRICS_PERIOD_S))
    return out


def _actor_reasons(actors: dict[str, ActorStatus], now: float) -> list[Degradation]:
    out = []
    for name, a in actors.items():
        if not a.running:
            out.append(Degradation(reason=f"actor {name} is not running", component=f"actors.{name}",
                                   severity="degraded", value="stopped", threshold="running"))
        elif a.last_restart_at is not None and now - a.last_restart_at < RESTART_WINDOW_S:
            out.append(Degradation(reason=f"actor {name} restarted recently", component=f"actors.{name}",
                                   severity="degraded", value=a.restarts, threshold=0))
    return out


def reasons(inputs: HealthInputs, cfg: Config, now: float, rules: dict[str, Track] | None = None,
            lims: dict[str, Any] | None = None) -> list[Degradation]:
    out = _breaker_reasons(inputs, now) + _database_reasons(inputs.database, cfg, now)
    out += health_rules.reasons(rules or {}, lims or health_rules.limits(cfg))
    out += _metrics_reasons(inputs.metrics, now)
    out += _actor_reasons(inputs.actors, now)
    if inputs.maintenance:
        out.append(Degradation(reason="maintenance mode", component="service", severity="degraded",
                               value=True, threshold=False))
    return out


def _status(found: list[Degradation]) -> str:
    if any(d.severity == "unhealthy" for d in found):
        return "unhealthy"
    return "degraded" if found else "healthy"


def _component_status(found: list[Degradation], prefix: str) -> str:
    mine = [d for d in found if d.component.startswith(prefix)]
    return _status(mine)


class HealthState(msgspec.Struct, frozen=True):
    """What the health actor remembers between evaluations: the held rules' tracks."""

    rules: dict[str, Track] = {}


def judge(state: HealthState, inputs: HealthInputs, cfg: Config, now: float,
          wall: Callable[[float], float]) -> tuple[HealthState, HealthReport]:
    """One evaluation: the held rules one instant on, then the report. Pure."""
    lims = health_rules.limits(cfg)
    state = HealthState(health_rules.step(state.rules, health_rules.values(inputs, cfg), lims, now))
    return state, evaluate(inputs, cfg, now, wall, state.rules)


def evaluate(inputs: HealthInputs, cfg: Config, now: float,
             wall: Callable[[float], float], rules: dict[str, Track] | None = None) -> HealthReport:
    """The whole report, from values only (`rules`: the held rules' tracks, see `judge`)."""
    lims = health_rules.limits(cfg)
    found = reasons(inputs, cfg, now, rules, lims)
    status = _status(found)
    breakers, queue = inputs.breakers, inputs.queue
    db_status = ("not_configured" if inputs.database is None else
                 "unknown" if inputs.database.checked_at is None else _component_status(found, "database"))
    components = {
        "database": {"status": db_status, **(_b(inputs.database) or {}),
                     "ownConnections": _own_connections(inputs.database, queue)},
        "queue": {"status": _component_status(found, "queue"), "depth": queue.depth,
                  "inFlight": queue.in_flight, "maxConcurrent": queue.max_concurrent,
                  **_reduced(queue)},
        "circuitBreakers": {t: {"state": b.state.upper(), "failures": b.failures_in_window,
                                "timeInState": round(b.time_in_state_s, 3)} for t, b in breakers.items()},
        "rateLimiter": _b(inputs.limiter) or {"enabled": cfg.rate_limiting_enabled},
        "actors": {n: _b(a) for n, a in inputs.actors.items()},
    }
    metrics = {
        "database": _b(inputs.database),
        "queue": _b(queue),
        "circuitBreakers": {t: _b(b) for t, b in breakers.items()},
        "errors": _errors(inputs.metrics),
        "latency": _latency(inputs.metrics),
        "rules": health_rules.view(rules or {}, health_rules.values(inputs, cfg), lims, now),
        "resources": {"memory": _b(inputs.memory)},
    }
    return HealthReport(
        status=status, timestamp=iso(wall(now)), uptime_ms=int((now - inputs.started_at) * 1000),
        database=db_status, queue=components["queue"]["status"], components=components, metrics=metrics,
        alerts=list(inputs.alerts), degradation=found, at=now)


def _reduced(queue: Any) -> dict:
    """While `set_limit` holds fewer slots than configured: say so, and what is configured."""
    configured = queue.configured_max_concurrent
    return {} if configured is None else {"limitReduced": True, "configuredMaxConcurrent": configured}


def _own_connections(db: Any, queue: Any) -> dict[str, int] | None:
    """This instance's connections, to read beside the scoped count: the pool's and the monitor's."""
    if db is None:
        return None
    pooled = queue.pool.opened if queue.pool is not None else 0
    return {"pooled": pooled, "monitor": db.monitor_connections, "total": pooled + db.monitor_connections}


def _b(value: Any) -> Any:
    return None if value is None else msgspec.to_builtins(value)


def _errors(m: Any) -> dict[str, Any] | None:
    if m is None:
        return None
    return {name: {"requests": w.requests, "errors": w.errors, "errorRate": w.error_rate,
                   "serverErrors": w.server_errors, "serverErrorRate": w.server_error_rate,
                   "excluded": w.excluded, "ratePerSecond": w.rate_per_s}
            for name, w in m.overall.windows.items()} | {
        "breakerActivationsPerHour": m.breaker_activations_per_hour,
        "rateLimitViolationsPerHour": m.rate_limit_violations_per_hour}


def _latency(m: Any) -> dict[str, Any] | None:
    if m is None:
        return None
    return {name: {"p50": w.latency.p50, "p95": w.latency.p95, "p99": w.latency.p99,
                   "count": w.latency.count} for name, w in m.overall.windows.items()}


# --- the shell --------------------------------------------------------------------------------


class Sources(msgspec.Struct, frozen=True, kw_only=True):
    """Where the health actor finds each actor's latest published value (no asks)."""

    breakers: Callable[[], dict[str, Any]]
    queue: Callable[[], Any]
    database: Callable[[], Any]
    metrics: Callable[[], Any]
    limiter: Callable[[], Any]
    actors: Callable[[], dict[str, ActorStatus]]
    maintenance: Callable[[], bool]
    alerts: Callable[[], tuple[Alert, ...]]
    memory: Callable[[], Any] = read_memory  # sampled at each evaluation: a few /proc reads


def signals(report: HealthReport, inputs: HealthInputs, min_requests: int = 20,
            openings_seen: dict[str, int] | None = None) -> tuple[dict[str, float], dict[str, Any]]:
    """Alert signal values (alert id -> value) and the info summary's figures.

    The error rate is a signal only with at least `min_requests` requests it rates. A breaker
    that opened since the last evaluation (`openings_seen`) counts as activated even if it is
    closed again by now: a burst of events is folded into one evaluation, and an activation
    must not depend on when that evaluation ran.
    """
    seen = openings_seen or {}
    values: dict[str, float] = {"health_unhealthy": 1.0 if report.status == "unhealthy" else 0.0,
                                "queue_depth_high": float(inputs.queue.depth)}
    for tier, s in inputs.breakers.items():
        opened = s.openings > seen.get(tier, s.openings)
        values[f"breaker_activation:{tier}"] = 0.0 if s.state == "closed" and not opened else 1.0
        values[f"breaker_open_long:{tier}"] = 1.0 if s.state == "open" else 0.0
    if inputs.memory is not None:
        values["memory_high"] = inputs.memory.percent
    db = inputs.database
    if db is not None and db.usage_percentage is not None:
        values["db_usage_critical"] = db.usage_percentage
    summary: dict[str, Any] = {}
    m = inputs.metrics
    if m is not None:
        w1, w5 = m.overall.windows.get("1m"), m.overall.windows.get("5m")
        if w1 is not None and w1.requests - w1.excluded >= min_requests:
            values["error_rate_critical"] = w1.error_rate
        if w5 is not None and w5.latency.p95 is not None:
            values["p95_slow"] = w5.latency.p95
        values["rate_limit_violations_high"] = float(sum(m.rate_limit_violations_per_hour.values()))
        if w5 is not None:
            summary = {"p95_5m_s": w5.latency.p95, "requests_5m": w5.requests,
                       "error_rate_5m": round(w5.error_rate, 4)}
        summary["rate_limit_violations_per_hour"] = values["rate_limit_violations_high"]
    if db is not None:
        summary["db_usage_pct"] = db.usage_percentage
    return values, summary


class HealthActorState(msgspec.Struct, frozen=True, kw_only=True):
    """What survives a restart: the held rules, the last report, and whether an event is unread."""

    judged: HealthState = HealthState()
    report: HealthReport
    dirty: bool = False
    openings: dict[str, int] = {}   # each breaker's openings at the last evaluation


class _Judged:
    """Effect of one evaluation: log a status change, feed the alert rules."""

    __slots__ = ("previous", "report", "sample", "to_alerts")

    def __init__(self, previous: str, report: HealthReport, sample: SignalValues,
                 to_alerts: Callable[[Any], None]) -> None:
        self.previous, self.report, self.sample, self.to_alerts = previous, report, sample, to_alerts

    def perform(self, cell: Any, now: float) -> None:
        report = self.report
        if report.status != self.previous:
            why = "; ".join(d.reason for d in report.degradation) or "all checks pass"
            logger.bind(actor="health").log("WARNING" if report.status != "healthy" else "INFO",
                                            "Health {previous} -> {status}: {why}",
                                            previous=self.previous, status=report.status, why=why)
        with contextlib.suppress(ShuttingDown):  # the alerts actor has stopped first
            self.to_alerts(self.sample)


class HealthCore:
    """The health actor's core, run by the same shell and supervisor as every other actor.

    An event (`Changed`, from a bus tap) only marks the state dirty; the wake-up is then
    immediate, so a burst of events costs one evaluation. Otherwise it re-evaluates every
    EVAL_EVERY_S, or when a held rule changes phase by itself (so `for` is exact). `step`
    reads the other actors' published values (`Sources`) and folds them with `judge` (pure).
    """

    name = "health"

    def __init__(self, config: Config, sources: Sources, to_alerts: Callable[[Any], None],
                 wall: Callable[[float], float], started_at: float) -> None:
        self.config, self.sources, self.to_alerts = config, sources, to_alerts
        self.wall, self.started_at = wall, started_at

    def inputs(self) -> HealthInputs:
        src = self.sources
        return HealthInputs(breakers=src.breakers(), queue=src.queue(), database=src.database(),
                            metrics=src.metrics(), limiter=src.limiter(), actors=src.actors(),
                            maintenance=src.maintenance(), alerts=src.alerts(),
                            started_at=self.started_at, memory=src.memory())

    def initial(self, now: float) -> HealthActorState:
        inputs = self.inputs()
        return HealthActorState(report=evaluate(inputs, self.config, now, self.wall),
                                openings={t: b.openings for t, b in inputs.breakers.items()})

    def step(self, s: HealthActorState, msg: Any, now: float) -> tuple[HealthActorState, list]:
        match msg:
            case Changed():
                return replace(s, dirty=True), []
            case Tick():
                inputs = self.inputs()
                judged, report = judge(s.judged, inputs, self.config, now, self.wall)
                values, summary = signals(report, inputs, self.config.health.min_requests, s.openings)
                openings = {t: b.openings for t, b in inputs.breakers.items()}
                return HealthActorState(judged=judged, report=report, openings=openings), \
                    [_Judged(s.report.status, report, SignalValues(values, summary), self.to_alerts)]
        raise TypeError(f"health cannot handle {type(msg).__name__}")

    def wakeup(self, s: HealthActorState) -> float:
        if s.dirty:
            return -math.inf
        return min(s.report.at + EVAL_EVERY_S,
                   health_rules.wakeup(s.judged.rules, health_rules.limits(self.config)))

    @staticmethod
    def parked(s: HealthActorState) -> tuple:
        return ()

    @staticmethod
    def undelivered(reply: object, value: object) -> None:
        return None
