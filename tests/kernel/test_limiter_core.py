"""Rate limiter core: the spec's quotas exactly, GCRA numbers, table bounds, and invariants
under random input (against an independent leaky-bucket model in exact fractions)."""

from __future__ import annotations

import math
from collections import OrderedDict
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.limiter_core import LimiterTable, PolicySpec, RateDecision, UnknownPolicy

SPEC = {
    "general": (100, 60.0),
    "auth": (5, 900.0),
    "recording": (30, 60.0),
    "heavy": (10, 60.0),
    "upload": (10, 300.0),
}
T0 = 1000.0  # seconds; every µs-exact instant below is T0 + an integer number of µs


def spec_policies(**extra: tuple[int, float]) -> dict[str, PolicySpec]:
    return {n: PolicySpec(limit=lim, window_s=w) for n, (lim, w) in {**SPEC, **extra}.items()}


def new_table(**kw) -> LimiterTable:
    return LimiterTable(spec_policies(), **kw)


def at(us: int) -> float:
    """The instant T0 + `us` microseconds, as a caller's float clock reads it."""
    return (round(T0 * 1_000_000) + us) / 1e6


def burst(table: LimiterTable, policy: str, key: str, now: float, n: int) -> list[RateDecision]:
    return [table.check(policy, key, now) for _ in range(n)]


# -- the spec's policies, exactly ---------------------------------------------------------------


@pytest.mark.parametrize("policy", SPEC)
def test_check_spec_policy_one_instant_allows_exactly_limit_then_refuses(policy):
    limit, window = SPEC[policy]
    t = new_table()
    decisions = burst(t, policy, "user:1", T0, limit)
    assert all(d.allowed for d in decisions)
    assert [d.remaining for d in decisions] == list(range(limit - 1, -1, -1))
    refused = t.check(policy, "user:1", T0)
    assert not refused.allowed
    assert refused.remaining == 0
    assert refused.limit == limit and refused.policy == policy
    assert refused.retry_after_s == window / limit
    assert refused.reset_after_s == window and refused.reset_at == T0 + window


@pytest.mark.parametrize("policy", SPEC)
def test_check_spec_policy_after_one_interval_allows_exactly_one_more(policy):
    limit, window = SPEC[policy]
    interval_us = round(window * 1_000_000) // limit
    t = new_table()
    burst(t, policy, "k", at(0), limit)
    just_before = t.check(policy, "k", at(interval_us - 1))
    assert not just_before.allowed and just_before.retry_after_s == 1e-6
    one_more = t.check(policy, "k", at(interval_us))
    assert one_more.allowed and one_more.remaining == 0
    again = t.check(policy, "k", at(interval_us))
    assert not again.allowed and again.retry_after_s == window / limit


@pytest.mark.parametrize("policy", SPEC)
def test_check_spec_policy_after_full_window_restores_full_quota(policy):
    limit, window = SPEC[policy]
    t = new_table()
    burst(t, policy, "k", T0, limit)
    assert t.peek(policy, "k", T0 + window).remaining == limit
    again = burst(t, policy, "k", T0 + window, limit + 1)
    assert [d.allowed for d in again] == [True] * limit + [False]


def test_check_general_burst_reports_exact_remaining_and_reset():
    t = new_table()
    for k in range(1, 101):
        d = t.check("general", "k", T0)
        assert d.remaining == 100 - k
        assert d.reset_after_s == k * 600_000 / 1e6
        assert d.reset_at == (round(T0 * 1e6) + k * 600_000) / 1e6
        assert d.retry_after_s == 0.0


def test_check_refusals_consume_nothing():
    t = new_table()
    burst(t, "heavy", "k", T0, 10)
    for _ in range(50):
        assert not t.check("heavy", "k", T0 + 3.0).allowed
    assert t.check("heavy", "k", T0 + 6.0).allowed


