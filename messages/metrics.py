"""What the metrics actor is told, and the snapshot it answers with.

Durations are in seconds; `at` is a monotonic instant (`trio.current_time()`).
What counts as an error, how windows are cut into buckets and how rates are
computed is documented once, in `actors.metrics`.
"""

from __future__ import annotations

from typing import Any, Literal

from messages.base import Message
from messages.outcome import Outcome

# The outcomes the kernel reports (`messages.outcome.Outcome`'s values). `outcome` stays a plain
# `str` so that a new outcome reaches the metrics (counted as an error) instead of failing to decode.
OUTCOMES = tuple(Outcome)


class Observation(Message, kw_only=True):
    """One finished HTTP request or guarded call: its outcome and how long it took.

    (`kw_only=True` again here: msgspec applies it per class, and `at` follows a default.)
    """

    source: Literal["http", "call"]
    route: str | None            # HTTP route template, e.g. "GET /api/animals"; None for calls
    tier: str | None             # breaker tier; None for plain HTTP
    outcome: str                 # an Outcome value
    status: int | None           # HTTP status when source == "http"
    duration_s: float
    queue_wait_s: float | None = None
    rated: bool = True           # False: in no error rate (health's own answers)
    priority: int | None = None  # a guarded call's admission priority
    stale: bool = False          # an HTTP answer served from a fallback (`X-Triage-Stale`)
    at: float


class Observations(Message):
    """Many observations at once, as tuples in `Observation`'s field order (without `at`).

    The hot path appends a tuple to the metrics mailbox's batch instead of building a
    message per call; the mailbox hands the batch over in one message.
    """

    items: list[tuple]
    # Guarded calls that ended well (`Mailbox.tell_call`): (tier, priority) -> [duration, wait,
    # duration, wait, ...].
    calls: dict[Any, list[float]] = {}


class Count(Message):
    """A counted event without a duration."""

    what: Literal["breaker_activation", "rate_limit_violation"]
    label: str                   # the tier, or the rate-limit policy
    at: float


class Percentiles(Message):
    """Seconds, within 1 % relative error; None when the window holds no value."""

    p50: float | None
    p95: float | None
    p99: float | None
    count: int


class WindowStats(Message):
    """One rolling window of one series.

    `window_s` is the history this window actually covers at the snapshot's
    instant (whole buckets, never before the actor started, at least 1 s), so
    `rate_per_s == requests / window_s`. Error rates are fractions of the requests
    they rate, `requests - excluded` (0.0 when there are none): `excluded` counts
    rate-limit refusals and health's own answers, which are in no error rate.
    """

    window_s: float
    requests: int
    rate_per_s: float
    errors: int
    error_rate: float
    server_errors: int
    server_error_rate: float
    latency: Percentiles
    queue_wait: Percentiles
    excluded: int = 0
    stale: int = 0               # answers served from a fallback: not errors, not fresh either


class SeriesStats(Message):
    name: str
    windows: dict[str, WindowStats]  # keys "1m", "5m", "1h"


class HistogramSeries(Message):
    """One label set's latency since start: cumulative counts per bucket bound (the last one
    +Inf, so `buckets[-1] == count`), the sum of the values in seconds, and their count."""

    labels: tuple[str, ...]
    buckets: tuple[int, ...]
    sum: float
    count: int


class TotalsSnapshot(Message):
    """Counts since start, for Prometheus (`actors.metrics_totals`).

    `http` labels: (route template, method, status, outcome); `calls`: (tier, outcome);
    `transitions`: (tier, from state, to state, count); `queue`: guarded calls' admission
    decisions (priority, "admitted" | "queue_full" | "queue_timeout", count)."""

    buckets_s: tuple[float, ...]
    http: list[HistogramSeries]
    calls: list[HistogramSeries]
    transitions: list[tuple[str, str, str, int]]
    queue: list[tuple[str, str, int]] = []   # (priority name, decision, count)


class MetricsSnapshot(Message):
    overall: SeriesStats
    routes: dict[str, SeriesStats]
    tiers: dict[str, SeriesStats]
    breaker_activations_per_hour: dict[str, int]
    rate_limit_violations_per_hour: dict[str, int]
    at: float
    totals: TotalsSnapshot | None = None  # only when asked for (`GetMetrics(totals=True)`)
    recent: WindowStats | None = None     # the overall series over the last 10 s (the dashboard)


class GetMetrics(Message):
    """Ask for a snapshot; `routes=False` skips the per-route series (cheaper), `totals=True` adds
    the counts since start (`TotalsSnapshot`)."""

    reply: Any
    routes: bool = True
    totals: bool = False         # the counts since start, for /metrics
