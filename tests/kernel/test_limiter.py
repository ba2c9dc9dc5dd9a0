"""The limiter as callers see it (`mon.check_rate`, `mon.peek_rate`, `mon.reset_rate`) on
trio's MockClock, with keys lent to callers: the same decisions as the bare table fed the same
calls, the exact window's bound and GCRA's with concurrent callers, peeks that spend nothing,
cancellation that spends nothing, exact counters, and leases the actor takes back."""

from __future__ import annotations

import random

import msgspec
import pytest
import trio
import trio.testing

from actors import open_monitoring
from actors.limiter import REVIEW_EVERY_S, LimiterState
from messages.config import Config, LimiterConfig, RatePolicy


def config(**policies: RatePolicy) -> Config:
    cfg = Config()
    limiter = LimiterConfig(exempt_keys=("vip",),
                            overrides={"general": {"user:7": RatePolicy(limit=3, window_s=6.0)}})
    return msgspec.structs.replace(cfg, policies={**cfg.policies, **policies}, limiter=limiter)


def most_in_any_window(times: list[float], window_s: float) -> int:
    """Largest number of admissions in one half-open window [a, a + window)."""
    return max((sum(1 for t in times if a <= t < a + window_s) for a in times), default=0)


@pytest.mark.parametrize("seed", range(3))
async def test_mon_check_rate_decides_as_the_bare_table_fed_the_same_calls(autojump_clock, seed):
    rnd = random.Random(seed)
    cfg = config()
    async with open_monitoring(cfg) as mon:
        table = LimiterState.initial(msgspec.structs.replace(cfg), trio.current_time()).table
        lent_hits = 0
        for _ in range(300):
            policy = rnd.choice(["general", "auth", "heavy", "recording"])
            key = rnd.choice(["user:1", "user:2", "user:7", "vip", f"ip:{rnd.randrange(50)}"])
            op = rnd.random()
            lent_hits += mon.limiter.lent.peek(policy, key, trio.current_time()) is not None
            if op < 0.6:
                cost = rnd.choice([1, 1, 1, 2, 4, 40])
                assert await mon.check_rate(policy, key, cost) == table.check(
                    policy, key, trio.current_time(), cost)
            elif op < 0.8:
                assert await mon.peek_rate(policy, key) == table.peek(policy, key, trio.current_time())
            elif op < 0.83:
                await mon.reset_rate(key=key)
                table.reset(key=key)
            else:
                await trio.sleep(rnd.choice([0.001, 0.5, 2.0, 7.0, 61.0]))
        snap = await mon.snapshot()
        assert lent_hits > 80  # most decisions were the callers' own, on lent keys
        for name, p in table.stats()["policies"].items():
            got = snap.limiter.policies[name]
            assert (got.allowed, got.rejected) == (p["allowed"], p["rejected"])  # (keys: the actor expires)


async def _hammer(mon, policy: str, until_s: float, seed: int, sleeps: list[float]) -> list[float]:
    """Four tasks checking one key, sleeping a random choice of `sleeps` between checks,
    until `until_s`: the admission instants."""
    admitted: list[float] = []

    async def caller(rnd: random.Random) -> None:
        while trio.current_time() < until_s:
            if (await mon.check_rate(policy, "ip:203.0.113.7")).allowed:
                admitted.append(trio.current_time())
            await trio.sleep(rnd.choice(sleeps))

    async with trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(caller, random.Random(seed * 100 + i))
    return admitted


async def test_mon_check_rate_auth_admits_at_most_5_in_any_15_minutes(autojump_clock, seed=1):
    async with open_monitoring(config()) as mon:
        assert mon.config.policies["auth"].resolved_algorithm() == "sliding_window"
        admitted = await _hammer(mon, "auth", trio.current_time() + 2700.0, seed,
                                 sleeps=[0.0, 0.0, 0.001, 0.3, 5.0, 60.0, 200.0])
        assert most_in_any_window(admitted, 900.0) == 5  # the bound, and reached
        assert len(admitted) >= 11  # quota came back as the window moved