def test_check_idle_key_behaves_like_fresh_key():
    t = new_table()
    burst(t, "auth", "k", T0, 3)
    later = t.check("auth", "k", T0 + 10_000.0)
    fresh = t.check("auth", "other", T0 + 10_000.0)
    assert later == fresh
    assert later.remaining == 4 and later.reset_after_s == 180.0


@pytest.mark.parametrize("after_us", [0, 1])
def test_check_key_idle_at_or_just_after_tat_behaves_like_fresh_key(after_us):
    t = new_table()
    t.check("heavy", "k", at(0))  # TAT = 6 s
    assert t.check("heavy", "k", at(6_000_000 + after_us)) == t.check(
        "heavy", "fresh", at(6_000_000 + after_us))


def test_check_cost_consumes_that_many_units_and_refusal_names_wait():
    t = new_table()
    d = t.check("general", "k", T0, cost=97)
    assert d.allowed and d.remaining == 3
    refused = t.check("general", "k", T0, cost=5)
    # Needs 2 more units: 2 intervals of 0.6 s.
    assert not refused.allowed and refused.remaining == 3
    assert refused.retry_after_s == 1.2
    ok = t.check("general", "k", T0 + 1.2, cost=5)
    assert ok.allowed and ok.remaining == 0


@pytest.mark.parametrize("cost", [0, -1])
def test_check_cost_below_one_raises_value_error(cost):
    with pytest.raises(ValueError, match="cost must be >= 1"):
        new_table().check("general", "k", T0, cost=cost)


def test_check_cost_above_limit_is_a_refusal_that_says_so_and_consumes_nothing():
    t = new_table()
    d = t.check("auth", "k", T0, cost=6)
    assert d == RateDecision(allowed=False, policy="auth", limit=5, remaining=5, reset_at=T0,
                             reset_after_s=0.0, more_at=T0, retry_after_s=math.inf,
                             reason="cost_exceeds_limit")
    assert len(t) == 0
    assert t.stats()["policies"]["auth"]["rejected"] == 1
    assert t.check("auth", "k", T0, cost=5).remaining == 0
    assert t.check("auth", "k", T0, cost=6).remaining == 0  # says what is left, still never allowed


@pytest.mark.parametrize("cost", [1.5, "2", None])
def test_check_cost_not_an_int_raises_type_error(cost):
    with pytest.raises(TypeError, match="cost must be an int"):
        new_table().check("general", "k", T0, cost=cost)


def test_check_unknown_policy_raises_unknown_policy_naming_known_ones():
    t = new_table()
    with pytest.raises(UnknownPolicy) as info:
        t.check("nope", "k", T0)
    assert isinstance(info.value, KeyError)
    assert info.value.policy == "nope"
    msg = str(info.value)
    assert "'nope'" in msg and all(name in msg for name in SPEC)
    with pytest.raises(UnknownPolicy):
        t.peek("nope", "k", T0)
    with pytest.raises(UnknownPolicy):
        t.reset("nope")


def test_unknown_policy_alone_builds_a_message():
    assert "'x'" in str(UnknownPolicy("x"))


def test_check_window_not_whole_microseconds_per_request_rounds_interval_up():
    # 3 per second: T = 333_333.3 µs, rounded up to 333_334 µs; the effective window is 1.000002 s.
    t = LimiterTable({"p": PolicySpec(limit=3, window_s=1.0)})
    assert [d.allowed for d in burst(t, "p", "k", at(0), 4)] == [True, True, True, False]
    assert t.peek("p", "k", at(1_000_000)).remaining == 2
    assert t.peek("p", "k", at(1_000_002)).remaining == 3
    assert not t.check("p", "k", at(333_333)).allowed
    assert t.check("p", "k", at(333_334)).allowed


def test_check_time_going_backwards_is_tolerated():
    t = new_table()
    burst(t, "heavy", "k", T0 + 100.0, 10)
    d = t.check("heavy", "k", T0)
    assert not d.allowed and d.remaining == 0 and d.retry_after_s > 0
    assert d.reset_after_s == 160.0


