"""The database monitor's messages: its snapshot, its events, and its own commands.

`DatabaseMetrics` mirrors the spec's `ConnectionMetrics` (isHealthy,
responseTime, connectionCount, usagePercentage, lastChecked, error) and adds
what an operator needs to read those numbers. Measurements the last probe
could not take are None, never a made-up 0.

Events are transitions only: `ThresholdViolated` when a threshold starts being
exceeded and `ThresholdCleared` when it stops (no repeat while it stays
exceeded); `DatabaseDown` / `DatabaseUp` when probes start failing or succeed
again. Threshold names are the spec's: "maxResponseTime",
"maxUsagePercentage", "maxConnectionCount".
"""

from __future__ import annotations

from typing import Any

from messages.base import Message


class DatabaseMetrics(Message):
    is_healthy: bool
    response_time_ms: float | None      # round trip of `SELECT 1` on the monitor's connection
    connection_count: int | None        # client backends in pg_stat_activity, in connection_scope
    usage_percentage: float | None      # connection_count / connection_limit * 100
    last_checked: str | None            # wall clock, ISO 8601 UTC, when the last probe ended
    checked_at: float | None            # trio.current_time() of the same instant
    error: str | None                   # why the last probe failed: "ClassName: message"
    max_connections: int | None         # the server's setting (None until first connected)
    connection_limit: int               # min(max_connection_count, max_connections - reserved)
    probes: int
    failures: int
    consecutive_failures: int
    violations: tuple[str, ...]         # thresholds exceeded as last measured
    connection_scope: str = "server"    # what connection_count counts: server | database | role
    connections_by_scope: dict[str, int] | None = None  # the count in every scope, as last measured
    monitor_connections: int = 0        # the monitor's own connection (1 while it holds one)


class ThresholdViolated(Message):
    name: str
    value: float
    threshold: float
    at: float


class ThresholdCleared(Message):
    name: str
    value: float
    threshold: float
    at: float


class DatabaseDown(Message):
    error: str
    at: float


class DatabaseUp(Message):
    at: float


# --- the monitor's own traffic (core <-> prober <-> callers) -------------------------------


class CheckNow(Message):
    """Probe now (or join the probe in flight) and answer with the fresh metrics."""

    reply: Any


class ProbeRequested(Message):
    """Core -> prober: measure once; answer with a ProbeResult carrying the same seq."""

    seq: int


class ProbeResult(Message):
    """Prober -> core: one measurement, or why it failed."""

    seq: int
    ok: bool
    at: float                            # trio.current_time() when the probe ended
    wall: str | None                     # the same instant, ISO 8601 UTC
    connected: bool                      # the prober still holds a usable connection
    response_time_ms: float | None = None
    connection_count: int | None = None  # server-wide (when connections_by_scope is None)
    connections_by_scope: dict[str, int] | None = None
    max_connections: int | None = None
    reserved_connections: int | None = None
    error: str | None = None


class ViolationsObserved(Message):
    """Core -> shell: a probe measured these violations; the shell runs on_violation callbacks."""

    names: tuple[str, ...]
    metrics: DatabaseMetrics
