"""Cumulative counts since start, for Prometheus: latency histograms and transition counters.

Theory of operation. The rolling windows of `actors.metrics` answer "how is it now"
for health and the dashboard; Prometheus wants the opposite shape: counters that
only grow, so that `rate()` and `histogram_quantile()` work over any range and
`sum by (le)` adds N instances together. `Totals` keeps, per label set, the
count of values in each latency bucket (non-cumulative here; `freeze` makes them
cumulative), their sum and their count:

    HTTP requests   (route template, method, status, outcome)
    guarded calls   (tier, outcome)
    breaker moves   (tier, from state, to state)    a count only
    admissions      (priority, decision)             a count only: "admitted", or the
                    refusal's outcome ("queue_full", "queue_timeout") of a guarded call

Bucket bounds (seconds) resolve the spec's targets: 5 ms ... 10 s, with 0.5 s
(the HTTP P95 target), 2 s, 2.5 s and 3 s (the `p95_slow` rule fires over 3 s
and clears under 2.5 s) and 5 s (`MAX_RESPONSE_TIME`).

Bounded. At most `max_routes` route templates get their own label value (the
rest share "other", like the windows); methods arrive already bounded by the HTTP
edge (an unknown one is "OTHER"); statuses are HTTP codes, outcomes the `Outcome`
values, tiers are capped at `max_tiers`. Entries are never dropped: a counter
that vanished would read to Prometheus as a reset.

Mutable, owned by the metrics actor alone, like the rest of its state; `freeze`
returns a frozen value (`messages.metrics.Totals`).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from functools import partial, reduce
from operator import add

from messages.config import Priority
from messages.metrics import HistogramSeries, TotalsSnapshot
from messages.outcome import Outcome

BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 3.0, 5.0, 10.0)
_BUCKET_OF = partial(bisect_left, BUCKETS_S)  # a value's bucket (as `add` finds it), for map()
OTHER = "other"
QUEUE_REFUSALS = frozenset({Outcome.QUEUE_FULL, Outcome.QUEUE_TIMEOUT})
PRIORITY_NAMES = {int(p): p.name for p in Priority}


class _Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS_S) + 1)  # the last one is +Inf
        self.sum = 0.0

    def add(self, value: float) -> None:
        # bisect_left: a value equal to a bound is in that bound's bucket (le, "less or equal")
        self.counts[bisect_left(BUCKETS_S, value)] += 1
        self.sum += value

    def add_all(self, values: list[float]) -> None:
        counts = self.counts
        for i, n in Counter(map(_BUCKET_OF, values)).items():
            counts[i] += n
        self.sum = reduce(add, values, self.sum)  # in order, as `add` would: the same sum to the last bit

    def freeze(self, labels: tuple[str, ...]) -> HistogramSeries:
        cumulative, running = [], 0
        for n in self.counts:
            running += n
            cumulative.append(running)
        return HistogramSeries(labels=labels, buckets=tuple(cumulative), sum=self.sum, count=running)


class Totals:
    """Everything since start. `http` and `call` are keyed by their label tuples."""

    __slots__ = ("max_routes", "max_tiers", "routes", "tiers", "http", "calls", "transitions", "queue",
                 "_by_route", "_by_call")

    def __init__(self, max_routes: int, max_tiers: int) -> None:
        self.max_routes, self.max_tiers = max_routes, max_tiers
        self.routes: set[str] = set()
        self.tiers: set[str] = set()
        self.http: dict[tuple[str, str, str, str], _Histogram] = {}
        self.calls: dict[tuple[str, str], _Histogram] = {}
        self.transitions: dict[tuple[str, str, str], int] = {}
        self.queue: dict[tuple[str, str], int] = {}
        # (edge route, status, outcome) -> its histogram: the hot path's one lookup. Only routes
        # under the cap are kept here, so it is no larger than `http`.
        self._by_route: dict[tuple[str, int | None, str], _Histogram] = {}
        # (tier, outcome) -> its histogram, likewise for guarded calls (tiers under the cap only).
        self._by_call: dict[tuple[str, str], _Histogram] = {}

    def request(self, route: str, status: int | None, outcome: str, duration_s: float) -> None:
        """`route` is the edge's "METHOD /template"."""
        fast = (route, status, outcome)
        h = self._by_route.get(fast)
        if h is None:
            method, _, template = route.partition(" ")
            if not template:
                method, template = "OTHER", route
            label = _capped(self.routes, template, self.max_routes)
            h = _histogram(self.http, (label, method, str(status or 0), str(outcome)))
            if label != OTHER:
                self._by_route[fast] = h
        h.add(duration_s)

    def call(self, tier: str, outcome: str, duration_s: float, priority: int | None = None,
             admitted: bool = False) -> None:
        """`admitted`: the call held a slot. A refusal before the queue (an open breaker) is
        no admission decision."""
        h = self._by_call.get((tier, outcome))
        if h is None:
            label = _capped(self.tiers, tier, self.max_tiers)
            h = _histogram(self.calls, (label, str(outcome)))
            if label != OTHER:
                self._by_call[(tier, outcome)] = h
        h.add(duration_s)
        if priority is not None and (admitted or outcome in QUEUE_REFUSALS):
            decision = (PRIORITY_NAMES.get(priority, OTHER), "admitted" if admitted else str(outcome))
            self.queue[decision] = self.queue.get(decision, 0) + 1

    def call_many(self, tier: str, outcome: str, durations: list[float], priority: int | None = None,
                  admitted: bool = False) -> None:
        """`call` for each of `durations`, calls of one label set."""
        key = (_capped(self.tiers, tier, self.max_tiers), str(outcome))
        _histogram(self.calls, key).add_all(durations)
        if priority is not None and (admitted or outcome in QUEUE_REFUSALS):
            decision = (PRIORITY_NAMES.get(priority, OTHER), "admitted" if admitted else str(outcome))
            self.queue[decision] = self.queue.get(decision, 0) + len(durations)

    def transition(self, tier: str, from_state: str, to_state: str) -> None:
        key = (_capped(self.tiers, tier, self.max_tiers), from_state, to_state)
        self.transitions[key] = self.transitions.get(key, 0) + 1

    def freeze(self) -> TotalsSnapshot:
        return TotalsSnapshot(
            buckets_s=BUCKETS_S,
            http=[h.freeze(k) for k, h in self.http.items()],
            calls=[h.freeze(k) for k, h in self.calls.items()],
            transitions=[(*k, n) for k, n in self.transitions.items()],
            queue=[(*k, n) for k, n in self.queue.items()])


def _capped(seen: set[str], value: str, cap: int) -> str:
    if value in seen:
        return value
    if len(seen) - (OTHER in seen) < cap:
        seen.add(value)
        return value
    seen.add(OTHER)
    return OTHER


def _histogram(table: dict, key: tuple) -> _Histogram:
    h = table.get(key)
    if h is None:
        h = table[key] = _Histogram()
    return h