# -- peek ---------------------------------------------------------------------------------------


def test_peek_fresh_key_reports_full_quota_and_stores_nothing():
    t = new_table()
    d = t.peek("general", "k", T0)
    assert d == RateDecision(allowed=True, policy="general", limit=100, remaining=100,
                             reset_at=T0, reset_after_s=0.0, more_at=T0,
                             retry_after_s=0.0)
    assert len(t) == 0
    assert t.stats()["policies"]["general"]["allowed"] == 0


def test_peek_after_checks_reports_state_without_consuming():
    t = new_table()
    burst(t, "recording", "k", T0, 4)
    first = t.peek("recording", "k", T0)
    assert first == t.peek("recording", "k", T0)
    assert first.allowed and first.remaining == 26 and first.reset_after_s == 8.0
    assert t.check("recording", "k", T0).remaining == 25


def test_peek_exhausted_key_reports_retry_after():
    t = new_table()
    burst(t, "upload", "k", T0, 10)
    d = t.peek("upload", "k", T0 + 10.0)
    assert not d.allowed and d.remaining == 0
    assert d.retry_after_s == 20.0 and d.reset_after_s == 290.0


def test_peek_does_not_refresh_lru_position():
    t = new_table(max_keys=2)
    t.check("general", "a", T0)
    t.check("general", "b", T0)
    t.peek("general", "a", T0)
    t.check("general", "c", T0)  # evicts the least recently *checked*: a
    assert t.peek("general", "a", T0).remaining == 100
    assert t.peek("general", "b", T0).remaining == 99


# -- exempt, overrides, disabled ----------------------------------------------------------------


def test_check_exempt_key_always_allowed_and_not_stored():
    t = new_table(exempt=frozenset({"ops"}))
    for _ in range(20):
        d = t.check("auth", "ops", T0)
        assert d.allowed and d.remaining == 5 and d.retry_after_s == 0.0 and d.reset_at == T0
    assert t.peek("auth", "ops", T0).remaining == 5
    assert len(t) == 0
    stats = t.stats()["policies"]["auth"]
    assert (stats["allowed"], stats["exempt"], stats["keys"]) == (20, 20, 0)


def test_check_override_key_uses_its_own_limit_others_the_policy():
    t = new_table(overrides={"auth": {"partner": PolicySpec(limit=50, window_s=60.0)}})
    mine = burst(t, "auth", "partner", T0, 51)
    assert [d.allowed for d in mine] == [True] * 50 + [False]
    assert mine[0].limit == 50 and mine[0].remaining == 49
    assert mine[-1].retry_after_s == 1.2
    others = burst(t, "auth", "someone", T0, 6)
    assert [d.allowed for d in others] == [True] * 5 + [False] and others[0].limit == 5
    # The override is per policy: the same key elsewhere has the policy's limit.
    assert t.check("general", "partner", T0).limit == 100


def test_check_override_cost_checked_against_own_limit():
    t = new_table(overrides={"general": {"small": PolicySpec(limit=2, window_s=60.0)}})
    refused = t.check("general", "small", T0, cost=3)
    assert (refused.allowed, refused.limit, refused.reason) == (False, 2, "cost_exceeds_limit")
    assert t.check("general", "big", T0, cost=3).allowed


def test_table_override_for_unknown_policy_raises():
    with pytest.raises(UnknownPolicy, match="'nope'"):
        new_table(overrides={"nope": {"k": PolicySpec(limit=1, window_s=1.0)}})


def test_check_disabled_allows_everything_and_counts_allowed():
    t = new_table(enabled=False)
    for _ in range(10):
        d = t.check("auth", "k", T0)
        assert d.allowed and d.remaining == 5 and d.retry_after_s == 0.0
    assert len(t) == 0
    assert t.stats()["policies"]["auth"]["allowed"] == 10
    assert t.stats()["enabled"] is False
    assert t.check("auth", "k", T0, cost=6).allowed  # everything, even more than the limit
    with pytest.raises(TypeError):
        t.check("auth", "k", T0, cost=2.5)  # but a malformed cost is still an error


