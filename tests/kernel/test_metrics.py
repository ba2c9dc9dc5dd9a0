"""Metrics core: percentile accuracy, window semantics, error definitions, caps and bounded memory."""

from __future__ import annotations

import math
import random
import sys
from collections import deque

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.metrics import (
    BIN_LIMIT,
    FINE,
    MAX_VALUE_S,
    MERGES_PER_STEP,
    OTHER,
    PENDING_VALUES,
    SETTLE_EVERY_S,
    WINDOWS,
    MetricsCore,
    MetricsState,
    _sketch,
    snapshot,
    step,
)
from actors.runtime.actor import Send
from actors.sketch import add_all
from messages.commands import GetSnapshot, Tick
from messages.metrics import Count, MetricsSnapshot, Observation, WindowStats

ACCURACY = 0.01
QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}


class Token:
    """Stands in for a parked caller's Reply in pure-core tests."""


def obs(at: float, **kw) -> Observation:
    fields = {"source": "http", "route": "GET /api/animals", "tier": None, "outcome": "ok",
              "status": 200, "duration_s": 0.1, **kw}
    return Observation(at=at, **fields)


def feed(s: MetricsState, at: float, **kw) -> MetricsState:
    s, effects = step(s, obs(at, **kw), at)
    assert effects == []
    return s


def exact(values: list[float], q: float) -> float:
    """The order statistic DDSketch estimates: rank floor(q * (n - 1)) of the sorted values."""
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


def assert_percentiles(stats, values: list[float]) -> None:
    assert stats.count == len(values)
    for name, q in QUANTILES.items():
        want, got = exact(values, q), getattr(stats, name)
        assert abs(got - want) <= ACCURACY * want * (1 + 1e-9) + 1e-12, (name, got, want)


def in_window(t: float, now: float, width: float, size: int) -> bool:
    return now // width - t // width < size


def window(snap: MetricsSnapshot, name: str, route: str | None = None) -> WindowStats:
    series = snap.overall if route is None else snap.routes[route]
    return series.windows[name]


# --- percentiles -------------------------------------------------------------------------------


def _uniform(r: random.Random) -> float:
    return r.uniform(0.001, 2.0)


def _lognormal(r: random.Random) -> float:
    return r.lognormvariate(math.log(0.05), 1.2)


def _bimodal(r: random.Random) -> float:
    return r.gauss(0.02, 0.004) if r.random() < 0.9 else r.gauss(1.5, 0.2)


@pytest.mark.parametrize("draw", [_uniform, _lognormal, _bimodal], ids=["uniform", "lognormal", "bimodal"])
def test_percentiles_known_distribution_every_window_within_one_percent(draw):
    r = random.Random(7)
    s = MetricsState.initial(now=0.0)
    timeline = [(i * 0.03, max(draw(r), 1e-6)) for i in range(10_000)]  # 300 s of traffic
    for at, d in timeline:
        s = feed(s, at, duration_s=d)
    now = timeline[-1][0]
    snap = snapshot(s, now)
    for name, width, size in WINDOWS:
        values = [d for at, d in timeline if in_window(at, now, width, size)]
        assert_percentiles(window(snap, name).latency, values)
        assert_percentiles(window(snap, name, "GET /api/animals").latency, values)


def test_percentiles_queue_wait_only_observations_with_one_within_one_percent():
    r = random.Random(3)
    s = MetricsState.initial(now=0.0)
    waits = []
    for i in range(3000):
        wait = r.lognormvariate(math.log(0.2), 1.0) if i % 3 else None
        waits += [] if wait is None else [wait]
        s, _ = step(s, obs(i * 0.01, source="call", route=None, tier="database", status=None,
                           queue_wait_s=wait), i * 0.01)
    stats = snapshot(s, 30.0).tiers["database"].windows["1m"]
    assert stats.requests == 3000
    assert_percentiles(stats.queue_wait, waits)


def test_percentiles_empty_window_none_and_zero_count():
    snap = snapshot(MetricsState.initial(now=5.0), 5.0)
    for name, _, _ in WINDOWS:
        w = window(snap, name)
        assert (w.requests, w.rate_per_s, w.error_rate, w.server_error_rate) == (0, 0.0, 0.0, 0.0)
        assert (w.latency.p50, w.latency.p95, w.latency.p99, w.latency.count) == (None, None, None, 0)
        assert w.queue_wait.count == 0


