"""Lent keys (the pure core): a table that lends its keys to callers decides exactly as one
that decides everything itself, whatever mix of owner and caller decisions, peeks, reviews,
expiry and resets; the owner takes leases back, keeps lent keys off the eviction front, and
lends no more than `lend` keys."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.limiter_core import LimiterTable, PolicySpec

POLICIES = {
    "general": PolicySpec(limit=100, window_s=60.0),
    "auth": PolicySpec(limit=5, window_s=900.0, algorithm="sliding_window"),
    "heavy": PolicySpec(limit=10, window_s=60.0, algorithm="sliding_window"),
    "odd": PolicySpec(limit=3, window_s=1.0),
}
OVERRIDES = {"general": {"k1": PolicySpec(limit=4, window_s=2.0)},
             "auth": {"k2": PolicySpec(limit=7, window_s=60.0)}}
EXEMPT = frozenset({"vip"})
T0_US = 1_000_000_000


def at(us: int) -> float:
    return (T0_US + us) / 1e6


def tables(lend: int, **kw) -> tuple[LimiterTable, LimiterTable]:
    """(the owner deciding alone, a table lending up to `lend` keys)"""
    return (LimiterTable(POLICIES, overrides=OVERRIDES, exempt=EXEMPT, **kw),
            LimiterTable(POLICIES, overrides=OVERRIDES, exempt=EXEMPT, lend=lend, **kw))


def counts(table: LimiterTable) -> dict:
    return {n: (p["allowed"], p["rejected"], p["exempt"]) for n, p in table.stats()["policies"].items()}


def limit_of(policy: str, key: str) -> int:
    return OVERRIDES.get(policy, {}).get(key, POLICIES[policy]).limit


keys = st.sampled_from(["k0", "k1", "k2", "k3", "vip"])
policies = st.sampled_from(sorted(POLICIES))
steps = st.one_of(st.just(0), st.integers(0, 3_000_000),
                  st.sampled_from([1, 333_333, 600_000, 2_000_000, 60_000_000, 900_000_000]))
ops = st.lists(st.tuples(
    st.sampled_from(["check", "check_lent", "check_lent", "peek", "peek_lent", "review",
                     "expire", "reset_key", "reset_policy"]),
    policies, keys, steps, st.integers(1, 8)), max_size=150)


@settings(max_examples=300, deadline=None)
@given(ops, st.sampled_from([1, 2, 64]))
def test_lending_random_ops_decide_exactly_as_the_owner_alone(seq, lend):
    alone, lending = tables(lend)
    t = 0
    for op, policy, key, step, n in seq:
        t += step
        now = at(t)
        cost = min(n, limit_of(policy, key) + 1)  # one above the limit: the owner's refusal
        if op == "check":
            assert lending.check(policy, key, now, cost) == alone.check(policy, key, now, cost)
        elif op == "check_lent":
            got = lending.lent.check(policy, key, now, cost) or lending.check(policy, key, now, cost)
            assert got == alone.check(policy, key, now, cost)
        elif op == "peek":
            assert lending.peek(policy, key, now) == alone.peek(policy, key, now)
        elif op == "peek_lent":
            got = lending.lent.peek(policy, key, now) or lending.peek(policy, key, now)
            assert got == alone.peek(policy, key, now)
        elif op == "review":
            lending.review_lent()
        elif op == "expire":
            lending.expire(now, n)
            alone.expire(now, n)
        elif op == "reset_key":
            lending.reset(key=key)
            alone.reset(key=key)
        else:
            lending.reset(policy)
            alone.reset(policy)
        assert counts(lending) == counts(alone)
        assert len(lending.lent) <= lend
        assert lending.stats()["lent"] == len(lending.lent)


def test_lending_lends_each_decided_key_up_to_lend_then_decides_itself():
    _, table = tables(lend=2)
    for key in ("k0", "k3", "k4"):
        table.check("general", key, at(0))
    assert table.lent.check("general", "k0", at(1)).remaining == 98
    assert table.lent.check("general", "k3", at(1)).remaining == 98
    assert table.lent.check("general", "k4", at(1)) is None  # the third was not lent
    assert table.lent.check("general", "never", at(1)) is None
    assert table.lent.check("nope", "k0", at(1)) is None  # the owner names the unknown policy
    assert len(table.lent) == 2


def test_lending_lent_check_leaves_cost_above_limit_to_the_owner():
    _, table = tables(lend=8)
    table.check("odd", "k0", at(0))
    assert table.lent.check("odd", "k0", at(1), 4) is None
    refused = table.check("odd", "k0", at(1), 4)
    assert (refused.allowed, refused.reason) == (False, "cost_exceeds_limit")
    assert table.lent.check("odd", "k0", at(1), 2).remaining == 0  # still lent, nothing spent


def test_lending_review_takes_back_leases_unused_since_the_last_review():
    _, table = tables(lend=8)
    table.check("auth", "k0", at(0))
    table.check("general", "k3", at(0))
    assert table.review_lent() == 0  # both used since they were lent
    table.lent.check("general", "k3", at(10))
    assert table.review_lent() == 1  # k0 idle for a whole review: back with the owner
    assert table.lent.check("auth", "k0", at(20)) is None
    assert table.check("auth", "k0", at(20)).remaining == 3  # its state came back with it
    assert len(table.lent) == 2  # and it is lent again


def test_lending_review_moves_lent_keys_in_use_to_the_lru_end():
    _, table = tables(lend=1, max_keys=2)
    table.check("general", "k0", at(0))  # lent
    table.check("general", "k3", at(0))  # not lent: the cap is 1
    table.lent.check("general", "k0", at(1))
    table.review_lent()  # k0 in use: now the most recently used
    table.check("general", "k4", at(2))  # a full table evicts the LRU front: k3
    assert table.peek("general", "k0", at(2)).remaining == 98
    assert table.peek("general", "k3", at(2)).remaining == 100  # forgotten


def test_lending_eviction_passes_over_lent_keys_unless_only_lent_keys_are_left():
    _, table = tables(lend=1, max_keys=2)
    table.check("general", "k0", at(0))  # lent, at the LRU front
    table.check("general", "k3", at(0))
    table.check("general", "k4", at(1))  # evicts k3, not the lent k0
    assert table.lent.check("general", "k0", at(1)).remaining == 98
    assert table.peek("general", "k3", at(1)).remaining == 100
    _, only = tables(lend=4, max_keys=1)
    only.check("general", "k0", at(0))
    only.check("general", "k3", at(1))  # only lent keys to evict: k0 goes, lease and all
    assert only.lent.check("general", "k0", at(1)) is None
    assert len(only) == 1 and len(only.lent) == 1


def test_lending_reset_and_expire_take_leases_back():
    _, table = tables(lend=8)
    for key in ("k0", "k3"):
        table.check("general", key, at(0))
        table.check("auth", key, at(0))
    table.reset(key="k0")
    assert table.lent.check("general", "k0", at(1)) is None
    table.reset("auth")
    assert table.lent.check("auth", "k3", at(1)) is None
    assert table.lent.check("general", "k3", at(1)).remaining == 98
    assert table.expire(at(3_600_000_000), 10) == 1  # k3, idle: dropped, lease and all
    assert len(table.lent) == 0 and len(table) == 0


def test_lending_exempt_and_disabled_keys_are_decided_by_callers_and_counted():
    _, table = tables(lend=8)
    assert table.lent.check("auth", "vip", at(0), 9).allowed  # exempt: whatever the cost
    off = LimiterTable(POLICIES, enabled=False, lend=8)
    assert all(off.lent.check("auth", "k0", at(0)).allowed for _ in range(20))
    assert off.lent.peek("auth", "k0", at(0)).remaining == 5
    assert counts(table)["auth"] == (1, 0, 1) and counts(off)["auth"] == (20, 0, 0)
    assert len(table) == len(off) == 0


@pytest.mark.parametrize("lend", [-1, 1.5, "8"])
def test_table_lend_not_a_non_negative_int_raises(lend):
    with pytest.raises(ValueError, match="lend"):
        LimiterTable(POLICIES, lend=lend)