# -- reset, expire, eviction, stats -------------------------------------------------------------


def _exhaust_everywhere(t: LimiterTable, keys=("a", "b")) -> None:
    for policy, (limit, _) in SPEC.items():
        for k in keys:
            burst(t, policy, k, T0, limit)


def _exhausted(t: LimiterTable, policy: str, key: str) -> bool:
    return not t.peek(policy, key, T0).allowed


def test_reset_everything_restores_every_quota_keeps_counters():
    t = new_table()
    _exhaust_everywhere(t)
    t.reset()
    assert len(t) == 0
    assert not any(_exhausted(t, p, k) for p in SPEC for k in "ab")
    assert t.stats()["policies"]["general"]["allowed"] == 200


def test_reset_policy_restores_only_that_policy():
    t = new_table()
    _exhaust_everywhere(t)
    t.reset("auth")
    assert not _exhausted(t, "auth", "a") and not _exhausted(t, "auth", "b")
    assert _exhausted(t, "general", "a") and _exhausted(t, "heavy", "b")
    assert t.stats()["policies"]["auth"]["keys"] == 0
    assert len(t) == 8


def test_reset_key_restores_that_key_in_every_policy():
    t = new_table()
    _exhaust_everywhere(t)
    t.reset(key="a")
    assert not any(_exhausted(t, p, "a") for p in SPEC)
    assert all(_exhausted(t, p, "b") for p in SPEC)
    assert len(t) == 5


def test_reset_policy_and_key_restores_one_quota():
    t = new_table()
    _exhaust_everywhere(t)
    t.reset("upload", "a")
    assert not _exhausted(t, "upload", "a")
    assert _exhausted(t, "upload", "b") and _exhausted(t, "general", "a")
    assert t.stats()["policies"]["upload"]["keys"] == 1


def test_expire_drops_only_idle_keys():
    t = new_table()
    t.check("general", "short", T0)  # idle from T0 + 0.6
    burst(t, "auth", "long", T0, 2)  # idle from T0 + 360
    t.check("heavy", "later", T0 + 1.0)  # idle from T0 + 7
    assert t.expire(T0 + 0.5) == 0
    assert t.expire(T0 + 10.0) == 2
    assert len(t) == 1 and t.stats()["policies"]["auth"]["keys"] == 1
    assert t.peek("auth", "long", T0 + 10.0).remaining == 3
    assert t.expire(T0 + 360.0) == 1
    assert len(t) == 0 and t.stats()["expired"] == 3


def test_expire_examines_at_most_budget_keys_in_lru_order():
    t = new_table()
    for i in range(10):
        t.check("general", f"k{i}", T0)
    assert t.expire(T0 + 60.0, budget=3) == 3
    assert t.peek("general", "k2", T0).remaining == 100  # dropped: the three oldest
    assert t.peek("general", "k3", T0).remaining == 99
    assert t.expire(T0 + 60.0, budget=0) == 0
    assert t.expire(T0 + 60.0, budget=100) == 7


def test_check_full_table_evicts_least_recently_used():
    t = new_table(max_keys=3)
    for k in "abc":
        t.check("general", k, T0)
    t.check("general", "a", T0)  # order now b, c, a
    t.check("auth", "d", T0)  # full: evicts b
    assert len(t) == 3
    assert t.peek("general", "b", T0).remaining == 100
    assert t.peek("general", "a", T0).remaining == 98
    assert t.peek("general", "c", T0).remaining == 99
    stats = t.stats()
    assert stats["evictions"] == 1 and stats["policies"]["general"]["keys"] == 2


def test_check_refused_request_counts_as_use_for_lru():
    t = new_table(max_keys=2)
    burst(t, "auth", "attacker", T0, 5)
    t.check("general", "x", T0)
    assert not t.check("auth", "attacker", T0).allowed  # touched: now most recent
    t.check("general", "y", T0)  # evicts x, not the attacker's exhausted quota
    assert not t.peek("auth", "attacker", T0).allowed


