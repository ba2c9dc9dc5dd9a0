"""Global limits across instances in one process (each its own system), on a real Redis."""

from __future__ import annotations

import math

import trio
from msgspec.structs import replace

from actors import open_monitoring
from actors.fleet.lease import interval_us
from messages.config import Config
from tests.fleet.redis_helpers import REDIS_URL, redis_prefix


def fleet_config(prefix: str, instance: str, *, url: str = REDIS_URL, extra: str = "") -> Config:
    base = Config.from_toml(f"""
[policies.general]
limit = 20
window_s = 1.0
algorithm = "gcra"
[policies.auth]
limit = 6
window_s = 2.0
[fleet]
redis_url = "{url}"
key_prefix = "{prefix}"
redis_retry_s = 0.2
heartbeat_s = 0.2
heartbeat_ttl_s = 1.0
{extra}
""")
    return replace(base, fleet=replace(base.fleet, instance_id=instance))


def exact_gcra(times: list[float], limit: int, window_s: float) -> int:
    """What one exact GCRA (the local limiter) would admit of these arrivals."""
    t = interval_us(limit, window_s) / 1e6
    tat, n = -math.inf, 0
    for now in times:
        tat = max(tat, now)
        if tat + t - now <= limit * t + 1e-9:
            tat += t
            n += 1
    return n


async def drive(mons, policy: str, duration_s: float, every_s: float = 0.004) -> tuple[list[float], int]:
    """Open loop: a request every `every_s`, round robin over the instances; (arrivals, admitted)."""
    times, admitted = [], 0
    start = trio.current_time()
    i = 0
    while (now := trio.current_time()) - start < duration_s:
        decision = await mons[i % len(mons)].check_rate(policy, "ip:203.0.113.9")
        times.append(now - start)
        admitted += decision.allowed
        i += 1
        await trio.sleep(every_s)
    return times, admitted


async def test_fleet_two_instances_share_one_gcra_limit_within_the_bound():
    async with redis_prefix() as (_, prefix), \
            open_monitoring(fleet_config(prefix, "a")) as a, open_monitoring(fleet_config(prefix, "b")) as b:
        times, admitted = await drive([a, b], "general", 2.0)
        exact = exact_gcra(times, 20, 1.0)
        tau, t = 1.0, 0.05
        bound = 20 + math.ceil((times[-1] + tau) / t)
        assert 2 * 20 < len(times)  # well over the limit: per-instance limits would admit 2x
        assert exact * 0.9 <= admitted <= min(bound, math.ceil(exact * 1.05)), (admitted, exact)
        assert a.fleet_handle.gate.fallbacks + b.fleet_handle.gate.fallbacks <= 2


async def test_fleet_sliding_window_policy_never_over_the_limit_in_a_window():
    async with redis_prefix() as (_, prefix), \
            open_monitoring(fleet_config(prefix, "a")) as a, open_monitoring(fleet_config(prefix, "b")) as b:
        admitted_at = []
        start = trio.current_time()
        i = 0
        while trio.current_time() - start < 2.5:
            d = await (a, b)[i % 2].check_rate("auth", "ip:198.51.100.7")
            if d.allowed:
                admitted_at.append(trio.current_time())
            i += 1
            await trio.sleep(0.01)
        # any 2 s window: at most the limit (6), across both instances
        worst = max(sum(1 for x in admitted_at if s <= x < s + 2.0) for s in admitted_at)
        assert 6 <= len(admitted_at) and worst <= 6, admitted_at


async def test_fleet_below_the_limit_nothing_is_refused():
    async with redis_prefix() as (_, prefix), \
            open_monitoring(fleet_config(prefix, "a")) as a, open_monitoring(fleet_config(prefix, "b")) as b:
        times, admitted = await drive([a, b], "general", 1.5, every_s=0.08)  # 12.5/s under 20/s
        assert admitted == len(times)


async def test_fleet_view_lists_live_instances_and_the_metrics_count_round_trips():
    async with redis_prefix() as (_, prefix), \
            open_monitoring(fleet_config(prefix, "a")) as a, open_monitoring(fleet_config(prefix, "b")):
        view = await a.fleet()
        assert [i["instance_id"] for i in view["instances"]] == ["a", "b"]
        assert view["live"] == 2 and view["redis"]["up"] and not view["stale"]
        mine = view["instances"][0]
        assert mine["self"] and mine["status"] in ("healthy", "degraded", "unhealthy")
        assert set(mine["breakers"]) == {"database", "critical", "analytics", "batch"}
        assert {"queue_depth", "in_flight", "connections", "last_seen_s"} <= set(mine)
        assert view["modes"]["general"] == "global"
        assert a.fleet_handle.statistics()["round_trips"] >= 2
    async with open_monitoring(Config()) as single:
        assert await single.fleet() == {"enabled": False, "instances": []}


async def test_fleet_instance_stopped_cleanly_leaves_the_view_at_once():
    async with redis_prefix() as (_, prefix), open_monitoring(fleet_config(prefix, "a")) as a:
        async with open_monitoring(fleet_config(prefix, "b")):
            assert len((await a.fleet())["instances"]) == 2
        assert [i["instance_id"] for i in (await a.fleet())["instances"]] == ["a"]


async def _spend_all(mons, policy: str, key: str) -> int:
    """Requests round robin until both instances refuse; how many were allowed."""
    allowed = refused = 0
    while refused < 2:
        for m in mons:
            d = await m.check_rate(policy, key)
            allowed += d.allowed
            refused = 0 if d.allowed else refused + 1
    return allowed


async def _heard(b, resets: int) -> None:
    """Until `b` has applied `resets` resets made on another instance (pub/sub)."""
    with trio.fail_after(2):
        await b.fleet_handle.resets_heard.wait_value(lambda n: n >= resets)


async def test_fleet_reset_rate_on_one_instance_holds_on_every_instance():
    # An operator lets a locked-out user in again: the reset is the fleet's, not one instance's.
    async with redis_prefix() as (client, prefix), \
            open_monitoring(fleet_config(prefix, "a")) as a, open_monitoring(fleet_config(prefix, "b")) as b:
        heard = 0
        for reset in (lambda: a.reset_rate("auth", "user:7"), lambda: a.reset_rate(key="user:7"),
                      lambda: a.reset_rate("auth"), lambda: a.reset_rate()):
            assert await _spend_all([a, b], "auth", "user:7") == 6  # 6 per 2 s for the fleet
            assert not (await b.check_rate("auth", "user:7")).allowed
            await reset()
            heard += 1
            await _heard(b, heard)
            assert (await b.check_rate("auth", "user:7")).allowed  # at once, on the other instance
            assert (await a.check_rate("auth", "user:7")).allowed
            assert [k async for k in client.scan_iter(match=f"{prefix}rl:auth:*")]  # counted in Redis
            await a.reset_rate()
            assert [k async for k in client.scan_iter(match=f"{prefix}rl:auth:*")] == []  # not any more
            heard += 1
            await _heard(b, heard)
