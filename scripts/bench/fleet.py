"""[fleet] figures, as ratios measured in one run: hot-path cost, Redis round trips, accuracy.

    .venv/bin/python scripts/bench/fleet.py [--redis redis://127.0.0.1:6379/0] [--rounds 5]
                                            [--decisions 20000] [--seconds 6]

Needs a Redis (keys under a random prefix, all with TTLs, deleted afterwards); no database.

(1) Hot path: `mon.check_rate` on one hot key, all allowed (a policy far above the load), with
    `[fleet]` on and off, in alternating rounds; the median CPU time per decision of each
    (`time.process_time`, background leases included) and their ratio. Target: on / off <= 1.2 (credits are spent locally).
(2) Round trips per 1,000 decisions on that key at steady state (heartbeats left out; a
    pipeline is one). Target: <= 20.
(3) Accuracy: four systems in this process sharing the Redis, an open-loop generator at 200
    requests/s round robin over them: a GCRA policy (20 per 1 s) against what one exact GCRA
    admits of the same arrivals (target <= 1.05), and a sliding window (10 per 2 s): the worst
    2 s window (target <= limit + instances).
"""

from __future__ import annotations

import argparse
import math
import secrets
import statistics
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path

import coredis
import trio

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from actors import open_monitoring  # noqa: E402
from actors.fleet.lease import interval_us  # noqa: E402
from messages.config import Config  # noqa: E402

HOT = "ip:198.51.100.1"


def config(redis: str | None, prefix: str, instance: str = "bench", max_batch: int = 64) -> Config:
    fleet = (f'[fleet]\nredis_url = "{redis}"\nkey_prefix = "{prefix}"\ninstance_id = "{instance}"\n'
             f'max_batch = {max_batch}\n') if redis else ""
    return Config.from_toml(f"""
[policies.hot]
limit = 10000000
window_s = 1.0
[policies.general]
limit = 20
window_s = 1.0
algorithm = "gcra"
[policies.auth]
limit = 10
window_s = 2.0
{fleet}""")


async def per_decision(mon, n: int) -> float:
    """CPU seconds of this process per decision (the background leases included): other
    processes on a shared machine move wall time much more than this."""
    start = time.process_time()
    for _ in range(n):
        await mon.check_rate("hot", HOT)
    return (time.process_time() - start) / n


def exact_gcra(times: list[float], limit: int, window_s: float) -> int:
    t, tat, n = interval_us(limit, window_s) / 1e6, -math.inf, 0
    for now in times:
        tat = max(tat, now)
        if tat + t - now <= limit * t + 1e-9:
            tat, n = tat + t, n + 1
    return n


async def hot_path(args, prefix: str, max_batch: int, label: str) -> None:
    async with open_monitoring(config(args.redis, prefix, max_batch=max_batch)) as on, \
            open_monitoring(config(None, prefix)) as off:
        await per_decision(on, 2000), await per_decision(off, 2000)  # warm: credits, caches
        times: dict[str, list[float]] = {"on": [], "off": []}
        link, beats = on.fleet_handle.link, on.fleet_handle.heartbeat
        trips = decisions = 0
        for r in range(args.rounds):
            for name in (("on", "off") if r % 2 == 0 else ("off", "on")):
                mon = on if name == "on" else off
                before, beats_before = link.round_trips, beats.beats
                times[name].append(await per_decision(mon, args.decisions))
                if name == "on":
                    trips += (link.round_trips - before) - (beats.beats - beats_before)
                    decisions += args.decisions
        on_us, off_us = statistics.median(times["on"]) * 1e6, statistics.median(times["off"]) * 1e6
        print(f"{label} max_batch {max_batch}: CPU per decision, fleet on {on_us:.2f} us, off {off_us:.2f} us, "
              f"ratio {on_us / off_us:.3f}; Redis round trips per 1,000 decisions "
              f"{trips * 1000 / decisions:.1f}")


async def accuracy(args, prefix: str, instances: int = 4, rate: float = 200.0) -> None:
    async with AsyncExitStack() as stack:
        mons = [await stack.enter_async_context(open_monitoring(config(args.redis, prefix, f"i{i}")))
                for i in range(instances)]
        arrivals: dict[str, list[float]] = {"general": [], "auth": []}
        admitted: dict[str, list[float]] = {"general": [], "auth": []}
        start = trio.current_time()

        async def one(mon, policy: str, at: float) -> None:
            if (await mon.check_rate(policy, HOT)).allowed:
                admitted[policy].append(at)

        async with trio.open_nursery() as nursery:
            for i in range(int(rate * args.seconds)):
                await trio.sleep_until(start + i / rate)
                policy = ("general", "auth")[i % 2]
                at = trio.current_time() - start
                arrivals[policy].append(at)
                nursery.start_soon(one, mons[i % instances], policy, at)
        exact = exact_gcra(arrivals["general"], 20, 1.0)
        got = len(admitted["general"])
        print(f"(3) GCRA 20/s over {args.seconds:g} s, {instances} instances: admitted {got}, exact GCRA "
              f"{exact}, ratio {got / exact:.3f} (target <= 1.05); per-instance limits: ~{exact * instances}")
        a = sorted(admitted["auth"])
        worst = max((sum(1 for x in a if t <= x < t + 2.0) for t in a), default=0)
        print(f"    sliding window 10 per 2 s: admitted {len(a)}, worst 2 s window {worst} "
              f"(target <= {10 + instances})")


async def main(args: argparse.Namespace) -> None:
    prefix = f"triage-bench:{secrets.token_hex(4)}:"
    client = coredis.Redis.from_url(args.redis)
    async with client:
        try:
            await hot_path(args, prefix + "a:", 10_000, "(1a) the decision itself,")
            for batch in (64, 256, 1024):
                await hot_path(args, prefix + f"b{batch}:", batch, "(1b)/(2) with refills,")
            print("    targets: (1a) <= 1.2; (2) round trips per 1,000 decisions <= 20 at max_batch 64")
            await accuracy(args, prefix + "acc:")
        finally:
            keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
            if keys:
                await client.delete(keys)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--decisions", type=int, default=20000)
    p.add_argument("--seconds", type=float, default=6.0)
    trio.run(main, p.parse_args())
