"""Metrics: request rates, error rates and latency percentiles over rolling windows — the pure core.

Theory of operation. Every finished HTTP request and guarded call arrives as an
`Observation`. The core files it under up to three *series*: the overall one,
its route's and its tier's. A series keeps one ring of time buckets per window:

    window  bucket  buckets  history it covers
    "10s"    2 s     5       more than 8 s, at most 10 s (the overall series only)
    "1m"    10 s     6       more than 50 s, at most 60 s
    "5m"    30 s    10       more than 4.5 min, at most 5 min
    "1h"     5 min  12       more than 55 min, at most 60 min

Buckets are aligned on multiples of their width on the monotonic clock, and a
window is its ring's open bucket plus the closed ones before it (resilience4j's
time-based sliding window). A value handled at instant `t` is therefore in a
window of bucket width `w` and `n` buckets at instant `now` exactly while
`floor(now / w) - floor(t / w) < n`: it leaves the 1m window at the first 10 s
boundary more than 50 s after `t` (so between 50 s and 60 s after it, 60 s
included), the 5m one 4.5 to 5 min after it, the 1h one 55 to 60 min after it. The core buckets a
value by the instant it handles the message (`now`), not by `Observation.at`:
a value is never back-dated into a closed bucket.

The 10 s window is the dashboard's: only the overall series has it (a 2 s ring in front of
its 10 s one), and it leaves the snapshot as `MetricsSnapshot.recent`, beside the windows
everything else reads ("1m", "5m", "1h"), so health and /metrics are as they were.

A value is recorded once, into its series' finest open bucket (2 s for the overall series,
10 s for the others). When a bucket closes it is
merged ("folded") into the open bucket of the next coarser ring, so a coarse
open bucket holds only closed finer buckets, and a window reads as its ring's
buckets plus the still-open finer ones: every value is in exactly one of them.
A fold adds the closing bucket's counts at once but owes its sketch merge: the merges a
rotation owes (a few hundred at the route cap) are paid MERGES_PER_STEP a step, the actor
waking every SETTLE_EVERY_S until none is owed, and a series pays all its own before it is
read, so every read is exact and no step stalls the loop for a whole rotation.
The merge of a ring's closed buckets is cached until the ring next rotates, so
a read costs at most four sketch merges per window however many buckets there
are, plus that cached merge once per rotation.
Rings rotate on any message whose `now` crosses a 2 s boundary (a busy actor may never see a
`Tick`) and on the `Tick` at each boundary; the route and tier series only at 10 s ones.

Definitions.
- error: any outcome other than "ok", "rate_limited", "cancelled" and
  "shutting_down" (so "error", "circuit_open", "queue_full", "queue_timeout",
  and any outcome this module does not know yet), or an HTTP status >= 500.
  A rate-limit refusal is the client's doing, a cancellation the caller's, a
  shutdown refusal the operator's: none of them is the service failing —
  except that a 5xx answer always counts, whatever the outcome (but see below).
- left out of the error rates: outcome "rate_limited" (a refusal is the
  client's doing) and observations with `rated=False` (health's own answers:
  their 503 reports the status, it is not a failure), whatever the status.
  Health's answer is a flag, not an outcome: it did end "ok", and an outcome
  says how a call ended, not whether it should be rated. They are neither errors
  nor in the denominator (`excluded`), but they are requests (rate, latency).
- server error (5xx): an observation with status >= 500 that is not left out.
- latency: `duration_s` of every observation, whatever its outcome; queue
  wait: `queue_wait_s` of the observations that carry one. Durations are
  clamped to [0, 1 day]; NaN counts as 0 (one odd measurement must not crash
  the actor).
- error_rate = errors / (requests - excluded); the same for server_error_rate.
- rate_per_s = requests / window_s, where window_s is the history the window
  covers at that instant: from the start of its oldest bucket, or from the
  actor's start if later, to `now`, and at least 1 s.
- overall: the observations whose source is in `overall_sources` (default
  HTTP only: a request that makes a guarded call reports twice, once as
  "http" and once as "call", and must be counted once). Calls show per tier.
- per hour: breaker activations and rate-limit violations counted in the 1h
  window (same buckets, same semantics).

Percentiles come from DDSketch with 1 % relative accuracy: a reported P95 is
within 1 % of the exact value at rank floor(0.95 * (count - 1)). Each sketch is
capped at BIN_LIMIT bins, enough for values spanning a ratio of ~7e8 (1 µs to
10 min); past that its lowest bins are merged, so P50 would lose accuracy
before P99 does.

Bounded memory. At most `max_routes` routes, `max_tiers` tiers and `max_labels`
labels per counted event get their own series; the rest share "other". A
series with nothing left in any window is dropped, freeing its place. A series
holds at most 28 buckets and 3 cached merges (the overall one 33 and 4), each with at most two sketches of
at most BIN_LIMIT bins, and at most PENDING_VALUES values on their way into them.

Counts since start. Beside the windows, every HTTP observation and guarded call
is also counted into `actors.metrics_totals` (latency histograms by route,
method, status and outcome, and by tier and outcome; breaker transitions;
admission decisions per priority): counters that only grow, for Prometheus.
They are copied into a snapshot only when asked (`GetMetrics(totals=True)`).

Mutable state, on purpose. A sketch is a mutable object whose copy costs
O(bins), so copying sketches on every step is out of the question: `step`
updates `MetricsState` in place and returns the same object. The state is owned
by the actor alone; everything that leaves the core is a frozen snapshot value.
"""

