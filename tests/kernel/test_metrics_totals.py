"""Metrics core, counts since start (Prometheus' histograms and counters): buckets, caps, decisions."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from actors.metrics import MetricsState, snapshot, step
from actors.metrics_totals import BUCKETS_S, OTHER, Totals
from messages.events import BreakerTransition
from messages.metrics import Observation, Observations, TotalsSnapshot


def test_totals_buckets_resolve_the_spec_targets():
    assert BUCKETS_S[0] == 0.005 and BUCKETS_S[-1] == 10.0
    assert {0.5, 2.0, 2.5, 3.0, 5.0} <= set(BUCKETS_S)
    assert list(BUCKETS_S) == sorted(BUCKETS_S)


def test_totals_a_value_on_a_bound_is_in_that_bucket_and_counts_are_cumulative():
    t = Totals(max_routes=10, max_tiers=4)
    for value in (0.005, 0.0051, 0.5, 3.0, 10.0, 11.0):
        t.request("GET /api/x", 200, "ok", value)
    (h,) = t.freeze().http
    assert h.labels == ("/api/x", "GET", "200", "ok")
    by_bound = dict(zip((*BUCKETS_S, float("inf")), h.buckets, strict=True))
    assert by_bound[0.005] == 1 and by_bound[0.01] == 2 and by_bound[0.5] == 3
    assert by_bound[3.0] == 4 and by_bound[10.0] == 5 and by_bound[float("inf")] == 6
    assert h.count == 6 and abs(h.sum - 24.5101) < 1e-9


@given(st.lists(st.floats(min_value=0.0, max_value=100.0), min_size=1, max_size=50))
def test_totals_buckets_never_decrease_and_end_at_the_count(values):
    t = Totals(max_routes=10, max_tiers=4)
    for v in values:
        t.call("database", "ok", v)
    (h,) = t.freeze().calls
    assert list(h.buckets) == sorted(h.buckets) and h.buckets[-1] == h.count == len(values)


def test_totals_routes_over_the_cap_share_other_and_entries_are_never_dropped():
    t = Totals(max_routes=3, max_tiers=4)
    for i in range(10):
        t.request(f"GET /r{i}", 200, "ok", 0.01)
    routes = {h.labels[0] for h in t.freeze().http}
    assert routes == {"/r0", "/r1", "/r2", OTHER}
    assert next(h.count for h in t.freeze().http if h.labels[0] == OTHER) == 7


def test_totals_admission_decisions_per_priority():
    t = Totals(max_routes=3, max_tiers=4)
    t.call("database", "ok", 0.01, priority=0, admitted=True)
    t.call("database", "error", 0.01, priority=0, admitted=True)
    t.call("database", "queue_full", 0.0, priority=4)
    t.call("database", "queue_timeout", 30.0, priority=2)
    t.call("database", "circuit_open", 0.0, priority=2)  # never reached the queue
    assert sorted(t.freeze().queue) == [("BATCH", "queue_full", 1), ("CRITICAL", "admitted", 2),
                                        ("NORMAL", "queue_timeout", 1)]


def test_totals_through_the_core_only_when_asked_and_they_survive_the_windows():
    s = MetricsState.initial(now=0.0)
    s, _ = step(s, Observations(items=[("http", "GET /a", None, "ok", 200, 0.02, None, True),
                                       ("http", "FOO /a", None, "ok", 405, 0.001, None, True),
                                       ("call", None, "database", "ok", None, 0.003, 0.0, True, 1)]), 0.0)
    s, _ = step(s, BreakerTransition(tier="batch", from_state="closed", to_state="open", reason="forced",
                                     at=1.0, epoch=1), 1.0)
    assert snapshot(s, 2.0).totals is None
    later = snapshot(s, 7200.0, routes=False, totals=True)  # every window has emptied
    assert later.routes == {} and later.overall.windows["1h"].requests == 0
    t = later.totals
    assert {h.labels: h.count for h in t.http} == {("/a", "GET", "200", "ok"): 1, ("/a", "FOO", "405", "ok"): 1}
    assert [(h.labels, h.count) for h in t.calls] == [(("database", "ok"), 1)]
    assert t.transitions == [("batch", "closed", "open", 1)] and t.queue == [("HIGH", "admitted", 1)]
    assert msgspec.json.decode(msgspec.json.encode(t), type=TotalsSnapshot) == t


def test_totals_an_observation_message_carries_priority():
    s = MetricsState.initial(now=0.0)
    s, _ = step(s, Observation(source="call", route=None, tier="critical", outcome="queue_full", status=None,
                               duration_s=0.0, priority=0, at=0.0), 0.0)
    assert snapshot(s, 0.0, totals=True).totals.queue == [("CRITICAL", "queue_full", 1)]


durations = st.one_of(st.floats(min_value=0.0, max_value=2.0), st.sampled_from([0.0, -1.0, 1e6, float("nan")]))
calls = st.tuples(st.just("call"), st.none(), st.sampled_from(["database", "batch", None]),
                  st.sampled_from(["ok", "error", "queue_full", "queue_timeout", "circuit_open", "cancelled"]),
                  st.none(), durations, st.one_of(st.none(), durations), st.just(True),
                  st.one_of(st.none(), st.integers(0, 4)))
requests = st.tuples(st.just("http"), st.sampled_from(["GET /a", "POST /b"]), st.sampled_from(["database", None]),
                     st.sampled_from(["ok", "error", "rate_limited"]), st.sampled_from([200, 429, 503]),
                     durations, st.none(), st.booleans())


@given(st.lists(st.lists(st.one_of(calls, requests), max_size=40), max_size=4),
       st.sampled_from([("http",), ("http", "call")]))
def test_metrics_a_batch_of_observations_records_exactly_what_each_one_alone_would(batches, overall):
    """Calls are folded by label set before they are recorded: every window, percentile and
    total since start is still what recording the items one by one gives."""
    import actors.metrics as metrics

    batched = MetricsState.initial(now=0.0, overall_sources=overall)
    one_by_one = MetricsState.initial(now=0.0, overall_sources=overall)
    for now, items in enumerate(batches):
        batched, _ = step(batched, Observations(items=list(items)), now * 3.0)
        one_by_one, _ = step(one_by_one, metrics.Tick(), now * 3.0)
        for item in items:
            metrics._record(one_by_one, *item)
    assert snapshot(batched, 20.0, totals=True) == snapshot(one_by_one, 20.0, totals=True)


@given(st.lists(st.lists(st.one_of(calls, requests), max_size=40), max_size=4),
       st.sampled_from([("http",), ("http", "call")]))
def test_metrics_calls_told_folded_record_exactly_what_each_one_alone_would(batches, overall):
    """Calls that ended well travel folded by (tier, priority) (`Mailbox.tell_call`), beside
    the batch's other items: every window, percentile and total is still what recording the
    same calls one by one gives."""
    import actors.metrics as metrics

    batched = MetricsState.initial(now=0.0, overall_sources=overall)
    one_by_one = MetricsState.initial(now=0.0, overall_sources=overall)
    for now, items in enumerate(batches):
        done: dict = {}
        rest = []
        for item in items:
            if item[0] == "call" and item[3] == "ok" and item[6] is not None:
                done.setdefault((item[2], item[8]), []).extend((item[5], item[6]))  # as `tell_call`
            else:
                rest.append(item)
        batched, _ = step(batched, Observations(items=rest, calls=done), now * 3.0)
        one_by_one, _ = step(one_by_one, metrics.Tick(), now * 3.0)
        for item in items:
            metrics._record(one_by_one, *item)

    def labelled(snap):  # label sets may first appear in another order: no matter
        snap = msgspec.to_builtins(snap)
        for series in snap["totals"].values():
            if isinstance(series, list):
                series.sort(key=str)
        snap["tiers"] = sorted(snap["tiers"].items())
        return snap

    assert labelled(snapshot(batched, 20.0, totals=True)) == labelled(snapshot(one_by_one, 20.0, totals=True))
