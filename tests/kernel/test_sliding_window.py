"""Sliding-window policies: at most `limit` units in any window (random arrivals, every window
boundary checked), GCRA's larger any-window count, the draft's `t`, peek, memory, config."""

from __future__ import annotations

import gc
import tracemalloc

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import open_monitoring
from actors.limiter_core import LimiterTable, PolicySpec
from messages.config import Config, RatePolicy, validate
from messages.errors import ConfigError

T0_US = 1_000_000_000  # every instant below is T0_US + whole microseconds


def at(us: int) -> float:
    return (T0_US + us) / 1e6


def table(limit: int, window_s: float, algorithm: str = "sliding_window", **kw) -> LimiterTable:
    return LimiterTable({"p": PolicySpec(limit=limit, window_s=window_s, algorithm=algorithm)}, **kw)


def most_in_any_window(admitted: list[tuple[int, int]], window_us: int) -> int:
    """The largest number of units admitted in one half-open window [a, a + window): the maximum
    is reached by a window starting at an admitted instant, so every such boundary is checked."""
    return max((sum(c for t, c in admitted if a <= t < a + window_us) for a, _ in admitted), default=0)


arrivals = st.lists(st.tuples(st.integers(0, 400_000), st.integers(1, 3)), min_size=1, max_size=120)


@settings(max_examples=300, deadline=None)
@given(limit=st.integers(1, 8), window_us=st.integers(1, 1_000_000), steps=arrivals)
def test_sliding_window_never_admits_more_than_limit_in_any_window(limit, window_us, steps):
    t = table(limit, window_us / 1e6)
    now, admitted, log = 0, [], []  # log: a plain model, the instants of counted units
    for gap, cost in steps:
        now += gap
        d = t.check("p", "k", at(now), cost)
        log = [u for u in log if u + window_us > now]  # a unit counts while now < t + window
        fits = cost <= limit and len(log) + cost <= limit
        assert d.allowed == fits
        if fits:
            log += [now] * cost
            admitted.append((now, cost))
        assert d.remaining == limit - len(log)
        assert d.more_at == at(log[0] + window_us if log else now)
    assert most_in_any_window(admitted, window_us) <= limit


@pytest.mark.parametrize(("limit", "window_s", "gcra_most"), [(5, 900.0, 9), (10, 60.0, 19)])
def test_sliding_window_auth_and_heavy_exact_where_gcra_lets_nearly_twice_through(limit, window_s, gcra_most):
    # The count: a client sending one request every 100 ms for a whole window.
    window_us = round(window_s * 1e6)
    for algorithm, most in (("gcra", gcra_most), ("sliding_window", limit)):
        t = table(limit, window_s, algorithm)
        admitted = [(us, 1) for us in range(0, 2 * window_us, 100_000) if t.check("p", "k", at(us)).allowed]
        assert most_in_any_window(admitted, window_us) == most, algorithm


def test_sliding_window_t_is_when_the_oldest_counted_request_leaves():
    t = table(5, 900.0)
    t.check("p", "k", at(0))
    d = t.check("p", "k", at(100_000_000))  # 2 of 5, the first 100 s ago
    assert (d.remaining, d.more_at, d.reset_after_s) == (3, at(900_000_000), 900.0)
    for _ in range(3):
        t.check("p", "k", at(100_000_000))
    refused = t.check("p", "k", at(100_000_000))
    assert (refused.allowed, refused.remaining) == (False, 0)
    assert (refused.retry_after_s, refused.more_at) == (800.0, at(900_000_000))
    again = t.check("p", "k", at(900_000_000))  # the first one has left: exactly one more
    assert (again.allowed, again.remaining) == (True, 0)
    assert not t.check("p", "k", at(900_000_000)).allowed


def test_gcra_t_is_the_next_unit_back_not_the_full_restore():
    t = table(5, 900.0, "gcra")
    t.check("p", "k", at(0))
    d = t.check("p", "k", at(0))
    assert (d.remaining, d.more_at, d.reset_after_s) == (3, at(180_000_000), 360.0)


def test_sliding_window_cost_needs_that_many_free_slots():
    t = table(5, 10.0)
    assert t.check("p", "k", at(0), cost=3).remaining == 2
    t.check("p", "k", at(1_000_000), cost=2)
    refused = t.check("p", "k", at(2_000_000), cost=4)
    assert not refused.allowed
    assert refused.retry_after_s == 9.0  # the 4th oldest unit (admitted at +1 s) leaves at +11 s
    assert refused.more_at == at(10_000_000)  # but the first three are back at +10 s
    assert t.check("p", "k", at(10_000_000), cost=3).allowed


