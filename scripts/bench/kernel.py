"""Kernel benchmark: guard overhead, refusals, admission under contention, limiter figures.

    .venv/bin/python scripts/bench/kernel.py [--rounds 7] [--calls 20000] [--skip-memory]
    .venv/bin/python scripts/bench/kernel.py --before /tmp/triage-main [--pairs 3]

Prints, in one run:
  * `mon.run(noop)` vs `await noop()` directly: overhead per call in µs (median of rounds);
  * `mon.guard()` block overhead the same way;
  * a bare `trio.lowlevel.checkpoint()` in the same run: every guarded call is a checkpoint
    (one schedule point), so that much of the overhead is trio's own, not the guard's;
  * refusals, a retry storm and admission under contention against a trio.Semaphore
    baseline in the same run (see `kernel_admission.py`);
  * limiter decisions/s through `mon.check_rate` (a lent key, see actors.limiter) and the bare core;
  * bytes per limiter key at 100k and 1M keys (tracemalloc, key strings included).
Targets on the 2-core reference machine: guard overhead <= 25 µs, a refusal <= 10 µs in the
kernel, contention <= 1.5x the semaphore, <= 150 bytes per key.

`--before DIR` runs this same script against another tree (e.g. `git archive main | tar -x
-C DIR`) and this one, alternating, `--pairs` times each, and prints every figure before and
after with their ratio (medians over the runs).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent
# The tree whose kernel is measured: this script's own, or `--tree DIR` (used by --before).
TREE = sys.argv[sys.argv.index("--tree") + 1] if "--tree" in sys.argv else str(HERE.parents[1])
# This folder holds http.py, which would shadow the standard library's `http` (httpx needs it).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, TREE)
sys.path.append(str(HERE))

import kernel_admission  # noqa: E402

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


async def bench_guard(rounds: int, calls: int, quiet: bool = False) -> dict[str, float]:
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
    if quiet:
        return {"direct": d, "checkpoint": p, "mon.run": r, "mon.guard": g, "check_rate": c}
    print(f"direct await noop()        {d:8.2f} µs/call")
    print(f"trio.lowlevel.checkpoint() {p:8.2f} µs/call   (included in each guarded call below)")
    print(f"mon.run(noop)              {r:8.2f} µs/call   overhead {r - d:6.2f} µs  (target <= 25)"
          f"   without the checkpoint {r - d - p:6.2f} µs")
    print(f"async with mon.guard()     {g:8.2f} µs/call   overhead {g - d:6.2f} µs"
          f"   without the checkpoint {g - d - p:6.2f} µs")
    print(f"mon.check_rate (one key)  {c:8.2f} µs/call   {1e6 / c:10,.0f} decisions/s")
    return {"direct": d, "checkpoint": p, "mon.run": r, "mon.guard": g, "check_rate": c}


async def bench_admission(args: argparse.Namespace) -> dict[str, float]:
    levels = tuple(int(x) for x in args.levels.split(","))
    refusal = await kernel_admission.bench_refusals(args.rounds, args.calls // 4)
    storm = await kernel_admission.bench_storm(max(args.rounds // 2, 1), args.seconds * 2)
    contention = await kernel_admission.bench_contention(max(args.rounds // 2, 1), args.seconds, levels)
    if not args.json:
        kernel_admission.report(refusal, storm, contention, levels)
    return {**{f"refusal {k} µs": v for k, v in refusal.items()},
            **{f"storm {k} calls/s": v for k, v in storm.items()},
            **{f"contention {k} µs/call": v for k, v in contention.items()}}


def compare(args: argparse.Namespace) -> None:
    """This tree against `--before`, alternating whole runs; medians, and after / before."""
    passthrough = ["--rounds", str(args.rounds), "--calls", str(args.calls), "--seconds",
                   str(args.seconds), "--levels", args.levels, "--json"]
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for i in range(args.pairs):
        for label in (("before", "after") if i % 2 == 0 else ("after", "before")):
            tree = args.before if label == "before" else TREE
            out = subprocess.run([sys.executable, __file__, *passthrough, "--tree", tree],
                                 capture_output=True, text=True, check=True).stdout
            runs[label].append(json.loads(out.strip().splitlines()[-1]))
    print(f"{'figure':36} {'before':>12} {'after':>12} {'after/before':>13}   ({args.pairs} runs each)")
    for key in runs["after"][0]:
        b = statistics.median(r[key] for r in runs["before"])
        a = statistics.median(r[key] for r in runs["after"])
        print(f"{key:36} {b:12.2f} {a:12.2f} {a / b:12.2f}x")
    # Against the semaphore, a ratio within each run: load varies between runs more than within one.
    pairs = [(k, k.replace("triage", "semaphore")) for k in runs["after"][0] if "triage" in k]
    for label in ("before", "after"):
        for t, s in pairs:
            ratios = [r[t] / r[s] for r in runs[label]]
            print(f"{label:6} {t.replace('_triage', '').replace(' triage', '')}: triage / semaphore {statistics.median(ratios):.2f}x"
                  f"  (runs {', '.join(f'{x:.2f}' for x in ratios)})")


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
    ap.add_argument("--seconds", type=float, default=0.5, help="window of each contention round")
    ap.add_argument("--levels", default="100,300,1000", help="contention: concurrent callers")
    ap.add_argument("--before", help="another tree to compare against (alternating runs)")
    ap.add_argument("--pairs", type=int, default=3, help="with --before: runs of each tree")
    ap.add_argument("--json", action="store_true", help="print the kernel figures as one JSON line")
    ap.add_argument("--tree", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.before:
        compare(args)
        return
    if args.json:
        figures = trio.run(bench_guard, args.rounds, args.calls, True)
        figures.update(trio.run(bench_admission, args))
        print(json.dumps(figures))
        return
    print(f"python {sys.version.split()[0]}, trio {trio.__version__}, rounds={args.rounds}, calls/round={args.calls}")
    trio.run(bench_guard, args.rounds, args.calls)
    trio.run(bench_admission, args)
    bench_core_checks(args.rounds, args.calls)
    if not args.skip_memory:
        for n in (100_000, 1_000_000):
            print(f"limiter memory at {n:>9,} keys: {bytes_per_key(n):6.1f} bytes/key  (target <= 150)")


if __name__ == "__main__":
    main()
