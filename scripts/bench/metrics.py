"""Benchmark the metrics core: cost per recorded value, per rotation and per snapshot.

    .venv/bin/python scripts/bench/metrics.py            # full run (~1-2 min)
    .venv/bin/python scripts/bench/metrics.py --quick    # smaller, fewer rounds

All figures are medians over rounds; messages and values are built before timing.

1. Sketch candidates, per value: `list.append` (baseline), DDSketch and the
   bounded DDSketch the core uses (relative accuracy 0.01), HdrHistogram (values
   in µs, 1 µs..1 h, 2 significant digits; skipped if `hdrhistogram` is not
   installed). Also bytes per sketch (tracemalloc) and merge / P50+P95+P99 costs.
2. The core: `step` with one Observation (an HTTP request: overall + route;
   a guarded call with a queue wait: tier), against a no-op `step` and a
   list append fed the same messages; virtual time advances 1/rate s per
   message, so the figure includes the bucket rotations that traffic causes.
3. A state that has seen an hour of traffic over N routes and 8 tiers: its size
   (tracemalloc), a snapshot repeated at the same instant ("cached"), then 21
   steps of 10 s of traffic, each ending with a timed `Tick` (the rotation, by
   the coarsest boundary it crosses) and a timed snapshot ("every 10 s": the
   cached merges of closed buckets are rebuilt as the rings rotate).
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

# This folder holds http.py, which would shadow the standard library's `http` (httpx needs it).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ddsketch import DDSketch  # noqa: E402

from actors.metrics import MetricsState, _sketch, snapshot, step  # noqa: E402
from messages.commands import Tick  # noqa: E402
from messages.metrics import Observation  # noqa: E402

try:
    from hdrh.histogram import HdrHistogram
except ImportError:  # optional: only the comparison needs it
    HdrHistogram = None


def median_ns(fn, per: int, rounds: int) -> float:
    """Median over rounds of fn()'s time, in ns per item (fn handles `per` items)."""
    out = []
    for _ in range(rounds):
        gc.collect()
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) / per * 1e9)
    return statistics.median(out)


def latencies(n: int, seed: int = 1) -> list[float]:
    r = random.Random(seed)
    return [r.lognormvariate(math.log(0.05), 1.2) for _ in range(n)]


# --- 1. candidates ---------------------------------------------------------------------------


def _hdr():
    return HdrHistogram(1, 3_600_000_000, 2)


def candidates(n: int, rounds: int) -> None:
    values = latencies(n)
    micros = [int(v * 1e6) for v in values]

    def append():
        sink = []
        add = sink.append
        for v in values:
            add(v)

    def feed(make):
        def run():
            add = make().add
            for v in values:
                add(v)
        return run

    def hdr():
        record = _hdr().record_value
        for v in values:
            record(int(v * 1e6))

    rows = [("list.append (baseline)", append), ("DDSketch(0.01)", feed(lambda: DDSketch(0.01))),
            ("bounded DDSketch (core's)", feed(_sketch))]
    if HdrHistogram is not None:
        rows.append(("HdrHistogram, int(v*1e6)", hdr))
    print(f"1. per value, {n:,} lognormal latencies")
    for name, fn in rows:
        print(f"   {name:<32} {median_ns(fn, n, rounds):8.0f} ns/value")

    makers = [("bounded DDSketch", _sketch, lambda s, v, u: s.add(v))]
    if HdrHistogram is not None:
        makers.append(("HdrHistogram", _hdr, lambda s, v, u: s.record_value(u)))
    for name, make, add in makers:
        sizes = []
        for k in (0, 1, 100, 10_000):
            gc.collect()
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            sketch = make()
            for v, u in zip(values[:k], micros[:k], strict=True):
                add(sketch, v, u)
            sizes.append(f"{k:,}: {tracemalloc.get_traced_memory()[0] - base:,} B")
            tracemalloc.stop()
        print(f"   {name:<32} bytes with n values  " + ", ".join(sizes))
    parts = []
    for i in range(12):
        sk = _sketch()
        for v in values[i * 1000:(i + 1) * 1000]:
            sk.add(v)
        parts.append(sk)

    def merge12():
        total = _sketch()
        for p in parts:
            total.merge(p)
        return total

    total = merge12()
    print(f"   bounded DDSketch: merge of 12 x 1,000 values {median_ns(merge12, 12, rounds) / 1e3:6.1f}"
          f" µs per merge; P50+P95+P99 read "
          f"{median_ns(lambda: [total.get_quantile_value(q) for q in (0.5, 0.95, 0.99)], 1, rounds) / 1e3:.1f} µs")


# --- 2. the core, per observation ------------------------------------------------------------


def traffic(n: int, start: float, rate: float, routes: int, seed: int) -> list[tuple[Observation, float]]:
    r = random.Random(seed)
    out = []
    for i in range(n):
        at = start + i / rate
        d = r.lognormvariate(math.log(0.05), 1.2)
        if i % 2:
            o = Observation(source="http", route=f"GET /r{r.randrange(routes)}", tier=None,
                            outcome="ok" if r.random() > 0.01 else "error", status=200,
                            duration_s=d, at=at)
        else:
            o = Observation(source="call", route=None, tier=f"t{r.randrange(8)}", outcome="ok",
                            status=None, duration_s=d, queue_wait_s=r.expovariate(20.0), at=at)
        out.append((o, at))
    return out