def test_sliding_window_peek_spends_nothing_and_stores_nothing():
    t = table(2, 10.0)
    assert t.peek("p", "k", at(0)).remaining == 2
    assert len(t) == 0
    t.check("p", "k", at(0))
    for _ in range(5):
        assert t.peek("p", "k", at(1)).remaining == 1
    assert t.check("p", "k", at(1)).allowed
    peeked = t.peek("p", "k", at(2))
    assert (peeked.allowed, peeked.retry_after_s) == (False, 10.0 - 2e-6)
    assert t.stats()["policies"]["p"]["allowed"] == 2


def test_sliding_window_expire_drops_only_keys_with_nothing_in_the_window():
    t = table(3, 10.0)
    t.check("p", "old", at(0))
    t.check("p", "new", at(5_000_000))
    assert t.expire(at(10_000_000)) == 1
    assert len(t) == 1
    assert t.peek("p", "new", at(10_000_000)).remaining == 2


def test_sliding_window_time_going_backwards_keeps_the_log_ordered():
    t = table(3, 10.0)
    t.check("p", "k", at(5_000_000))
    t.check("p", "k", at(1_000_000))  # an earlier instant: leaves earlier, stays in order
    d = t.check("p", "k", at(5_000_000))
    assert (d.remaining, d.more_at) == (0, at(11_000_000))
    assert t.check("p", "k", at(11_000_000)).remaining == 0  # the +1 s unit left; one slot, used


def test_sliding_window_override_keeps_the_policys_algorithm():
    t = LimiterTable({"p": PolicySpec(limit=2, window_s=10.0, algorithm="sliding_window")},
                     overrides={"p": {"vip": PolicySpec(limit=4, window_s=10.0)}})
    assert [t.check("p", "vip", at(0)).allowed for _ in range(5)] == [True] * 4 + [False]
    assert t.check("p", "vip", at(0)).retry_after_s == 10.0


def test_sliding_window_bytes_per_key_within_8_per_request_plus_40_beyond_gcra():
    def per_key(algorithm: str, limit: int, n: int = 5000) -> float:
        gc.collect()
        tracemalloc.start()
        try:
            t = table(limit, 60.0, algorithm, max_keys=n)
            for i in range(n):
                t.check("p", f"user:{i}", at(0))
            gc.collect()
            return tracemalloc.get_traced_memory()[0] / n
        finally:
            tracemalloc.stop()

    for limit in (5, 10, 30, 64):
        beyond = per_key("sliding_window", limit) - per_key("gcra", limit)
        assert beyond <= 8 * limit + 40, (limit, beyond)


def test_policy_spec_and_config_reject_an_unknown_algorithm():
    with pytest.raises(ValueError, match="algorithm"):
        PolicySpec(limit=5, window_s=1.0, algorithm="fixed_window")
    policies = {**Config().policies, "auth": RatePolicy(limit=5, window_s=900.0, algorithm="leaky")}
    with pytest.raises(ConfigError, match="policies.auth.algorithm"):
        validate(Config(policies=policies))


def test_config_default_algorithm_is_sliding_window_up_to_64_requests():
    chosen = {name: p.resolved_algorithm() for name, p in Config().policies.items()}
    assert chosen == {"general": "gcra", "auth": "sliding_window", "recording": "sliding_window",
                      "heavy": "sliding_window", "upload": "sliding_window"}
    assert RatePolicy(limit=64, window_s=1.0).resolved_algorithm() == "sliding_window"
    assert RatePolicy(limit=65, window_s=1.0).resolved_algorithm() == "gcra"
    assert RatePolicy(limit=5, window_s=1.0, algorithm="gcra").resolved_algorithm() == "gcra"


async def test_mon_peek_rate_decides_without_spending_on_mock_clock(autojump_clock):
    async with open_monitoring(Config()) as mon:
        for _ in range(4):
            await mon.check_rate("auth", "user:1")
        for _ in range(3):
            peeked = await mon.peek_rate("auth", "user:1")
            assert (peeked.allowed, peeked.remaining) == (True, 1)
        await trio.sleep(100.0)  # MockClock
        assert (await mon.check_rate("auth", "user:1")).remaining == 0
        refused = await mon.peek_rate("auth", "user:1")
        assert (refused.allowed, refused.retry_after_s) == (False, pytest.approx(800.0))
        await trio.sleep(800.0)  # the first four leave the window, the fifth stays
        assert (await mon.peek_rate("auth", "user:1")).remaining == 4
        snap = await mon.snapshot()
        assert (snap.limiter.policies["auth"].allowed, snap.limiter.policies["auth"].rejected) == (5, 0)


async def test_mon_peek_rate_bad_input_is_an_error_to_the_caller(autojump_clock):
    async with open_monitoring(Config()) as mon:
        with pytest.raises(KeyError, match="unknown rate-limit policy"):
            await mon.peek_rate("nope", "k")
        with pytest.raises(TypeError):
            await mon.peek_rate(3, "k")  # type: ignore[arg-type]
        assert (await mon.peek_rate("general", "k")).allowed
