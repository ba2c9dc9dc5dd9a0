"""The database monitor's pure core: it schedules probes and judges their results.

(The prober and the `DatabaseMonitor` shell are in `actors.monitor`.)

Theory of operation. The core (`step`) owns the schedule and every verdict;
it does no I/O and knows time only through `now`. When a probe is due (every
`interval_s`, start to start) or a caller asks `check_now`, it emits
`ProbeRequested(seq)`; the shell hands that to the prober task, which measures
with its own `PgConnection` -- outside the admission queue, so a full queue
never hides the database's health -- and tells the core a `ProbeResult`.
From it the core builds the next `DatabaseMetrics`, emits transition events
(`ThresholdViolated` / `ThresholdCleared`, `DatabaseDown` / `DatabaseUp`),
answers the callers waiting on that probe, and asks the shell to run the
`on_violation` callbacks.

* One probe at a time: a `check_now` during a probe joins it.
* Each probe (connect if needed, `SELECT 1`, count) is bounded by
  `probe_timeout_s` (default min(5 s, interval)), plus at most a quarter of
  it to cancel a query on the server, so a dead or hung database yields a
  failed probe, not silence. A result that never comes (a bug) is written
  off by a watchdog; a late one is ignored.
* While the prober has no connection, on-demand probes are throttled by an
  exponential reconnect backoff (0.5 s doubling, capped at the interval) and
  answered with the current metrics; scheduled probes always try.
* `connection_count` counts client backends in `pg_stat_activity` (the
  monitor's own included) in the operator's `connection_scope`: the whole
  server (default: `max_connections` and a hosted free tier's limit are
  server-wide), the current database, or the current role. One query
  (`COUNT_SQL`) measures all three; the report shows them side by side.
  Usage % is the scoped count against `connection_limit` =
  min(max_connection_count, max_connections - superuser_reserved_connections
  - reserved_connections), the last two read once per connection.
* A failed probe measures nothing: its numbers are None, and violations keep
  their last measured verdict (unknown is neither violated nor cleared).
* Errors are "ClassName: message" with the DSN and password scrubbed.
"""

from __future__ import annotations

import math

import msgspec
from msgspec.structs import replace

from actors.runtime.actor import Emit, Send
from messages.commands import GetSnapshot, Tick
from messages.config import Thresholds
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

MonitorIn = Tick | CheckNow | ProbeResult | GetSnapshot

SCOPES = ("server", "database", "role")
# Client backends per scope, in one round trip (the order of SCOPES).
COUNT_SQL = (
    "SELECT count(*)::int,"
    " (count(*) FILTER (WHERE datname = current_database()))::int,"
    " (count(*) FILTER (WHERE usename = session_user))::int"
    " FROM pg_stat_activity WHERE backend_type = 'client backend'")

RECONNECT_BACKOFF_S = 0.5
# Beyond its own timeout, how long a probe may take to clean up before the watchdog gives up.
WATCHDOG_GRACE_S = 2.0

# (name, DatabaseMetrics field, Thresholds field): a threshold is violated when value > limit.
CHECKS = (
    ("maxResponseTime", "response_time_ms", "max_response_time_ms"),
    ("maxUsagePercentage", "usage_percentage", "max_usage_percentage"),
    ("maxConnectionCount", "connection_count", "max_connection_count"),
)


class MonitorSettings(msgspec.Struct, frozen=True, kw_only=True):
    interval_s: float
    probe_timeout_s: float
    thresholds: Thresholds
    connection_scope: str = "server"


class MonitorState(msgspec.Struct, frozen=True, kw_only=True):
    settings: MonitorSettings
    metrics: DatabaseMetrics
    seq: int = 0
    probing: bool = False
    probe_deadline: float = math.inf    # watchdog for the probe in flight
    next_probe_at: float = 0.0
    reconnect_at: float = 0.0           # no on-demand probe before this while disconnected
    connected: bool = False
    up: bool | None = None              # None until the first probe
    waiters: tuple = ()                 # replies of check_now callers

    @classmethod
    def initial(cls, settings: MonitorSettings, *, now: float) -> MonitorState:
        return cls(settings=settings, metrics=initial_metrics(settings.thresholds, settings.connection_scope),
                   next_probe_at=now)


def initial_metrics(thresholds: Thresholds, scope: str = "server") -> DatabaseMetrics:
    return DatabaseMetrics(connection_scope=scope,
        is_healthy=False, response_time_ms=None, connection_count=None, usage_percentage=None,
        last_checked=None, checked_at=None, error="not checked yet", max_connections=None,
        connection_limit=thresholds.max_connection_count, probes=0, failures=0,
        consecutive_failures=0, violations=())


def connection_limit(max_count: int, max_connections: int | None, reserved: int | None) -> int:
    """The connections this application may use: the configured cap or the server's, if lower."""
    if max_connections is None:
        return max_count
    return max(1, min(max_count, max_connections - (reserved or 0)))


def usage_percentage(count: int, limit: int) -> float:
    return round(count / limit * 100.0, 2)


def _start_probe(s: MonitorState, now: float) -> tuple[MonitorState, list]:
    cfg = s.settings
    s = replace(s, seq=s.seq + 1, probing=True, next_probe_at=now + cfg.interval_s,
                probe_deadline=now + cfg.probe_timeout_s + WATCHDOG_GRACE_S)
    return s, [Emit(ProbeRequested(seq=s.seq))]