from __future__ import annotations

import math
from collections import deque

from ddsketch import LogCollapsingLowestDenseDDSketch as Sketch

from actors.metrics_totals import Totals
from actors.runtime.actor import Send
from actors.sketch import BIN_LIMIT as BIN_LIMIT  # the sketches' bound, named in the doc above
from actors.sketch import add_all, new_sketch
from messages.commands import GetSnapshot, Tick
from messages.events import BreakerTransition
from messages.metrics import (
    Count,
    GetMetrics,
    MetricsSnapshot,
    Observation,
    Observations,
    Percentiles,
    SeriesStats,
    WindowStats,
)
from messages.outcome import Outcome

MetricsIn = Observation | Observations | Count | BreakerTransition | GetSnapshot | GetMetrics | Tick

WINDOWS = (("1m", 10.0, 6), ("5m", 30.0, 10), ("1h", 300.0, 12))  # (name, bucket width s, buckets)
FINE = ("10s", 2.0, 5)   # the overall series' extra window, in front of WINDOWS (see the module doc)
NOT_ERRORS = frozenset({Outcome.OK, Outcome.RATE_LIMITED, Outcome.CANCELLED, Outcome.SHUTTING_DOWN})
EXCLUDED = frozenset({Outcome.RATE_LIMITED})   # in no error rate (see the module doc)
OVERALL = "all"
OTHER = "other"
MAX_VALUE_S = 86_400.0
_TICK_S = FINE[1]
_COARSE_S = WINDOWS[0][1]
_HOUR_WIDTH, _HOUR_BUCKETS = WINDOWS[-1][1], WINDOWS[-1][2]
PENDING_VALUES = 128     # a bucket's recorded values (two a call) held before they go into its sketches
MERGES_PER_STEP = 8      # sketch merges a step pays of what rotations owe (~0.4 ms)
SETTLE_EVERY_S = 0.002   # while merges are owed, the actor wakes this often to pay them
_NO_VALUES = Percentiles(p50=None, p95=None, p99=None, count=0)


_sketch = new_sketch


def _merged(into: Sketch | None, other: Sketch | None) -> Sketch | None:
    if other is None:
        return into
    if into is None:
        into = _sketch()
    into.merge(other)
    return into


def _clamp(value: float) -> float:
    if 0.0 < value < MAX_VALUE_S:
        return value
    return MAX_VALUE_S if value >= MAX_VALUE_S else 0.0


def _clamped(values: list[float]) -> list[float]:
    """`_clamp` of each value: the list itself when all are in range (the usual case, checked
    in C: no NaN, as the sum shows; no negative, none at the cap; 0.0 clamps to itself)."""
    if values:
        total = sum(values)
        if total == total and 0.0 <= min(values) and max(values) < MAX_VALUE_S:
            return values
    top = MAX_VALUE_S  # `_clamp`, inline
    return [v if 0.0 < v < top else (top if v >= top else 0.0) for v in values]


