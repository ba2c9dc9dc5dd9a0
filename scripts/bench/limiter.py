"""Benchmark `mon.check_rate` against the `limits` library used inline, in one run.

    .venv/bin/python scripts/bench/limiter.py [--rounds 9] [--calls 20000]

The baseline is `limits`' FixedWindow (`FixedWindowRateLimiter` over `MemoryStorage`, `hit()`
called inline, no await), on one key; Triage is `await mon.check_rate("general", key)` through
a running `open_monitoring`, on one key too. Each round measures, one after the other:

  * allowed:  limits on "1000000000/minute"; Triage's `general` (GCRA) raised to 10^9 per 60 s,
    so neither refuses during the run;
  * refused:  limits on "100/minute", exhausted first; Triage's `general` at the spec's 100 per
    60 s (an override for that one key), exhausted first;
  * a bare `trio.lowlevel.checkpoint()`: `check_rate` is a checkpoint (one schedule point, as
    trio's own async functions are), so that much of its cost is trio's scheduler, not Triage's;
  * `LimiterTable.check` (the pure core) on one key, for the share of the decision itself;
  * allowed, 100 callers at once: 100 tasks checking the same key concurrently (as an HTTP
    server's requests do), so one pass of trio's scheduler serves many schedule points.

Times are process CPU time per call (other load on the machine inflates them less), ratios are
limits' time over Triage's (above 1: Triage is faster), each the median over rounds of the
ratio measured within one round.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import msgspec
import trio

# This folder holds http.py, which would shadow the standard library's `http` (httpx needs it).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from limits import parse, storage, strategies  # noqa: E402

from actors import open_monitoring  # noqa: E402
from actors.limiter_core import LimiterTable, PolicySpec  # noqa: E402
from messages.config import Config, LimiterConfig, RatePolicy  # noqa: E402

CLOCK = time.process_time
HUGE = RatePolicy(limit=1_000_000_000, window_s=60.0)
SPEC_GENERAL = RatePolicy(limit=100, window_s=60.0)


def config() -> Config:
    cfg = Config()
    return msgspec.structs.replace(
        cfg, policies={**cfg.policies, "general": HUGE},
        limiter=LimiterConfig(overrides={"general": {"user:refused": SPEC_GENERAL}}))


def limits_per_call(limiter, item, key: str, calls: int) -> float:
    hit = limiter.hit
    t = CLOCK()
    for _ in range(calls):
        hit(item, key)
    return (CLOCK() - t) / calls * 1e6


async def async_per_call(fn, calls: int) -> float:
    t = CLOCK()
    for _ in range(calls):
        await fn()
    return (CLOCK() - t) / calls * 1e6


async def concurrent_per_call(fn, calls: int, tasks: int = 100) -> float:
    async def worker():
        for _ in range(calls // tasks):
            await fn()

    t = CLOCK()
    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(worker)
    return (CLOCK() - t) / (calls // tasks * tasks) * 1e6


def core_per_call(calls: int) -> float:
    table = LimiterTable({"general": PolicySpec(limit=HUGE.limit, window_s=HUGE.window_s)})
    check = table.check
    t = CLOCK()
    for i in range(calls):
        check("general", "user:1", i * 1e-3)
    return (CLOCK() - t) / calls * 1e6


async def run(rounds: int, calls: int) -> dict[str, list[float]]:
    fixed = strategies.FixedWindowRateLimiter(storage.MemoryStorage())
    plenty, spec = parse("1000000000/minute"), parse("100/minute")
    while fixed.hit(spec, "user:refused"):
        pass
    out: dict[str, list[float]] = {}
    async with open_monitoring(config()) as mon:
        async def allowed():
            return await mon.check_rate("general", "user:1")

        async def refused():
            return await mon.check_rate("general", "user:refused")

        while (await refused()).allowed:
            pass
        await async_per_call(allowed, 2000)  # warm up
        for _ in range(rounds):
            row = {
                "limits allowed": limits_per_call(fixed, plenty, "user:1", calls),
                "check_rate allowed": await async_per_call(allowed, calls),
                "limits refused": limits_per_call(fixed, spec, "user:refused", calls),
                "check_rate refused": await async_per_call(refused, calls),
                "checkpoint": await async_per_call(trio.lowlevel.checkpoint, calls),
                "core check": core_per_call(calls),
                "limits allowed again": limits_per_call(fixed, plenty, "user:1", calls),
                "check_rate allowed, 100 callers": await concurrent_per_call(allowed, calls),
            }
            assert (await allowed()).allowed
            for name, value in row.items():
                out.setdefault(name, []).append(value)
            for kind in ("allowed", "refused"):
                out.setdefault(f"ratio {kind}", []).append(row[f"limits {kind}"] / row[f"check_rate {kind}"])
            out.setdefault("refusal less checkpoint", []).append(row["check_rate refused"] - row["checkpoint"])
            out.setdefault("ratio allowed, 100 callers", []).append(
                row["limits allowed again"] / row["check_rate allowed, 100 callers"])
        rejected = mon.limiter.statistics().policies["general"].rejected
        assert rejected >= 0.99 * rounds * calls, rejected  # the refused rounds did refuse
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--calls", type=int, default=20_000)
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, trio {trio.__version__}, rounds={args.rounds}, "
          f"calls/round={args.calls}, process CPU time, medians")
    got = {k: statistics.median(v) for k, v in trio.run(run, args.rounds, args.calls).items()}
    for kind in ("allowed", "refused"):
        print(f"{kind:>8}: limits FixedWindow inline {got[f'limits {kind}']:6.2f} µs/call   "
              f"mon.check_rate {got[f'check_rate {kind}']:6.2f} µs/call   "
              f"ratio {got[f'ratio {kind}']:.2f}x  (limits / Triage; goal >= 0.5)")
    print(f"allowed, 100 callers at once: mon.check_rate {got['check_rate allowed, 100 callers']:6.2f} µs/call"
          f"   limits {got['limits allowed again']:6.2f} µs/call   ratio {got['ratio allowed, 100 callers']:.2f}x")
    print(f"trio.lowlevel.checkpoint() {got['checkpoint']:6.2f} µs/call   (one schedule point: "
          f"included in each check_rate)")
    print(f"refusal in the kernel, less the schedule point {got['refusal less checkpoint']:6.2f} µs"
          f"   (goal <= 10)")
    print(f"LimiterTable.check (pure core) {got['core check']:6.2f} µs/call")


if __name__ == "__main__":
    main()
