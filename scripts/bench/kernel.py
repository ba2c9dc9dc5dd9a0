"""Kernel benchmark: guard overhead, limiter throughput, bytes per limiter key.

    .venv/bin/python scripts/bench/kernel.py [--rounds 7] [--calls 20000]

Prints, in one run:
  * `mon.run(noop)` vs `await noop()` directly: overhead per call in µs (median of rounds);
  * `mon.guard()` block overhead the same way;
  * a bare `trio.lowlevel.checkpoint()` in the same run: every guarded call is a checkpoint
    (one schedule point), so that much of the overhead is trio's own, not the guard's;
  * limiter decisions/s through `mon.check_rate` (a lent key, see actors.limiter) and the bare core;
  * bytes per limiter key at 100k and 1M keys (tracemalloc, key strings included).
Targets on the 2-core reference machine: guard overhead <= 25 µs, <= 150 bytes per key.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import trio

# This folder holds http.py, which would shadow the standard library's `http` (httpx needs it).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from actors import open_monitoring  # noqa: E402
from actors.limiter_core import LimiterTable, PolicySpec  # noqa: E402
from messages.config import Config  # noqa: E402


async def noop() -> None:
    return None


async def per_call(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        await fn()
    return (time.perf_counter() - t0) / n * 1e6


async def bench_guard(rounds: int, calls: int) -> None:
    async with open_monitoring(Config()) as mon:
        async def guarded():
            return await mon.run(noop)

        async def block():
            async with mon.guard():
                pass

        async def rate():
            return await mon.check_rate("general", "user:1")

        await per_call(guarded, 2000)  # warm up
        direct, point, run, guard, checks = [], [], [], [], []
        for _ in range(rounds):
            direct.append(await per_call(noop, calls))
            point.append(await per_call(trio.lowlevel.checkpoint, calls))
            run.append(await per_call(guarded, calls))
            guard.append(await per_call(block, calls))
            checks.append(await per_call(rate, calls))
    d, p, r, g, c = (statistics.median(x) for x in (direct, point, run, guard, checks))
    print(f"direct await noop()        {d:8.2f} µs/call")
    print(f"trio.lowlevel.checkpoint() {p:8.2f} µs/call   (included in each guarded call below)")
    print(f"mon.run(noop)              {r:8.2f} µs/call   overhead {r - d:6.2f} µs  (target <= 25)"
          f"   without the checkpoint {r - d - p:6.2f} µs")
    print(f"async with mon.guard()     {g:8.2f} µs/call   overhead {g - d:6.2f} µs"
          f"   without the checkpoint {g - d - p:6.2f} µs")
    print(f"mon.check_rate (one key)  {c:8.2f} µs/call   {1e6 / c:10,.0f} decisions/s")


def bench_core_checks(rounds: int, calls: int) -> None:
    table = LimiterTable({"general": PolicySpec(limit=100, window_s=60.0)}, max_keys=100_000)
    keys = [f"user:{i}" for i in range(10_000)]
    rates = []
    for r in range(rounds):
        t0 = time.perf_counter()
        for i in range(calls):
            table.check("general", keys[i % 10_000], r * 1000.0 + i * 1e-4)
        rates.append(calls / (time.perf_counter() - t0))
    print(f"LimiterTable.check (core) {statistics.median(rates):10,.0f} decisions/s")


def bytes_per_key(n: int) -> float:
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    table = LimiterTable({"general": PolicySpec(limit=100, window_s=60.0)}, max_keys=n)
    for i in range(n):
        table.check("general", f"user:{i}", 1.0)
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del table
    return used / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, trio {trio.__version__}, rounds={args.rounds}, calls/round={args.calls}")
    trio.run(bench_guard, args.rounds, args.calls)
    bench_core_checks(args.rounds, args.calls)
    if not args.skip_memory:
        for n in (100_000, 1_000_000):
            print(f"limiter memory at {n:>9,} keys: {bytes_per_key(n):6.1f} bytes/key  (target <= 150)")


if __name__ == "__main__":
    main()