class _Bucket:
    """Counters and sketches of one time slice; a sketch appears with its first value.

    Values reach the sketches in bulk: `record` keeps them in `_pending` (at most
    PENDING_VALUES of them) and they are added, in order, when that fills or when a sketch
    is read, so what `latency` and `queue_wait` return always holds every value recorded.
    """

    __slots__ = ("idx", "requests", "errors", "server_errors", "excluded", "stale", "_latency",
                 "_queue_wait", "_pending")

    def __init__(self, idx: int) -> None:
        self.idx = idx
        self.requests = self.errors = self.server_errors = self.excluded = self.stale = 0
        self._latency: Sketch | None = None
        self._queue_wait: Sketch | None = None
        self._pending: list[float | None] = []  # duration, queue wait (or None), duration, ...

    def record(self, duration: float, queue_wait: float | None, error: bool, server_error: bool,
               excluded: bool = False) -> None:
        self.requests += 1
        if excluded:
            self.excluded += 1
        if error:
            self.errors += 1
        if server_error:
            self.server_errors += 1
        pending = self._pending
        pending.append(duration)
        pending.append(queue_wait)
        if len(pending) >= PENDING_VALUES:
            self._add_pending()

    def _add_pending(self) -> None:
        pending, self._pending = self._pending, []
        if self._latency is None:
            self._latency = _sketch()
        add_all(self._latency, pending[0::2])  # type: ignore[arg-type]
        waits = [w for w in pending[1::2] if w is not None]
        if waits:
            if self._queue_wait is None:
                self._queue_wait = _sketch()
            add_all(self._queue_wait, waits)

    @property
    def latency(self) -> Sketch | None:
        if self._pending:
            self._add_pending()
        return self._latency

    @property
    def queue_wait(self) -> Sketch | None:
        if self._pending:
            self._add_pending()
        return self._queue_wait

    def record_many(self, durations: list[float], waits: list[float] | None, error: bool,
                    server_error: bool, excluded: bool) -> None:
        """`record` for each duration (and queue wait, if `waits`) of one verdict."""
        n = len(durations)
        self.requests += n
        if excluded:
            self.excluded += n
        if error:
            self.errors += n
        if server_error:
            self.server_errors += n
        if self._pending:  # the values recorded one by one first: every value, in order
            self._add_pending()
        if self._latency is None:
            self._latency = _sketch()
        add_all(self._latency, durations)
        if waits is not None:
            if self._queue_wait is None:
                self._queue_wait = _sketch()
            add_all(self._queue_wait, waits)

    def absorb(self, other: _Bucket) -> None:
        self.absorb_counts(other)
        self.absorb_sketches(other)

    def absorb_counts(self, other: _Bucket) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.server_errors += other.server_errors
        self.excluded += other.excluded
        self.stale += other.stale

    def absorb_sketches(self, other: _Bucket) -> None:
        latency, queue_wait = _merged(self.latency, other.latency), _merged(self.queue_wait, other.queue_wait)
        self._latency, self._queue_wait = latency, queue_wait