def _tick(s: MonitorState, now: float) -> tuple[MonitorState, list]:
    if s.probing and now >= s.probe_deadline:
        lost = ProbeResult(seq=s.seq, ok=False, at=now, wall=None, connected=False,
                           error="ProbeLost: the Database probe did not report in time")
        return _result(s, lost, now)
    if not s.probing and now >= s.next_probe_at:
        return _start_probe(s, now)
    return s, []


def _check_now(s: MonitorState, msg: CheckNow, now: float) -> tuple[MonitorState, list]:
    if not s.probing and not s.connected and now < s.reconnect_at:
        return s, [Send(msg.reply, s.metrics)]      # reconnect backoff: don't hammer a dead server
    s = replace(s, waiters=(*s.waiters, msg.reply))
    return (s, []) if s.probing else _start_probe(s, now)


def _verdicts(s: MonitorState, m: DatabaseMetrics, now: float) -> tuple[tuple[str, ...], list]:
    th, old = s.settings.thresholds, s.metrics.violations
    new = tuple(name for name, field, limit in CHECKS if getattr(m, field) > getattr(th, limit))
    events = []
    for name, field, limit in CHECKS:
        if (name in new) != (name in old):
            kind = ThresholdViolated if name in new else ThresholdCleared
            events.append(Emit(kind(name=name, value=float(getattr(m, field)),
                                    threshold=float(getattr(th, limit)), at=now)))
    return new, events


def scoped_count(r: ProbeResult, scope: str) -> int:
    """The probe's count in `scope` (a prober that measured only the server gives that)."""
    by_scope = r.connections_by_scope
    return by_scope[scope] if by_scope is not None and scope in by_scope else r.connection_count


def _measured(s: MonitorState, r: ProbeResult) -> tuple[DatabaseMetrics, list]:
    limit = connection_limit(s.settings.thresholds.max_connection_count, r.max_connections,
                             r.reserved_connections)
    count = scoped_count(r, s.settings.connection_scope)
    m = replace(s.metrics, is_healthy=True, response_time_ms=r.response_time_ms,
                connection_count=count, error=None, max_connections=r.max_connections,
                connection_limit=limit, usage_percentage=usage_percentage(count, limit),
                consecutive_failures=0, connections_by_scope=r.connections_by_scope,
                monitor_connections=int(r.connected))
    violations, events = _verdicts(s, m, r.at)
    if s.up is False:
        events.append(Emit(DatabaseUp(at=r.at)))
    return replace(m, violations=violations), events


def _failed(s: MonitorState, r: ProbeResult) -> tuple[DatabaseMetrics, list]:
    error = r.error or "probe failed"
    m = replace(s.metrics, is_healthy=False, response_time_ms=None, connection_count=None,
                usage_percentage=None, error=error, connections_by_scope=None,
                monitor_connections=int(r.connected), failures=s.metrics.failures + 1,
                consecutive_failures=s.metrics.consecutive_failures + 1)
    return m, [] if s.up is False else [Emit(DatabaseDown(error=error, at=r.at))]


def _reconnect_at(s: MonitorState, m: DatabaseMetrics, r: ProbeResult, now: float) -> float:
    if r.connected or r.ok:
        return 0.0
    backoff = RECONNECT_BACKOFF_S * 2 ** min(m.consecutive_failures - 1, 30)
    return now + min(backoff, s.settings.interval_s)


def _result(s: MonitorState, r: ProbeResult, now: float) -> tuple[MonitorState, list]:
    if not s.probing or r.seq != s.seq:
        return s, []                                  # written off by the watchdog already
    m, effects = _measured(s, r) if r.ok else _failed(s, r)
    m = replace(m, probes=m.probes + 1, checked_at=r.at, last_checked=r.wall or m.last_checked)
    effects += [Send(w, m) for w in s.waiters]
    if r.ok and m.violations:
        effects.append(Emit(ViolationsObserved(names=m.violations, metrics=m)))
    s = replace(s, metrics=m, probing=False, probe_deadline=math.inf, waiters=(), up=r.ok,
                connected=r.connected, reconnect_at=_reconnect_at(s, m, r, now))
    return s, effects


def step(s: MonitorState, msg: MonitorIn, now: float) -> tuple[MonitorState, list]:
    """No I/O, no trio: the whole behaviour of the database monitor."""
    match msg:
        case ProbeResult():
            return _result(s, msg, now)
        case Tick():
            return _tick(s, now)
        case CheckNow():
            return _check_now(s, msg, now)
        case GetSnapshot():
            return s, [Send(msg.reply, s.metrics)]
    raise TypeError(f"monitor cannot handle {type(msg).__name__}")


class MonitorCore:
    """The core as the actor shell sees it."""

    name = "monitor"
    step = staticmethod(step)

    @staticmethod
    def wakeup(s: MonitorState) -> float:
        return s.probe_deadline if s.probing else s.next_probe_at

    @staticmethod
    def parked(s: MonitorState) -> tuple:
        return s.waiters

    @staticmethod
    def undelivered(reply: object, value: object) -> None:
        return None


