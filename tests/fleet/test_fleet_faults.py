"""Redis faults through Triage's own fault proxy: the fallback modes, their bounds, recovery."""

from __future__ import annotations

import pytest
import trio

from actors import open_monitoring
from actors.faults.kinds import BlackHole, Down, Latency
from actors.faults.proxy import FaultProxy
from actors.fleet.link import RedisUnavailable
from tests.fleet.redis_helpers import redis_prefix
from tests.fleet.test_fleet_gate import fleet_config

TIMEOUT_S = 0.05


async def _timed(mon, policy, key):
    start = trio.current_time()
    decision = await mon.check_rate(policy, key)
    return decision, trio.current_time() - start


async def _until_mode(mon, policy, mode):
    with trio.fail_after(5):
        while mon.fleet_handle.gate.modes[policy] != mode:
            await mon.check_rate("general", "ip:probe")
            await trio.sleep(0.02)


async def _until_live(mon, n: int) -> None:
    """Until this instance's heartbeat has counted `n` live instances (its next beat, at most)."""
    with trio.fail_after(5):
        while mon.fleet_handle.heartbeat.live != n:
            await trio.sleep(0.02)


async def test_fleet_redis_down_share_and_local_bounds_then_global_again():
    async with redis_prefix() as (_, prefix), FaultProxy("127.0.0.1", 6379) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        async with open_monitoring(fleet_config(prefix, "a", url=url)) as a, \
                open_monitoring(fleet_config(prefix, "b", url=url)) as b:
            await _until_live(a, 2)  # a heartbeat each: both know N = 2
            await _until_live(b, 2)
            assert a.fleet_handle.heartbeat.live == 2
            async with a.subscribe("warning") as alerts:
                proxy.add(Down())
                await _until_mode(a, "auth", "share")
                await _until_mode(b, "auth", "share")
                assert a.fleet_handle.gate.modes["general"] == "local"
                alert = await alerts.receive()
                assert alert.id == "fleet_redis_down" and alert.state == "firing"
            # share: auth (6 per 2 s) is 3 per instance; local: general is 20 per instance
            auth = [(await m.check_rate("auth", "ip:192.0.2.1")).allowed for m in (a, b) for _ in range(10)]
            assert sum(auth) == 6 and auth[:3] == [True] * 3 and auth[10:13] == [True] * 3
            general = [(await m.check_rate("general", "ip:192.0.2.2")).allowed for m in (a, b) for _ in range(25)]
            assert sum(general) == 40  # today's per-instance limits, never fail closed
            view = await a.fleet()
            assert view["stale"] and not view["redis"]["up"] and view["modes"]["auth"] == "share"
            with pytest.raises(RedisUnavailable):  # the fleet's counts can't be reset: said so ...
                await a.reset_rate("auth", "ip:192.0.2.1")
            assert (await a.check_rate("auth", "ip:192.0.2.1")).allowed  # ... this instance's are
            proxy.remove("down")
            await _until_mode(a, "auth", "global")
            await _until_mode(a, "general", "global")
            assert (await a.fleet())["redis"]["up"]


async def test_fleet_black_hole_and_latency_no_request_waits_past_the_redis_timeout():
    async with redis_prefix() as (_, prefix), FaultProxy("127.0.0.1", 6379) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        async with open_monitoring(fleet_config(prefix, "a", url=url)) as a:
            for fault in (BlackHole(), Latency(latency_ms=200)):
                proxy.add(fault)
                worst, sent = 0.0, 0
                # Fresh keys, each needing a lease, from the fault on: none waits past the Redis
                # timeout and the fallback always decides. A black hole is found gone (the Redis
                # breaker: `redis_failures` calls given up on), so it goes on until then; a slow
                # Redis may still answer the background calls, and is not.
                black_hole = isinstance(fault, BlackHole)
                with trio.fail_after(5):
                    while sent < 40 or (black_hole and a.fleet_handle.gate.modes["general"] != "local"):
                        decision, took = await _timed(a, "general", f"ip:{type(fault).__name__}-{sent}")
                        assert decision.allowed  # never fail closed
                        worst, sent = max(worst, took), sent + 1
                assert worst < TIMEOUT_S + 0.15, worst  # bounded by the Redis timeout, not the fault
                proxy.clear()
                await _until_mode(a, "general", "global")
            decision, _ = await _timed(a, "general", "ip:10.0.1.1")
            assert decision.allowed and a.fleet_handle.gate.modes["general"] == "global"