class _Ring:
    """One window: its open bucket and the non-empty closed buckets still inside it, oldest first."""

    __slots__ = ("width", "size", "open", "closed", "_closed_total")

    def __init__(self, width: float, size: int, now: float) -> None:
        self.width, self.size = width, size
        self.open = _Bucket(int(now // width))
        self.closed: deque[_Bucket] = deque()
        self._closed_total: _Bucket | None = None

    def rotate(self, idx: int) -> None:
        if self.open.requests:
            self.closed.append(self.open)
        self.open = _Bucket(idx)
        while self.closed and self.closed[0].idx <= idx - self.size:
            self.closed.popleft()
        self._closed_total = None

    def closed_total(self) -> _Bucket:
        """The closed buckets merged, computed once per rotation. Read-only."""
        if self._closed_total is None:
            if len(self.closed) == 1:
                self._closed_total = self.closed[0]
            else:
                total = self._closed_total = _Bucket(-1)
                for bucket in self.closed:
                    total.absorb(bucket)
        return self._closed_total

    def empty(self) -> bool:
        return not self.closed and not self.open.requests


class _Series:
    """One route, tier or the overall aggregate: a ring per window, finest first.

    `fine`: a FINE ring in front (the overall series); `offset` is then 1, so WINDOWS[k]
    is `rings[k + offset]` in every series."""

    __slots__ = ("rings", "offset", "pending")

    def __init__(self, now: float, fine: bool = False) -> None:
        self.offset = 1 if fine else 0
        self.rings = tuple(_Ring(width, size, now) for _, width, size in ((FINE,) if fine else ()) + WINDOWS)
        self.pending: deque[tuple[_Bucket, _Bucket]] = deque()  # (into, from): sketch merges owed

    def advance(self, now: float) -> None:
        """Rotate to `now`. A closing bucket's counts fold at once, its sketches later (`settle`)."""
        rings = self.rings
        for k, ring in enumerate(rings):
            idx = int(now // ring.width)
            if idx <= ring.open.idx:
                return  # a coarser ring's boundaries are all boundaries of this one
            if k + 1 < len(rings) and ring.open.requests:
                rings[k + 1].open.absorb_counts(ring.open)
                self.pending.append((rings[k + 1].open, ring.open))
            ring.rotate(idx)

    def settle(self, budget: float = math.inf) -> int:
        """Do up to `budget` of the sketch merges owed, oldest first (a merge into a bucket
        precedes that bucket's own); how many were done."""
        done = 0
        while self.pending and done < budget:
            into, source = self.pending.popleft()
            into.absorb_sketches(source)
            done += 1
        return done

    def empty(self) -> bool:
        return all(ring.empty() for ring in self.rings)

    def window(self, k: int) -> list[_Bucket]:
        """Disjoint buckets that together hold exactly window k's values."""
        self.settle()
        return [self.rings[k].closed_total(), *(ring.open for ring in self.rings[:k + 1])]


class _Tally:
    """Counts of one label per bucket of the 1h window, oldest first."""

    __slots__ = ("buckets",)

    def __init__(self) -> None:
        self.buckets: deque[list[int]] = deque()

    def add(self, now: float) -> None:
        idx = int(now // _HOUR_WIDTH)
        if self.buckets and self.buckets[-1][0] == idx:
            self.buckets[-1][1] += 1
        else:
            self.buckets.append([idx, 1])

    def advance(self, now: float) -> None:
        horizon = int(now // _HOUR_WIDTH) - _HOUR_BUCKETS
        while self.buckets and self.buckets[0][0] <= horizon:
            self.buckets.popleft()

    def empty(self) -> bool:
        return not self.buckets

    def total(self) -> int:
        return sum(n for _, n in self.buckets)


class MetricsState:
    """Everything the metrics actor knows. Mutable and owned by the actor alone (see above)."""

    def __init__(self, *, now: float, max_routes: int = 200, max_tiers: int = 32,
                 max_labels: int = 64, overall_sources: tuple[str, ...] = ("http",)) -> None:
        self.started_at = self.now = now
        self.tick_idx = int(now // _TICK_S)
        self.coarse_idx = int(now // _COARSE_S)
        self.max_routes, self.max_tiers, self.max_labels = max_routes, max_tiers, max_labels
        self.overall_sources = frozenset(overall_sources)
        self.overall = _Series(now, fine=True)
        self.routes: dict[str, _Series] = {}
        self.tiers: dict[str, _Series] = {}
        self.counts: dict[str, dict[str, _Tally]] = {
            "breaker_activation": {}, "rate_limit_violation": {}}
        self.totals = Totals(max_routes, max_tiers)  # since start, for Prometheus
        self.unsettled: dict[int, _Series] = {}      # series owing sketch merges, oldest first

    @classmethod
    def initial(cls, *, now: float, **limits) -> MetricsState:
        return cls(now=now, **limits)


def _slot(table: dict, key: str, cap: int) -> str:
    if key in table or len(table) - (OTHER in table) < cap:
        return key
    return OTHER


def _series(s: MetricsState, table: dict[str, _Series], key: str, cap: int) -> _Series:
    series = table.get(key)  # the hot path: a series that exists, one lookup
    if series is None:
        key = _slot(table, key, cap)
        series = table.get(key)
        if series is None:
            series = table[key] = _Series(s.now)
    return series


def _advance(s: MetricsState, now: float) -> None:
    """Rotate every ring to `now`; drop what has left every window. Time never goes back."""
    if now <= s.now:
        return
    s.now = now
    tick_idx = int(now // _TICK_S)
    if tick_idx == s.tick_idx:
        return
    s.tick_idx = tick_idx
    _rotate(s, s.overall, now)
    coarse_idx = int(now // _COARSE_S)
    if coarse_idx == s.coarse_idx:
        return  # a 2 s boundary only: no other series has a ring that rotates there
    s.coarse_idx = coarse_idx
    for table in (s.routes, s.tiers):
        for key in list(table):
            _rotate(s, table[key], now)
            if table[key].empty():
                del table[key]
    for table in s.counts.values():
        for key in list(table):
            table[key].advance(now)
            if table[key].empty():
                del table[key]


def _rotate(s: MetricsState, series: _Series, now: float) -> None:
    series.advance(now)
    if series.pending:
        s.unsettled[id(series)] = series


def _settle_some(s: MetricsState, budget: int = MERGES_PER_STEP) -> None:
    """Pay off a few of the sketch merges rotations left owing: a rotation at the route cap
    owes ~200-600 merges of ~50 µs each, which done at once would stall the loop for 10-50 ms."""
    unsettled = s.unsettled
    while budget > 0 and unsettled:
        key = next(iter(unsettled))
        budget -= unsettled[key].settle(budget)
        if not unsettled[key].pending:
            del unsettled[key]


def _observe(s: MetricsState, o: Observation) -> None:
    _record(s, o.source, o.route, o.tier, o.outcome, o.status, o.duration_s, o.queue_wait_s, o.rated,
            o.priority, o.stale)


def _record(s: MetricsState, source: str, route: str | None, tier: str | None, outcome: str,
            status: int | None, duration_s: float, queue_wait_s: float | None, rated: bool = True,
            priority: int | None = None, stale: bool = False) -> None:
    excluded = not rated or outcome in EXCLUDED
    server_error = not excluded and status is not None and status >= 500
    error = server_error or outcome not in NOT_ERRORS
    # _clamp's test inline: the usual value needs no call.
    duration = duration_s if 0.0 <= duration_s < MAX_VALUE_S else _clamp(duration_s)
    wait = queue_wait_s if queue_wait_s is None or 0.0 <= queue_wait_s < MAX_VALUE_S else _clamp(queue_wait_s)
    if source in s.overall_sources:
        s.overall.rings[0].open.record(duration, wait, error, server_error, excluded)
        if stale:  # only the overall series counts fallbacks: the dashboard's error tile reads it
            s.overall.rings[0].open.stale += 1
    if route is not None:
        _series(s, s.routes, route, s.max_routes).rings[0].open.record(duration, wait, error, server_error,
                                                                       excluded)
        s.totals.request(route, status, outcome, duration)
    if tier is not None:
        series = s.tiers.get(tier) or _series(s, s.tiers, tier, s.max_tiers)
        series.rings[0].open.record(duration, wait, error, server_error, excluded)
        if source == "call":
            s.totals.call(tier, outcome, duration, priority, admitted=queue_wait_s is not None)


def _record_many(s: MetricsState, items: list, done: dict | None = None) -> None:
    """`Observations`, the hot path's batches: `_record` of each item. Guarded calls, the bulk,
    are folded by (tier, outcome, priority, admitted) first, so a batch costs one series and
    one totals look-up per label set, and each sketch one add per bin (`actors.sketch`).
    `done`: calls that ended well, already folded by (tier, priority) (`Mailbox.tell_call`)."""
    calls: dict[tuple, tuple[list, list]] = {}
    for (tier, priority), pairs in (done or {}).items():  # duration, wait, duration, wait, ...
        calls[(tier, Outcome.OK, priority, True)] = (pairs[0::2], pairs[1::2])
    for item in items:
        if item[0] == "call" and len(item) == 9 and item[1] is None and item[4] is None and item[7] is True:
            label = (item[2], item[3], item[8], item[6] is not None)
            group = calls.get(label)
            if group is None:
                group = calls[label] = ([], [])
            group[0].append(item[5])
            if label[3]:
                group[1].append(item[6])
        else:
            _record(s, *item)
    for (tier, outcome, priority, admitted), (durations, waits) in calls.items():
        _record_calls(s, tier, outcome, priority, durations, waits if admitted else None)


def _record_calls(s: MetricsState, tier: str | None, outcome: str, priority: int | None,
                  durations: list[float], waits: list[float] | None) -> None:
    """`_record` of guarded calls (source "call", rated, no route or status) of one label set."""
    excluded = outcome in EXCLUDED
    error = outcome not in NOT_ERRORS
    durations = _clamped(durations)
    if waits is not None and any(waits):  # all zero (every offered slot's): nothing to clamp
        waits = _clamped(waits)
    if "call" in s.overall_sources:
        s.overall.rings[0].open.record_many(durations, waits, error, False, excluded)
    if tier is not None:
        _series(s, s.tiers, tier, s.max_tiers).rings[0].open.record_many(durations, waits, error, False,
                                                                           excluded)
        s.totals.call_many(tier, outcome, durations, priority, admitted=waits is not None)


def _count(s: MetricsState, c: Count) -> None:
    table = s.counts[c.what]
    key = _slot(table, c.label, s.max_labels)
    tally = table.get(key)
    if tally is None:
        tally = table[key] = _Tally()
    tally.add(s.now)


def _percentiles(sketches: list[Sketch | None]) -> Percentiles:
    filled = [sk for sk in sketches if sk is not None and sk.count]
    if not filled:
        return _NO_VALUES
    sketch = filled[0]
    if len(filled) > 1:
        sketch = _sketch()
        for part in filled:
            sketch.merge(part)
    p50, p95, p99 = (float(sketch.get_quantile_value(q)) for q in (0.5, 0.95, 0.99))
    return Percentiles(p50=p50, p95=p95, p99=p99, count=round(sketch.count))


def _window_stats(s: MetricsState, series: _Series, k: int) -> WindowStats:
    ring = series.rings[k]
    parts = series.window(k)
    start = max((ring.open.idx - ring.size + 1) * ring.width, s.started_at)
    span = max(s.now - start, 1.0)
    requests = sum(b.requests for b in parts)
    errors = sum(b.errors for b in parts)
    server_errors = sum(b.server_errors for b in parts)
    excluded = sum(b.excluded for b in parts)
    rated = requests - excluded
    return WindowStats(
        window_s=span, requests=requests, rate_per_s=requests / span,
        errors=errors, error_rate=errors / rated if rated else 0.0,
        server_errors=server_errors,
        server_error_rate=server_errors / rated if rated else 0.0, excluded=excluded,
        stale=sum(b.stale for b in parts),
        latency=_percentiles([b.latency for b in parts]),
        queue_wait=_percentiles([b.queue_wait for b in parts]))


def _series_stats(s: MetricsState, name: str, series: _Series) -> SeriesStats:
    return SeriesStats(name=name, windows={
        window: _window_stats(s, series, k + series.offset) for k, (window, _, _) in enumerate(WINDOWS)})


def snapshot(s: MetricsState, now: float, routes: bool = True, totals: bool = False) -> MetricsSnapshot:
    """The whole state as a value. Rotates the rings to `now` first, as a `Tick` would.

    `routes=False` leaves the per-route series out: the periodic publication that feeds
    health needs only the overall and per-tier ones, and each series costs sketch merges.
    `totals=True` adds the counts since start (a copy of a few integers per label set).
    """
    _advance(s, now)
    return MetricsSnapshot(
        overall=_series_stats(s, OVERALL, s.overall),
        routes={name: _series_stats(s, name, series) for name, series in s.routes.items()} if routes else {},
        tiers={name: _series_stats(s, name, series) for name, series in s.tiers.items()},
        breaker_activations_per_hour={
            label: t.total() for label, t in s.counts["breaker_activation"].items()},
        rate_limit_violations_per_hour={
            label: t.total() for label, t in s.counts["rate_limit_violation"].items()},
        at=s.now, totals=s.totals.freeze() if totals else None, recent=_window_stats(s, s.overall, 0))


def step(s: MetricsState, msg: MetricsIn, now: float) -> tuple[MetricsState, list]:
    """No I/O, no trio. Updates `s` in place (see the module doc) and returns it."""
    _advance(s, now)
    if s.unsettled:
        _settle_some(s)
    match msg:
        case Observation():
            _observe(s, msg)
            return s, []
        case Observations():
            _record_many(s, msg.items, msg.calls)
            return s, []
        case Count():
            _count(s, msg)
            return s, []
        case BreakerTransition():
            s.totals.transition(msg.tier, msg.from_state, msg.to_state)
            return s, []
        case GetSnapshot():
            return s, [Send(msg.reply, snapshot(s, now))]
        case GetMetrics():
            return s, [Send(msg.reply, snapshot(s, now, routes=msg.routes, totals=msg.totals))]
        case Tick():
            return s, []
    raise TypeError(f"metrics cannot handle {type(msg).__name__}")


class MetricsCore:
    """The core as the shell sees it."""

    name = "metrics"
    step = staticmethod(step)

    @staticmethod
    def wakeup(s: MetricsState) -> float:
        """The next 2 s boundary, where the overall series' finest ring rotates; sooner
        while sketch merges are owed (each `Tick` pays a few)."""
        boundary = (s.tick_idx + 1) * _TICK_S
        return min(boundary, s.now + SETTLE_EVERY_S) if s.unsettled else boundary

    @staticmethod
    def parked(s: MetricsState) -> tuple:
        return ()

    @staticmethod
    def undelivered(reply: object, value: object) -> None:
        """A snapshot nobody took: nothing to give back."""
        return None