def test_check_large_full_table_evicts_lru_in_small_batches():
    t = new_table(max_keys=2048)  # batch of 2048 // 256 = 8
    for i in range(2048):
        t.check("general", f"k{i}", T0)
    t.check("general", "new", T0)
    assert len(t) == 2048 - 8 + 1 and t.stats()["evictions"] == 8
    assert t.peek("general", "k7", T0).remaining == 100
    assert t.peek("general", "k8", T0).remaining == 99


def test_check_touch_churn_compacts_dict_and_keeps_every_state():
    # 50k keys touched many times: CPython's dict would grow to ~77 bytes/key of slots;
    # the table rebuilds it and no state is lost.
    n = 50_000
    t = new_table(max_keys=n)
    keys = [f"user:{i}" for i in range(n)]
    for _ in range(5):
        for k in keys:
            t.check("general", k, T0)
    assert t.stats()["compactions"] >= 1
    assert len(t) == n and t.stats()["evictions"] == 0
    assert all(t.peek("general", k, T0).remaining == 95 for k in keys)
    t.expire(T0, budget=1_000_000)  # a maintenance point
    assert t.key_dict_bytes() <= 64 * n + 16_384


def test_stats_reports_per_policy_counts_and_totals():
    t = new_table(max_keys=7)
    burst(t, "heavy", "k", T0, 12)
    t.check("general", "a", T0)
    s = t.stats()
    assert s["keys"] == 2 and s["max_keys"] == 7 and s["evictions"] == 0
    assert s["policies"]["heavy"] == {"limit": 10, "window_s": 60.0, "allowed": 10,
                                      "rejected": 2, "exempt": 0, "keys": 1}
    assert s["policies"]["general"]["allowed"] == 1


# -- construction -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "window", "error"),
    [(0, 1.0, ValueError), (-3, 1.0, ValueError), (True, 1.0, TypeError), (2.0, 1.0, TypeError),
     (1, 0.0, ValueError), (1, -1.0, ValueError), (1, math.nan, ValueError),
     (1, math.inf, ValueError), (1, 1e-9, ValueError), (1, "60", TypeError),
     (1, 2e9, ValueError), (2**40, 1e10, ValueError)],
)
def test_policy_spec_invalid_values_raise(limit, window, error):
    with pytest.raises(error):
        PolicySpec(limit=limit, window_s=window)


@pytest.mark.parametrize("max_keys", [0, -1, 1.5])
def test_table_max_keys_not_positive_int_raises(max_keys):
    with pytest.raises(ValueError, match="max_keys"):
        new_table(max_keys=max_keys)


# -- invariants under random input --------------------------------------------------------------


