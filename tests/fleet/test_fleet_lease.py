"""The lease and refund scripts on a real Redis against their pure cores (Hypothesis)."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.fleet.lease import (
    LEASE_LUA,
    REFUND_LUA,
    gcra_lease,
    gcra_refund,
    interval_us,
    window_lease,
    window_refund,
)
from tests.fleet.redis_helpers import redis_prefix

# (advance in us, op, n): a lease of n, or a refund of up to n of the oldest unrefunded lease
OPS = st.lists(st.tuples(st.integers(0, 400_000), st.sampled_from(["lease", "refund"]),
                         st.integers(1, 12)), min_size=1, max_size=40)
LIMITS = st.tuples(st.integers(1, 15), st.sampled_from([0.1, 0.5, 1.0, 2.0]))
START = 1_700_000_000_000_000  # an epoch instant in us, like Redis's TIME


async def _lease(c, key, algo, span, limit, want, tau, now):
    r = await c.eval(LEASE_LUA, keys=[key, key + ":seq"], args=[algo, span, limit, want, tau, now])
    return int(r[0]), int(r[1]), int(r[2]), int(r[3]), r[4]


async def _refund(c, key, algo, span, n, now, lease_id, grant):
    await c.eval(REFUND_LUA, keys=[key], args=[algo, span, n, now, lease_id, grant])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS, limits=LIMITS)
async def test_lease_gcra_script_matches_the_pure_core_and_bounds_the_grants(ops, limits):
    limit, window_s = limits
    t = interval_us(limit, window_s)
    async with redis_prefix() as (c, prefix):
        key, now, tat = prefix + "k", START, 0.0
        leases: list[list[int]] = []  # [left to refund] per lease
        net = 0
        for advance, op, n in ops:
            now += advance
            if op == "lease":
                tat, g, wait, remaining = gcra_lease(tat, now, t, limit, n)
                got = await _lease(c, key, "gcra", t, limit, n, 0, now)
                assert got[:4] == (g, wait, remaining, now)
                leases.append([g])
                net += g
            elif leases:
                back = min(n, leases[0][0])
                tat = gcra_refund(tat, now, t, back)
                await _refund(c, key, "gcra", t, back, now, 0, 0)
                leases[0][0] -= back
                net -= back
                if not leases[0][0]:
                    leases.pop(0)
            # never more net grants than a burst plus one a T since the start
            assert net <= limit + math.ceil((now - START) / t)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS, limits=LIMITS, tau=st.sampled_from([0, 10_000, 100_000]))
async def test_lease_window_script_matches_the_pure_core_and_never_exceeds_the_limit(ops, limits, tau):
    limit, window_s = limits
    w = round(window_s * 1_000_000)
    async with redis_prefix() as (c, prefix):
        key, now, counted = prefix + "w", START, []
        leases: list[list] = []  # [left, lease id, grant, leave instant]
        for advance, op, n in ops:
            now += advance
            if op == "lease":
                counted, g, wait, remaining = window_lease(counted, now, w, limit, n, tau)
                got = await _lease(c, key, "window", w, limit, n, tau, now)
                assert got[:4] == (g, wait, remaining, now)
                if g:
                    leases.append([g, got[4], g, now + w + tau])
            elif leases:
                left, lease_id, grant, leave = leases[0]
                back = min(n, left)
                await _refund(c, key, "window", 0, back, now, lease_id, left)
                counted = window_refund(counted, leave, back)
                leases[0][0] -= back
                if not leases[0][0]:
                    leases.pop(0)
            assert await c.zcount(key, f"({now}", "+inf") == sum(1 for x in counted if x > now) <= limit


async def test_lease_keys_all_have_a_ttl():
    async with redis_prefix() as (c, prefix):
        await _lease(c, prefix + "g", "gcra", 100_000, 5, 3, 0, "")
        await _lease(c, prefix + "w", "window", 1_000_000, 5, 3, 100_000, "")
        keys = [k async for k in c.scan_iter(match=f"{prefix}*")]
        assert len(keys) == 3  # g, w and w's lease counter
        for k in keys:
            assert 0 < await c.pttl(k) <= 1_201_000