@pytest.mark.parametrize("seed", range(2))
async def test_mon_check_rate_gcra_general_keeps_its_bound_in_any_interval(autojump_clock, seed):
    async with open_monitoring(config()) as mon:  # general: GCRA, 100 per 60 s, T = 0.6 s
        assert mon.config.policies["general"].resolved_algorithm() == "gcra"
        admitted = await _hammer(mon, "general", trio.current_time() + 600.0, seed,
                                 sleeps=[0.0] * 300 + [0.001, 0.3, 5.0, 60.0, 120.0])
        most = 0
        for i, a in enumerate(admitted):
            for j in range(i, len(admitted)):
                n, d = j - i + 1, admitted[j] - a
                assert n <= 100 + int(d / 0.6 + 1e-9)  # L + floor(D / T)
                most = max(most, n - int(d / 0.6 + 1e-9))
        assert most == 100  # the bound is reached


async def test_mon_peek_rate_on_a_lent_key_spends_nothing(autojump_clock):
    async with open_monitoring(config()) as mon:
        for _ in range(3):
            await mon.check_rate("auth", "user:1")
        assert len(mon.limiter.lent) == 1
        before = await mon.snapshot()
        for _ in range(10):
            assert (await mon.peek_rate("auth", "user:1")).remaining == 2
        assert (await mon.snapshot()).limiter == before.limiter
        assert [(await mon.check_rate("auth", "user:1")).allowed for _ in range(3)] == [True, True, False]


async def test_mon_check_rate_nowait_decides_a_lent_key_in_place_and_refuses_to_guess_others(autojump_clock):
    async with open_monitoring(config()) as mon:
        with pytest.raises(trio.WouldBlock):  # not lent yet: only the limiter can decide
            mon.check_rate_nowait("auth", "user:1")
        assert (await mon.peek_rate("auth", "user:1")).remaining == 5  # nothing spent
        await mon.check_rate("auth", "user:1")
        assert len(mon.limiter.lent) == 1
        with trio.CancelScope() as scope:  # no checkpoint: a cancelled scope does not stop it
            scope.cancel()
            decisions = [mon.check_rate_nowait("auth", "user:1") for _ in range(5)]
        assert not scope.cancelled_caught
        assert [d.allowed for d in decisions] == [True, True, True, True, False]
        assert decisions[-1].remaining == 0
        assert mon.check_rate_nowait("auth", "vip").allowed  # an exempt key
        await trio.sleep(1)  # the metrics actor applies the counted violation
        assert (await mon.metrics()).rate_limit_violations_per_hour["auth"] == 1
        with pytest.raises(ValueError):
            mon.check_rate_nowait("auth", "user:1", 0)


@pytest.mark.parametrize("lent", [True, False])
async def test_mon_check_rate_cancelled_spends_nothing(autojump_clock, lent):
    async with open_monitoring(config()) as mon:
        if lent:
            await mon.check_rate("auth", "user:1")
        with trio.CancelScope() as scope:
            scope.cancel()
            await mon.check_rate("auth", "user:1")
        assert scope.cancelled_caught
        assert (await mon.peek_rate("auth", "user:1")).remaining == (4 if lent else 5)


async def test_mon_reset_rate_restores_a_lent_key(autojump_clock):
    async with open_monitoring(config()) as mon:
        for _ in range(5):
            await mon.check_rate("auth", "user:1")
        assert not (await mon.check_rate("auth", "user:1")).allowed
        await mon.reset_rate("auth", "user:1")
        assert (await mon.check_rate("auth", "user:1")).remaining == 4


async def test_limiter_takes_back_leases_idle_for_a_review_and_stays_exact(autojump_clock):
    async with open_monitoring(config()) as mon:
        for _ in range(4):
            await mon.check_rate("auth", "user:1")
        await mon.check_rate("general", "user:2")
        assert len(mon.limiter.lent) == 2
        await trio.sleep(2.5 * REVIEW_EVERY_S)  # the actor wakes by itself to review
        await trio.testing.wait_all_tasks_blocked()
        assert len(mon.limiter.lent) == 0
        decision = await mon.check_rate("auth", "user:1")
        assert (decision.allowed, decision.remaining) == (True, 0)  # the state came back
        assert not (await mon.check_rate("auth", "user:1")).allowed
        assert mon.limiter.statistics().policies["auth"].rejected == 1