@pytest.mark.parametrize("bad, want", [(-1.0, 0.0), (math.nan, 0.0), (0.0, 0.0),
                                       (math.inf, MAX_VALUE_S), (1e12, MAX_VALUE_S)])
def test_percentiles_odd_duration_clamped_not_crashing(bad, want):
    s = feed(MetricsState.initial(now=0.0), 1.0, duration_s=bad, queue_wait_s=bad)
    w = window(snapshot(s, 1.0), "1m")
    assert abs(w.latency.p99 - want) <= ACCURACY * want and abs(w.queue_wait.p50 - want) <= ACCURACY * want


# --- windows -----------------------------------------------------------------------------------


def requests(s: MetricsState, now: float) -> dict[str, int]:
    snap = snapshot(s, now)
    return {name: w.requests for name, w in snap.overall.windows.items()}


def test_window_observation_at_bucket_start_leaves_1m_at_60s_stays_in_5m_and_1h():
    s = feed(MetricsState.initial(now=0.0), 100.0)       # bucket [100, 110)
    assert requests(s, 159.999) == {"1m": 1, "5m": 1, "1h": 1}
    assert requests(s, 160.0) == {"1m": 0, "5m": 1, "1h": 1}
    assert requests(s, 389.999) == {"1m": 0, "5m": 1, "1h": 1}  # 5m: 30 s bucket [90, 120)
    assert requests(s, 390.0) == {"1m": 0, "5m": 0, "1h": 1}
    assert requests(s, 3599.999) == {"1m": 0, "5m": 0, "1h": 1}
    assert requests(s, 3600.0) == {"1m": 0, "5m": 0, "1h": 0}  # 1h: 5 min bucket [0, 300)


def test_window_recent_10s_of_the_overall_series_only_health_windows_unchanged():
    s = feed(MetricsState.initial(now=0.0), 101.0)        # 2 s bucket [100, 102)
    snap = snapshot(s, 109.999)
    assert snap.recent.requests == 1 and set(snap.overall.windows) == {"1m", "5m", "1h"}
    assert set(snap.routes["GET /api/animals"].windows) == {"1m", "5m", "1h"}
    assert snapshot(s, 110.0).recent.requests == 0         # left at the first 2 s boundary 8 s on
    assert snapshot(s, 110.0).overall.windows["1m"].requests == 1


def test_window_observation_late_in_bucket_leaves_1m_after_more_than_50s():
    s = feed(MetricsState.initial(now=0.0), 109.5)       # same 10 s bucket [100, 110)
    assert requests(s, 159.999)["1m"] == 1
    assert requests(s, 160.0)["1m"] == 0                 # 50.5 s later: granularity is 10 s


def test_window_rate_uses_covered_span_since_start():
    s = MetricsState.initial(now=1003.0)
    for i in range(10):
        s = feed(s, 1003.0 + i * 0.5)
    w = window(snapshot(s, 1008.0), "1m")
    assert (w.window_s, w.requests, w.rate_per_s) == (5.0, 10, 2.0)
    w = window(snapshot(s, 1234.5), "5m")                # oldest 30 s bucket [960, 990) predates start
    assert (w.window_s, w.requests) == (1234.5 - 1003.0, 10)
    w = window(snapshot(s, 1500.0), "1m")
    assert (w.window_s, w.rate_per_s) == (1500.0 - 1450.0, 0.0)


def test_window_span_at_start_floored_at_one_second():
    s = feed(MetricsState.initial(now=50.0), 50.0)
    w = window(snapshot(s, 50.0), "1m")
    assert (w.window_s, w.rate_per_s) == (1.0, 1.0)


def test_window_now_going_back_neither_rotates_nor_crashes():
    s = feed(MetricsState.initial(now=0.0), 100.0)
    s = feed(s, 50.0)                                    # a stale `now`: recorded in the open bucket
    assert requests(s, 40.0) == {"1m": 2, "5m": 2, "1h": 2}


events = st.lists(
    st.tuples(st.one_of(st.floats(0, 15), st.floats(0, 4000)),   # time step
              st.sampled_from(["GET /a", "POST /b"]),
              st.sampled_from([("ok", 200), ("error", 500), ("rate_limited", 429), ("ok", 503),
                               ("queue_timeout", 504), ("cancelled", 499)]),
              st.floats(1e-4, 10.0)),
    max_size=40)


