"""Whole-state values of each actor, as callers and the health actor see them."""

from __future__ import annotations

from typing import Any, Literal

from messages.base import Message

BreakerPhase = Literal["closed", "open", "half_open"]


class BreakerSnapshot(Message):
    tier: str
    state: BreakerPhase
    enabled: bool
    forced: bool                 # held open by force_open() until reset()
    epoch: int                   # changes on every transition
    failures_in_window: int
    failure_threshold: int
    recovery_timeout_s: float
    monitoring_period_s: float
    changed_at: float            # trio.current_time() at the last transition
    time_in_state_s: float
    retry_after_s: float         # 0 unless open
    trials_in_flight: int
    calls: int
    successes: int
    failures: int
    ignored: int
    rejections: int
    openings: int
    restarts: int = 0
    fleet_shared: bool = False   # recovery shared with the fleet: one instance probes
    awaiting_probe: bool = False # recovery due; waiting for the fleet's prober (or the lease)


class PoolSnapshot(Message):
    """The database connections that go with the admission slots."""

    idle: int
    opened: int
    connects: int
    connect_failures: int
    discarded: int
    reused: int
    backoff_s: float
    idle_closed: int = 0   # closed after queue.max_idle_s beyond queue.min_idle


class QueueSnapshot(Message):
    max_concurrent: int
    max_queue_size: int
    in_flight: int
    free: int
    depth: int
    depth_by_priority: dict[str, int]
    oldest_wait_s: float
    admitted: int
    rejected: int
    displaced: int
    timed_out: int
    cancelled: int
    cleared: int
    pool: PoolSnapshot | None = None
    restarts: int = 0
    configured_max_concurrent: int | None = None  # set while `max_concurrent` is reduced (set_limit)


class PoolCheck(Message):
    """What `mon.queue.health_check()` found: idle connections replaced, then one probe."""

    replaced: int                # closed and proven replaceable: 0 when the probe failed
    healthy: bool
    probe_latency_s: float
    closed: int = 0              # idle connections closed
    error: str | None = None     # the probe's exception class, when it failed


class PolicyStats(Message):
    limit: int
    window_s: float
    allowed: int
    rejected: int
    keys: int


class LimiterSnapshot(Message):
    enabled: bool
    keys: int
    max_keys: int
    evictions: int
    policies: dict[str, PolicyStats]
    restarts: int = 0


class ActorStatus(Message):
    name: str
    restarts: int
    last_restart_at: float | None
    running: bool


class SystemSnapshot(Message):
    breakers: dict[str, BreakerSnapshot]
    queue: QueueSnapshot
    limiter: LimiterSnapshot
    actors: dict[str, ActorStatus]


class SystemStatistics(SystemSnapshot):
    """`mon.statistics()`: every handle's last published state, read without a round trip.

    `metrics` is the metrics actor's periodic summary (None before the first; no per-route
    series), `health` the health actor's latest report (a `HealthReport`)."""

    metrics: Any = None
    health: Any = None
