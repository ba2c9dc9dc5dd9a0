"""Benchmark the rate limiter's pure core: decisions/s and bytes per key.

    .venv/bin/python scripts/bench/limiter_core.py            # full run (~1-2 min)
    .venv/bin/python scripts/bench/limiter_core.py --quick    # smaller, fewer rounds
    .venv/bin/python scripts/bench/limiter_core.py --no-memory  # decisions/s only

Decisions/s are medians over rounds of a tight loop calling `LimiterTable.check` (so
they include the Python call and loop overhead a caller pays), timed in process CPU
time (so other load on the machine inflates them less); keys are built before timing. Bytes per key are measured with tracemalloc (allocated bytes, as requested
from the allocator), everything the table holds included: its dict, the stored key
strings (the table stores ``prefix + key``, its own string), and the TAT floats.
"fresh" is a table filled once; "churned" is the same table, still full, after n
checks of new keys (each evicting) interleaved with n touches of live keys (each
moving its key to the LRU end), plus the periodic `expire()` the limiter actor
runs: the steady state of a busy table, with deleted slots and dict rebuilds.

Sliding-window policies (`algorithm="sliding_window"`, a log of `limit` doubles per key) are
measured beside GCRA: decisions/s for the default small policies, and bytes per key for
both algorithms at the same limit, with the issue's bound (window <= GCRA + 8*limit + 40).
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

# This folder holds http.py, which would shadow the standard library's `http` (httpx needs it).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from actors.limiter_core import LimiterTable, PolicySpec  # noqa: E402

SPEC = {
    "general": PolicySpec(limit=100, window_s=60.0),
    "auth": PolicySpec(limit=5, window_s=900.0),
    "recording": PolicySpec(limit=30, window_s=60.0),
    "heavy": PolicySpec(limit=10, window_s=60.0),
    "upload": PolicySpec(limit=10, window_s=300.0),
}
T0 = 100_000.0
# CPU time of this process: rates stay meaningful on a machine shared with other work.
CLOCK = time.process_time


def filled(n: int, max_keys: int | None = None) -> LimiterTable:
    table = LimiterTable(SPEC, max_keys=max_keys or n)
    check = table.check
    for i in range(n):
        check("general", f"user:{i}", T0)
    return table


def churn(table: LimiterTable, n: int, start: int) -> None:
    """n new keys (each evicting at a full table) interleaved with n touches of live keys, and
    the periodic expire() (which finds nothing idle: time stands still, the table stays full)."""
    check, rnd = table.check, random.Random(1)
    j = start
    for i in range(n):
        check("general", f"user:{j}", T0)
        j += 1
        check("general", f"user:{rnd.randrange(j - n, j)}", T0)
        if i % 1000 == 0:
            table.expire(T0, 2000)


def bytes_per_key(n: int, rounds: int) -> dict[str, float]:
    fresh, churned = [], []
    for _ in range(rounds):
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        table = filled(n)
        gc.collect()
        fresh.append((tracemalloc.get_traced_memory()[0] - base) / len(table))
        churn(table, n, n)
        gc.collect()
        churned.append((tracemalloc.get_traced_memory()[0] - base) / len(table))
        assert n - n // 256 <= len(table) <= n  # full, up to one eviction batch
        tracemalloc.stop()
        del table
    return {"fresh": statistics.median(fresh), "churned": statistics.median(churned)}


def timed(fn, rounds: int) -> float:
    """Median ops/s of fn() -> number of ops."""
    rates = []
    for _ in range(rounds):
        gc.collect()
        t = CLOCK()
        ops = fn()
        rates.append(ops / (CLOCK() - t))
    return statistics.median(rates)


def decisions(n_keys: int, ops: int, rounds: int) -> dict[str, float]:
    out: dict[str, float] = {}
    rnd = random.Random(2)
    table = filled(n_keys)
    live = [f"user:{rnd.randrange(n_keys)}" for _ in range(ops)]
    clock = [T0]

    def touch_existing():
        # Existing keys in random order, time moving so most checks are allowed.
        check = table.check
        clock[0] += 60.0
        now = clock[0]
        for k in live:
            check("general", k, now)
        return len(live)

    out["check, existing keys (full table)"] = timed(touch_existing, rounds)

    fresh_keys = iter(f"new:{i}" for i in range(ops * (2 * rounds + 1)))

    def new_keys_evicting():
        check = table.check
        now = clock[0]
        batch = [next(fresh_keys) for _ in range(ops)]
        t = CLOCK()
        for k in batch:
            check("general", k, now)
        return len(batch), CLOCK() - t

    rates = []
    for _ in range(rounds):
        done, dt = new_keys_evicting()
        rates.append(done / dt)
    out["check, new keys evicting LRU (full table)"] = statistics.median(rates)

    if n_keys <= 100_000:
        # For comparison: evicting one key at a time. CPython finds a dict's first item by
        # scanning past the deleted slots at its front, so each eviction pays for all the
        # evictions before it (until the dict is next resized); batches amortise that scan.
        table._evict_batch = 1
        rates = []
        for _ in range(rounds):
            done, dt = new_keys_evicting()
            rates.append(done / dt)
        out["  same, evicting one key at a time"] = statistics.median(rates)
        table._evict_batch = max(1, n_keys // 256)

    def one_key_refused():
        check = table.check
        now = clock[0]
        for _ in range(ops):
            check("auth", "attacker", now)
        return ops

    out["check, one key, refused"] = timed(one_key_refused, rounds)

    def peek_existing():
        peek = table.peek
        now = clock[0]
        for k in live:
            peek("general", k, now)
        return len(live)

    out["peek, existing keys"] = timed(peek_existing, rounds)

    def expire_sweep():
        t = filled(min(n_keys, 100_000))
        start = CLOCK()
        dropped = 0
        while True:
            got = t.expire(T0 + 3600.0, 1000)
            if not got:
                break
            dropped += got
        return dropped, CLOCK() - start

    rates = []
    for _ in range(rounds):
        done, dt = expire_sweep()
        rates.append(done / dt)
    out["expire, idle keys dropped"] = statistics.median(rates)
    return out


def window_decisions(n_keys: int, ops: int, rounds: int) -> dict[str, float]:
    """Sliding-window checks: auth-like (5 / 900 s) and recording-like (30 / 60 s) keys."""
    out: dict[str, float] = {}
    for limit, window in ((5, 900.0), (30, 60.0)):
        spec = {"w": PolicySpec(limit=limit, window_s=window, algorithm="sliding_window")}
        table = LimiterTable(spec, max_keys=n_keys)
        for i in range(n_keys):
            table.check("w", f"user:{i}", T0)
        rnd = random.Random(3)
        live = [f"user:{rnd.randrange(n_keys)}" for _ in range(ops)]
        clock = [T0]

        def touch(table=table, live=live, clock=clock, step=window / limit):
            check = table.check
            clock[0] += step
            now = clock[0]
            for k in live:
                check("w", k, now)
            return len(live)

        def refused(table=table, clock=clock):
            check = table.check
            now = clock[0]
            for _ in range(ops):
                check("w", "attacker", now)
            return ops

        out[f"window {limit}/{window:g}s: check, existing keys"] = timed(touch, rounds)
        out[f"window {limit}/{window:g}s: check, one key, refused"] = timed(refused, rounds)
    return out


def window_bytes_per_key(n: int) -> list[tuple[int, float, float]]:
    """(limit, GCRA B/key, window B/key) for tables of n keys, same keys, same limit."""
    rows = []
    for limit in (5, 10, 30, 64):
        got = []
        for algorithm in ("gcra", "sliding_window"):
            gc.collect()
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            table = LimiterTable({"p": PolicySpec(limit=limit, window_s=60.0, algorithm=algorithm)},
                                 max_keys=n)
            for i in range(n):
                table.check("p", f"user:{i}", T0)
            gc.collect()
            got.append((tracemalloc.get_traced_memory()[0] - base) / len(table))
            tracemalloc.stop()
            del table
        rows.append((limit, got[0], got[1]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller runs, 3 rounds")
    ap.add_argument("--no-memory", action="store_true", help="skip the (slow) tracemalloc part")
    args = ap.parse_args()
    rounds = 3 if args.quick else 5
    ops = 100_000 if args.quick else 300_000
    print(f"python {sys.version.split()[0]}, medians of {rounds} rounds, process CPU time")
    for n in (100_000, 1_000_000):
        for name, rate in decisions(n, ops, rounds).items():
            print(f"  {n:>9,} keys  {name:<44} {rate:>12,.0f} /s  ({1e9 / rate:,.0f} ns)")
    for name, rate in window_decisions(100_000, ops, rounds).items():
        print(f"  {100_000:>9,} keys  {name:<44} {rate:>12,.0f} /s  ({1e9 / rate:,.0f} ns)")
    if args.no_memory:
        return
    for limit, gcra, window in window_bytes_per_key(100_000):
        print(f"    100,000 keys  bytes/key limit {limit:>2}: gcra {gcra:.1f}, sliding_window {window:.1f}"
              f" (+{window - gcra:.1f}; bound +{8 * limit + 40})")
    for n in (100_000, 1_000_000):
        mem_rounds = 1 if args.quick and n > 100_000 else 3
        b = bytes_per_key(n, mem_rounds)
        print(f"  {n:>9,} keys  bytes/key (tracemalloc, median of {mem_rounds}): "
              f"fresh {b['fresh']:.1f}, churned {b['churned']:.1f}")


if __name__ == "__main__":
    main()