def _noop(s, msg, now):
    return s, []


def per_observation(n: int, rounds: int, rate: float) -> None:
    msgs = traffic(n, 0.0, rate, 20, seed=3)
    clock = [0.0]

    def run_core():
        s = MetricsState.initial(now=clock[0])
        for o, at in msgs:
            s, _ = step(s, o, at)

    def run_noop():
        s = None
        for o, at in msgs:
            s, _ = _noop(s, o, at)

    def run_append():
        sink = []
        add = sink.append
        for o, _ in msgs:
            add(o)

    print(f"2. step(Observation), {n:,} messages at {rate:,.0f}/s virtual "
          f"(half HTTP over 20 routes, half calls with queue wait over 8 tiers)")
    for name, fn in (("list.append (baseline)", run_append), ("no-op step (baseline)", run_noop),
                     ("metrics step", run_core)):
        print(f"   {name:<32} {median_ns(fn, n, rounds):8.0f} ns/message")


# --- 3. snapshots and rotations --------------------------------------------------------------


def snapshots(routes: int, rate: float, rounds: int) -> None:
    """Load an hour of traffic (under tracemalloc, for the state's size), then 10 s steps."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    s = MetricsState.initial(now=0.0)
    for o, at in traffic(int(3700 * rate), 0.0, rate, routes, seed=5):
        s, _ = step(s, o, at)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    now = 3700.0
    snapshot(s, now)
    cached = median_ns(lambda: snapshot(s, now), 1, rounds) / 1e6
    ticks: dict[str, list[float]] = {"10 s": [], "30 s": [], "5 min": []}
    snaps = []
    per_step = int(10 * rate)
    later = traffic(per_step * 21, now + 0.5 / rate, rate, routes, seed=6)
    for i in range(21):                                   # 3700 s .. 3910 s: every kind of boundary
        for o, at in later[i * per_step:(i + 1) * per_step]:
            s, _ = step(s, o, at)
        now += 10.0
        gc.collect()
        t = time.perf_counter()
        step(s, Tick(), now)
        kind = "5 min" if now % 300 == 0 else "30 s" if now % 30 == 0 else "10 s"
        ticks[kind].append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        snapshot(s, now)
        snaps.append((time.perf_counter() - t) * 1e3)
    series = 1 + len(s.routes) + len(s.tiers)
    print(f"4. {routes} routes + 8 tiers after 1 h at {rate:,.0f} msg/s: {series} series, "
          f"state {held / 1e6:.1f} MB by tracemalloc ({held / series / 1e3:.0f} kB/series)")
    print(f"   {'snapshot, cached (same instant)':<40} {cached:8.2f} ms")
    print(f"   {'snapshot, every 10 s, traffic between':<40} {statistics.median(snaps):8.2f} ms"
          f"  (max {max(snaps):.2f})")
    for kind, times in ticks.items():
        print(f"   {'Tick rotating at a ' + kind + ' boundary':<40} {statistics.median(times):8.2f} ms"
              f"  ({len(times)} samples)")


# --- 4. health reports -------------------------------------------------------------------------


def health_reports(rounds: int) -> None:
    """Cost of one health evaluation (the health actor's whole work per refresh) and of its
    JSON views, against building a trivial dict of the same top-level shape."""
    from actors import breaker, scheduler
    from actors.health import HealthInputs, evaluate
    from messages.config import Config

    cfg = Config()
    s = MetricsState.initial(now=0.0)
    for o, at in traffic(60_000, 0.0, 1000.0, 20, seed=9):
        s, _ = step(s, o, at)
    inputs = HealthInputs(breakers={t: breaker.snapshot(breaker.BreakerState.initial(t, c, now=0.0), 0.0)
                                    for t, c in cfg.tiers.items()},
                          queue=scheduler.snapshot(scheduler.SchedulerState.initial(cfg.queue), 0.0), metrics=snapshot(s, 60.0, routes=False),
                          started_at=0.0)
    report = evaluate(inputs, cfg, 60.0, wall=lambda now: 1.7e9 + now)
    base = median_ns(lambda: {"status": "healthy", "timestamp": "", "uptime": 0, "database": "",
                              "queue": "", "components": {}, "metrics": {}}, 1, rounds)
    ev = median_ns(lambda: evaluate(inputs, cfg, 60.0, wall=lambda now: 1.7e9 + now), 1, rounds)
    detailed = median_ns(report.detailed, 1, rounds)
    print("3. health report (4 tiers, queue, metrics without routes)")
    print(f"   {'trivial dict (baseline)':<32} {base / 1e3:8.2f} µs")
    print(f"   {'evaluate() -> HealthReport':<32} {ev / 1e3:8.2f} µs")
    print(f"   {'report.detailed() (JSON view)':<32} {detailed / 1e3:8.2f} µs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller runs, 3 rounds")
    args = ap.parse_args()
    rounds = 3 if args.quick else 7
    n = 50_000 if args.quick else 200_000
    print(f"python {sys.version.split()[0]}, medians of {rounds} rounds")
    candidates(n, rounds)
    for rate in (1000.0, 50.0):
        per_observation(n // 2, rounds, rate)
    health_reports(rounds)
    for routes, rate in ((20, 50.0), (200, 50.0)):
        snapshots(routes, rate, rounds)


if __name__ == "__main__":
    main()