class Model:
    """Independent reference: a leaky bucket per (policy, key) in exact fractions, drained
    at 1 unit per emission interval, capacity `limit`; an LRU of at most `max_keys` entries."""

    def __init__(self, specs, overrides, exempt, max_keys, enabled=True):
        self.rates = {n: self._rate(s) for n, s in specs.items()}
        self.over = {p: {k: self._rate(s) for k, s in d.items()} for p, d in overrides.items()}
        self.exempt, self.max_keys, self.enabled = exempt, max_keys, enabled
        self.batch = max(1, max_keys // 256)
        self.lru: OrderedDict[tuple[str, str], tuple[Fraction, int]] = OrderedDict()

    @staticmethod
    def _rate(spec):
        return spec.limit, -(-round(spec.window_s * 1_000_000) // spec.limit)  # (limit, T µs)

    def _level(self, policy, key, t):
        limit, interval = self.over.get(policy, {}).get(key, self.rates[policy])
        level, since = self.lru.get((policy, key), (Fraction(0), t))
        return limit, interval, max(Fraction(0), level - Fraction(t - since, interval))

    def decide(self, policy, key, t, cost, consume):
        limit, interval, level = self._level(policy, key, t)
        now = (round(T0 * 1_000_000) + t) / 1e6
        if not self.enabled or key in self.exempt:
            return RateDecision(allowed=True, policy=policy, limit=limit, remaining=limit,
                                reset_at=now, reset_after_s=0.0, more_at=now,
                                retry_after_s=0.0)
        allowed = level + cost <= limit
        if consume:
            if (policy, key) in self.lru:
                self.lru.move_to_end((policy, key))
            elif len(self.lru) >= self.max_keys:
                for _ in range(self.batch):
                    self.lru.popitem(last=False)
            if allowed:
                level += cost
            self.lru[(policy, key)] = (level, t)
        reset_us = level * interval
        assert reset_us.denominator == 1
        # the next unit back: when `remaining` (floor(limit - level)) next grows by one
        more_us = 0 if level == 0 else (level - math.ceil(level) + 1) * interval
        assert Fraction(more_us).denominator == 1
        return RateDecision(
            allowed=allowed, policy=policy, limit=limit,
            remaining=math.floor(limit - level),
            reset_at=(round(T0 * 1_000_000) + t + int(reset_us)) / 1e6,
            reset_after_s=int(reset_us) / 1e6,
            more_at=(round(T0 * 1_000_000) + t + int(more_us)) / 1e6,
            retry_after_s=0.0 if allowed else int((level + cost - limit) * interval) / 1e6,
        )

    def expire(self, t, budget):
        victims = [pk for pk in list(self.lru)[:budget] if self._level(*pk, t)[2] == 0]
        for pk in victims:
            del self.lru[pk]
        return len(victims)


# A small world: a few keys, the spec's policies and one whose window is not whole microseconds
# per request; time steps chosen to land on, just before and just after interval boundaries.
POLICIES = spec_policies(odd=(3, 1.0))
OVERRIDES = {"general": {"k1": PolicySpec(limit=4, window_s=2.0)},
             "auth": {"k2": PolicySpec(limit=50, window_s=60.0)}}
EXEMPT = frozenset({"vip"})
keys = st.sampled_from(["k0", "k1", "k2", "k3", "vip"])
policies = st.sampled_from(sorted(POLICIES))
steps = st.one_of(
    st.just(0),
    st.integers(0, 3_000_000),
    st.sampled_from([1, 333_333, 333_334, 500_000, 599_999, 600_000, 2_000_000, 6_000_000,
                     30_000_000, 60_000_000, 180_000_000, 900_000_000]),
)
checks = st.tuples(st.just("check"), policies, keys, steps, st.integers(1, 5))
peeks = st.tuples(st.just("peek"), policies, keys, steps, st.just(1))
expires = st.tuples(st.just("expire"), st.just(""), st.just(""), steps, st.integers(0, 6))
ops = st.lists(st.one_of(checks, checks, peeks, expires), max_size=120)


def _run(table, model, seq, *, check_table=True):
    t = 0
    for op, policy, key, step, n in seq:
        t += step
        now = at(t)
        if op == "expire":
            assert table.expire(now, n) == model.expire(t, n)
            continue
        limit = model._level(policy, key, t)[0]
        cost = min(n, limit)
        if op == "check":
            got = table.check(policy, key, now, cost)
        else:
            got = table.peek(policy, key, now)
        want = model.decide(policy, key, t, cost, consume=op == "check")
        assert got == want
        assert 0 <= got.remaining <= got.limit
        assert got.reset_after_s >= 0 and got.retry_after_s >= 0
        assert (got.retry_after_s == 0) == got.allowed
        if check_table:
            assert len(table) == len(model.lru) <= model.max_keys
            per_policy = table.stats()["policies"]
            assert sum(p["keys"] for p in per_policy.values()) == len(table)


@settings(max_examples=300, deadline=None)
@given(ops, st.sampled_from([1, 2, 3, 5, 100]))
def test_table_random_ops_match_leaky_bucket_model_with_lru(seq, max_keys):
    table = LimiterTable(POLICIES, max_keys=max_keys, overrides=OVERRIDES, exempt=EXEMPT)
    model = Model(POLICIES, OVERRIDES, EXEMPT, max_keys)
    _run(table, model, seq)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(policies, keys, steps, st.integers(1, 5)), max_size=60),
       st.sets(st.sampled_from(["k0", "k1", "k2", "k3", "vip"])))