@settings(max_examples=300, deadline=None)
@given(start=st.floats(0, 1e6), events=events, tail=st.floats(0, 400))
def test_window_any_sequence_matches_bucket_semantics_exactly(start, events, tail):
    s, now, seen = MetricsState.initial(now=start), start, []
    for dt, route, (outcome, status), d in events:
        now += dt
        s = feed(s, now, route=route, outcome=outcome, status=status, duration_s=d)
        seen.append((now, route, outcome != "ok" and outcome not in ("rate_limited", "cancelled")
                     or status >= 500, status >= 500, d))
    now += tail
    snap = snapshot(s, now)
    for name, width, size in WINDOWS:
        for route in (None, "GET /a", "POST /b"):
            kept = [e for e in seen if in_window(e[0], now, width, size) and route in (None, e[1])]
            if route is not None and route not in snap.routes:
                assert all(not in_window(e[0], now, 300.0, 12) for e in seen if e[1] == route)
                continue
            w = window(snap, name, route)
            assert (w.requests, w.errors, w.server_errors) == (
                len(kept), sum(e[2] for e in kept), sum(e[3] for e in kept))
            span = max(now - max((now // width - size + 1) * width, start), 1.0)
            assert w.window_s == span and w.rate_per_s == len(kept) / span
            if kept:
                assert_percentiles(w.latency, [e[4] for e in kept])
    _, width, size = FINE                                 # the overall series' 10 s window
    kept = [e for e in seen if in_window(e[0], now, width, size)]
    w = snap.recent
    assert (w.requests, w.errors, w.server_errors) == (
        len(kept), sum(e[2] for e in kept), sum(e[3] for e in kept))
    span = max(now - max((now // width - size + 1) * width, start), 1.0)
    assert w.window_s == span and w.rate_per_s == len(kept) / span
    if kept:
        assert_percentiles(w.latency, [e[4] for e in kept])


# --- what counts as an error -------------------------------------------------------------------


@pytest.mark.parametrize("source, outcome, status, error, server_error", [
    ("http", "ok", 200, 0, 0),
    ("http", "ok", 404, 0, 0),
    ("http", "rate_limited", 429, 0, 0),
    ("http", "error", 500, 1, 1),
    ("http", "ok", 503, 1, 1),                # a 5xx always counts, whatever the outcome
    ("http", "circuit_open", 503, 1, 1),
    ("http", "shutting_down", 503, 1, 1),
    ("http", "cancelled", 499, 0, 0),
    ("call", "error", None, 1, 0),
    ("call", "circuit_open", None, 1, 0),
    ("call", "queue_full", None, 1, 0),
    ("call", "queue_timeout", None, 1, 0),
    ("call", "rate_limited", None, 0, 0),
    ("call", "cancelled", None, 0, 0),
    ("call", "shutting_down", None, 0, 0),
    ("call", "query_timeout", None, 1, 0),    # an outcome not known yet is an error
])
def test_error_definition_outcome_and_status_counted_as_documented(source, outcome, status, error,
                                                                   server_error):
    s = MetricsState.initial(now=0.0, overall_sources=("http", "call"))
    for i in range(3):
        s = feed(s, float(i), source="call" if i else "http", outcome="ok", status=200 if not i else None)
    s = feed(s, 3.0, source=source, outcome=outcome, status=status, tier="database")
    w = window(snapshot(s, 3.0), "1m")
    assert (w.requests, w.errors, w.server_errors) == (4, error, server_error)
    rated = 3 if outcome == "rate_limited" else 4   # a refusal is in no error rate's denominator
    assert (w.error_rate, w.server_error_rate) == (error / rated, server_error / rated)


def test_error_rate_leaves_out_rate_limit_refusals_and_health_answers():
    """A 429 is the client's doing; health's 503 is its report, not a failure: neither is in an
    error rate, on either side of the fraction. They still count as requests (rate, latency)."""
    s = MetricsState.initial(now=0.0)
    for _ in range(10):
        s = feed(s, 1.0)
    s = feed(s, 1.0, outcome="error", status=500)
    for _ in range(30):
        s = feed(s, 2.0, outcome="rate_limited", status=429)
    for _ in range(20):
        s = feed(s, 3.0, route="GET /api/health", outcome="ok", status=503, rated=False)
    w = window(snapshot(s, 3.0), "1m")
    assert (w.requests, w.excluded, w.errors, w.server_errors) == (61, 50, 1, 1)
    assert (w.error_rate, w.server_error_rate) == (1 / 11, 1 / 11)
    assert window(snapshot(s, 3.0), "1m", "GET /api/health").error_rate == 0.0


def test_error_overall_default_counts_http_only_tiers_count_calls():
    s = feed(MetricsState.initial(now=0.0), 1.0)
    s = feed(s, 1.0, source="call", route=None, tier="database", status=None, outcome="error")
    snap = snapshot(s, 1.0)
    assert window(snap, "1m").requests == 1 and window(snap, "1m").errors == 0
    assert snap.tiers["database"].windows["1m"].errors == 1
    assert list(snap.routes) == ["GET /api/animals"] and snap.overall.name == "all"


# --- caps, counts, bounded memory --------------------------------------------------------------


def test_route_cap_overflow_shares_other_and_known_routes_keep_theirs():
    s = MetricsState.initial(now=0.0, max_routes=3)
    for i in range(6):
        s = feed(s, 1.0, route=f"GET /r{i}")
    s = feed(s, 1.0, route="GET /r0")
    snap = snapshot(s, 1.0)
    assert sorted(snap.routes) == ["GET /r0", "GET /r1", "GET /r2", OTHER]
    assert snap.routes["GET /r0"].windows["1m"].requests == 2
    assert snap.routes[OTHER].windows["1m"].requests == 3
    assert window(snap, "1m").requests == 7


def test_route_cap_idle_route_dropped_after_its_last_window_frees_slot():
    s = feed(MetricsState.initial(now=0.0, max_routes=1), 0.0, route="GET /old")
    s = feed(s, 3599.0, route="GET /new")
    assert sorted(snapshot(s, 3599.0).routes) == ["GET /old", OTHER]
    s = feed(s, 3600.0, route="GET /new")                # /old has left the 1h window
    assert sorted(snapshot(s, 3600.0).routes) == ["GET /new", OTHER]


def test_tier_and_label_caps_overflow_into_other():
    s = MetricsState.initial(now=0.0, max_tiers=1, max_labels=1)
    for tier in ("database", "critical"):
        s = feed(s, 0.0, source="call", route=None, tier=tier, status=None)
        s, _ = step(s, Count(what="breaker_activation", label=tier, at=0.0), 0.0)
    snap = snapshot(s, 0.0)
    assert sorted(snap.tiers) == ["database", OTHER]
    assert snap.breaker_activations_per_hour == {"database": 1, OTHER: 1}


def test_counts_per_hour_follow_the_1h_window():
    s = MetricsState.initial(now=0.0)
    for at, what, label in [(0.0, "breaker_activation", "database"),
                            (100.0, "breaker_activation", "database"),
                            (200.0, "rate_limit_violation", "auth"),
                            (700.0, "breaker_activation", "critical")]:
        s, effects = step(s, Count(what=what, label=label, at=at), at)
        assert effects == []
    snap = snapshot(s, 3599.0)
    assert snap.breaker_activations_per_hour == {"database": 2, "critical": 1}
    assert snap.rate_limit_violations_per_hour == {"auth": 1}
    snap = snapshot(s, 3600.0)                           # the 5 min bucket [0, 300) has left
    assert snap.breaker_activations_per_hour == {"critical": 1}
    assert snap.rate_limit_violations_per_hour == {}


def held(s: MetricsState) -> tuple[int, int, int]:
    """(series, buckets, largest sketch in bins) the state holds."""
    series = [s.overall, *s.routes.values(), *s.tiers.values()]
    buckets = [b for x in series for r in x.rings for b in (r.open, *r.closed)]
    sketches = [sk for b in buckets for sk in (b.latency, b.queue_wait) if sk is not None]
    return len(series), len(buckets), max((len(sk._store.bins) for sk in sketches), default=0)


def traffic(s: MetricsState, start: float, seconds: float, rate: float, r: random.Random,
            routes: int, wide: bool) -> MetricsState:
    """`rate` observations/s over `routes` routes and 8 tiers; `wide`: durations from 1 ns to
    11 days (clamped to 1 day), far wider than a sketch's BIN_LIMIT bins cover."""
    for i in range(int(seconds * rate)):
        duration = 10 ** r.uniform(-9, 6) if wide else r.lognormvariate(math.log(0.05), 1.5)
        s = feed(s, start + i / rate, route=f"GET /r{r.randrange(routes)}", tier=f"t{r.randrange(8)}",
                 duration_s=duration, queue_wait_s=r.expovariate(10.0))
    return s


def test_memory_bucket_and_sketch_counts_bounded_under_wide_values_and_many_routes():
    r = random.Random(1)
    s = MetricsState.initial(now=0.0, max_routes=20, max_tiers=4)
    s = traffic(s, 0.0, 4000.0, 2.0, r, routes=200, wide=True)
    series, buckets, bins = held(s)
    assert series <= 1 + (20 + 1) + (4 + 1)
    assert buckets <= series * sum(size for _, _, size in WINDOWS)
    assert bins <= BIN_LIMIT
    w = window(snapshot(s, 4000.0), "1h")
    assert w.latency.count == w.requests > 0


def deep_size(root: object) -> int:
    """Bytes the objects reachable from `root` occupy (sys.getsizeof, each object once)."""
    seen, stack, total = set(), [root], 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, type):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack += [*obj.keys(), *obj.values()]
        elif isinstance(obj, list | tuple | deque | set | frozenset):
            stack += obj
        if hasattr(obj, "__dict__"):
            stack.append(vars(obj))
        stack += [getattr(obj, n) for n in getattr(type(obj), "__slots__", ()) if hasattr(obj, n)]
    return total


def test_memory_steady_traffic_state_stops_growing_after_an_hour():
    r = random.Random(2)
    s = traffic(MetricsState.initial(now=0.0), 0.0, 3900.0, 5.0, r, routes=3, wide=False)
    snapshot(s, 3900.0)
    after_one_hour = deep_size(s)
    s = traffic(s, 3900.0, 3900.0, 5.0, r, routes=3, wide=False)
    snapshot(s, 7800.0)
    assert deep_size(s) <= after_one_hour * 1.15


# --- the core as the shell sees it -------------------------------------------------------------


def test_core_get_snapshot_replies_with_frozen_value_that_round_trips():
    s = feed(MetricsState.initial(now=0.0), 1.0, queue_wait_s=0.01)
    s, _ = step(s, Count(what="rate_limit_violation", label="general", at=1.0), 1.0)
    token = Token()
    s, effects = step(s, GetSnapshot(reply=token), 2.0)
    (send,) = effects
    assert isinstance(send, Send) and send.to is token
    snap = send.value
    assert snap == snapshot(s, 2.0) and snap.at == 2.0
    assert msgspec.json.decode(msgspec.json.encode(snap), type=MetricsSnapshot) == snap
    with pytest.raises(AttributeError):
        snap.at = 3.0


def test_core_snapshots_in_between_change_nothing_later_reads_return():
    quiet, watched = MetricsState.initial(now=0.0), MetricsState.initial(now=0.0)
    quiet = traffic(quiet, 0.0, 700.0, 3.0, random.Random(4), routes=3, wide=False)
    r = random.Random(4)
    for start in range(0, 700, 7):
        watched = traffic(watched, float(start), 7.0, 3.0, r, routes=3, wide=False)
        snapshot(watched, start + 7.0)
    assert snapshot(watched, 705.0) == snapshot(quiet, 705.0)


def test_core_wakeup_next_2s_boundary_and_ticks_rotate_overall_at_2s_routes_at_10s():
    s = feed(MetricsState.initial(now=0.0), 3.0)
    assert MetricsCore.wakeup(s) == 4.0
    s, effects = step(s, Tick(), 4.0)
    assert effects == [] and MetricsCore.wakeup(s) == 6.0
    fine, ten = s.overall.rings[0], s.overall.rings[1]
    assert (fine.width, fine.open.requests, len(fine.closed)) == (2.0, 0, 1)
    assert ten.open.requests == 1 and not ten.closed   # folded into the open 10 s bucket
    route = s.routes["GET /api/animals"].rings[0]
    assert (route.width, route.open.requests, len(route.closed)) == (10.0, 1, 0)
    s, _ = step(s, Tick(), 10.0)
    assert MetricsCore.wakeup(s) == 12.0
    assert (ten.open.requests, len(ten.closed)) == (0, 1) and len(route.closed) == 1
    assert MetricsCore.name == "metrics"
    assert tuple(MetricsCore.parked(s)) == () and MetricsCore.undelivered(Token(), None) is None


def owed(s: MetricsState) -> int:
    return sum(len(series.pending) for series in [s.overall, *s.routes.values(), *s.tiers.values()])


def test_core_rotation_at_the_route_cap_pays_its_sketch_merges_a_few_a_step_and_reads_stay_exact():
    busy, twin = MetricsState.initial(now=0.0), MetricsState.initial(now=0.0)
    for s in (busy, twin):
        for i in range(200):
            feed(s, 1.0 + i / 1000, route=f"GET /r{i}", duration_s=0.001 * (i + 1))
    busy, _ = step(busy, Tick(), 30.0)        # 10 s and 30 s rings of 201 series rotate
    first = owed(busy)
    assert first >= 2 * 200 - MERGES_PER_STEP  # counts folded, sketch merges owed
    assert MetricsCore.wakeup(busy) == 30.0 + SETTLE_EVERY_S
    steps, now = 0, 30.0
    while busy.unsettled:
        now += SETTLE_EVERY_S
        before = owed(busy)
        busy, _ = step(busy, Tick(), now)
        assert before - owed(busy) <= MERGES_PER_STEP
        steps += 1
    assert steps >= first // MERGES_PER_STEP and MetricsCore.wakeup(busy) == 32.0
    assert snapshot(busy, 40.0) == snapshot(twin, 40.0)   # the twin settles as it reads


def test_core_unknown_message_raises_type_error():
    with pytest.raises(TypeError, match="metrics cannot handle"):
        step(MetricsState.initial(now=0.0), object(), 0.0)


def test_metrics_stale_answers_are_counted_apart_from_errors_in_every_window():
    s = MetricsState.initial(now=0.0)
    s = feed(s, 1.0, stale=True)
    s = feed(s, 2.0)
    s = feed(s, 3.0, status=500, outcome="error")
    now = snapshot(s, 5.0)  # (a snapshot rotates the rings to its instant: the earlier one first)
    assert (window(now, "1m").stale, window(now, "1m").errors, window(now, "1m").requests) == (1, 1, 3)
    assert window(now, "1m", "GET /api/animals").stale == 0  # the overall series only
    later = snapshot(s, 75.0)  # the 10 s bucket has closed and been folded into the 5m ring
    assert [(w.stale, w.errors) for w in later.overall.windows.values()] == [(0, 0), (1, 1), (1, 1)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.just(0.0), st.floats(min_value=1e-12, max_value=MAX_VALUE_S),
                          st.floats(min_value=1e-4, max_value=2e-3)), max_size=300),
       st.integers(min_value=1, max_value=64))
def test_metrics_sketch_add_all_matches_ddsketch(values, chunk):
    # What the metrics read of a sketch (bins and their collapse at BIN_LIMIT, counts, the
    # percentiles) is exactly what one `add` per value leaves, in any chunking.
    ours, theirs = _sketch(), _sketch()
    for i in range(0, len(values), chunk):
        add_all(ours, values[i:i + chunk])
    for value in values:
        theirs.add(value)
    assert ours._store.bins == theirs._store.bins
    assert (ours._store.offset, ours._store.min_key, ours._store.max_key, ours._store.count) == \
        (theirs._store.offset, theirs._store.min_key, theirs._store.max_key, theirs._store.count)
    assert (ours._store.is_collapsed, ours._zero_count, ours.count) == \
        (theirs._store.is_collapsed, theirs._zero_count, theirs.count)
    if values:
        for q in (0.0, 0.5, 0.95, 0.99, 1.0):
            assert ours.get_quantile_value(q) == theirs.get_quantile_value(q)


def test_metrics_values_held_back_are_in_every_read():
    # Recorded values wait in the bucket (PENDING_VALUES) until a sketch is read: a snapshot
    # taken after fewer than that still counts each one, and a later one counts the rest.
    s = MetricsState.initial(now=0.0)
    for i in range(PENDING_VALUES // 2 - 1):
        step(s, Observation(source="call", route=None, tier="database", outcome="ok", status=None,
                            duration_s=0.001 * (i + 1), queue_wait_s=0.0, at=1.0), 1.0)
    first = snapshot(s, 1.0).tiers["database"].windows["1m"]
    assert (first.requests, first.latency.count, first.queue_wait.count) == (63, 63, 63)
    for _ in range(PENDING_VALUES):
        step(s, Observation(source="call", route=None, tier="database", outcome="ok", status=None,
                            duration_s=0.5, at=2.0), 2.0)
    later = snapshot(s, 2.0).tiers["database"].windows["1m"]
    assert (later.requests, later.latency.count, later.queue_wait.count) == (191, 191, 63)
    assert later.latency.p99 == pytest.approx(0.5, rel=0.01)