def test_table_exempt_keys_always_allowed_never_stored(seq, exempt):
    table = LimiterTable(POLICIES, overrides=OVERRIDES, exempt=frozenset(exempt))
    t, stored = 0, set()
    for policy, key, step, n in seq:
        t += step
        limit = Model._rate(OVERRIDES.get(policy, {}).get(key, POLICIES[policy]))[0]
        d = table.check(policy, key, at(t), min(n, limit))
        assert d.limit == limit
        if key in exempt:
            assert d.allowed and d.remaining == limit
        else:
            stored.add((policy, key))
        assert len(table) == len(stored)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(policies, keys, steps, st.integers(1, 5)), max_size=60))
def test_table_disabled_allows_all_counts_all_stores_nothing(seq):
    table = LimiterTable(POLICIES, overrides=OVERRIDES, enabled=False)
    t = 0
    for policy, key, step, n in seq:
        t += step
        limit = Model._rate(OVERRIDES.get(policy, {}).get(key, POLICIES[policy]))[0]
        d = table.check(policy, key, at(t), min(n, limit))
        assert d.allowed and d.remaining == d.limit == limit and d.retry_after_s == 0.0
    stats = table.stats()
    assert stats["keys"] == 0
    assert sum(p["allowed"] for p in stats["policies"].values()) == len(seq)
    assert sum(p["rejected"] for p in stats["policies"].values()) == 0


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(POLICIES)),
       st.lists(st.tuples(st.integers(0, 5_000_000), st.integers(1, 5)), min_size=1, max_size=80))
def test_check_allowed_units_in_any_interval_never_exceed_limit_plus_refill(policy, seq):
    spec = POLICIES[policy]
    window_us = round(spec.window_s * 1_000_000)
    table = LimiterTable(POLICIES)
    t, allowed = 0, []  # (time µs, units)
    for step, n in seq:
        t += step
        cost = min(n, spec.limit)
        if table.check(policy, "k", at(t), cost).allowed:
            allowed.append((t, cost))
    for i, (start, _) in enumerate(allowed):
        units = 0
        for end, cost in allowed[i:]:
            units += cost
            assert units <= spec.limit + (end - start) * spec.limit // window_us


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(checks, peeks, expires), max_size=120))
def test_table_expire_at_random_times_never_changes_decisions(seq):
    plain = LimiterTable(POLICIES, overrides=OVERRIDES, exempt=EXEMPT)
    swept = LimiterTable(POLICIES, overrides=OVERRIDES, exempt=EXEMPT)
    t = 0
    for op, policy, key, step, n in seq:
        t += step
        now = at(t)
        if op == "expire":
            swept.expire(now, n)
            continue
        limit = Model._rate(OVERRIDES.get(policy, {}).get(key, POLICIES[policy]))[0]
        if op == "check":
            assert plain.check(policy, key, now, min(n, limit)) == swept.check(
                policy, key, now, min(n, limit))
        else:
            assert plain.peek(policy, key, now) == swept.peek(policy, key, now)
        assert len(swept) <= len(plain)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40),
       st.lists(st.tuples(policies, st.integers(0, 200), st.integers(0, 2_000_000)), max_size=200))
def test_table_random_keys_never_exceed_max_keys(max_keys, seq):
    table = LimiterTable(POLICIES, max_keys=max_keys)
    t = 0
    for policy, key, step in seq:
        t += step
        table.check(policy, f"user:{key}", at(t))
        stats = table.stats()
        assert stats["keys"] == len(table) <= max_keys
        assert sum(p["keys"] for p in stats["policies"].values()) == len(table)
