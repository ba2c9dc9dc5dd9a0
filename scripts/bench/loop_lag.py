"""The event loop's worst stall from Triage's own work, at the 200-route cap.

    .venv/bin/python scripts/bench/loop_lag.py [--database-url URL] [--before DIR] [--rounds 1]

A served child (`_served.py`) records 1,000 requests a second over 200 routes (the metrics
actor's cap) and runs a lag probe: a task that sleeps 1 ms and records how late it wakes.
Each phase reads the probe's figures for its own span:

- rotations: traffic only, 21 s, so the metrics rings rotate at least twice at 10 s;
- scrapes: `GET /metrics` twice a second for 10 s (each scrape's duration printed too);
- snapshots: 20 open dashboard streams for 10 s.

Printed per phase: the probe's worst and p99 overshoot (ms), in wall time and in the server's
own CPU time meanwhile (on a shared machine the wall figure also holds the time the OS gave
other processes; the CPU one is Triage's work alone). Goal (issue 13): no stall of its own
over 20 ms, a scrape <= 10 ms of loop time. With `--before DIR` (a tree of the baseline, see `_edge.py`)
both trees run, alternating rounds, and the ratios after / before are printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.append(str(Path(__file__).resolve().parent))  # after the standard library: _edge

import _edge  # noqa: E402
import trio  # noqa: E402

PHASES = ("rotations", "scrapes", "snapshots")


async def lag(port: int) -> dict:
    status, body, _ = await _edge.fetch(port, "/_bench/lag")
    assert status == 200, status
    return json.loads(body)


async def phase_rotations(port: int) -> dict:
    await trio.sleep(21.0)
    return await lag(port)


async def phase_scrapes(port: int) -> dict:
    took = []
    for _ in range(20):
        status, body, seconds = await _edge.fetch(port, "/metrics")
        assert status == 200 and b"triage_http_request_duration_seconds_bucket" in body, status
        took.append(seconds)
        await trio.sleep(0.5)
    out = await lag(port)
    out["scrape_ms"] = statistics.median(took) * 1e3
    return out


async def phase_snapshots(port: int) -> dict:
    counts = [0]
    async with trio.open_nursery() as nursery:
        opened = trio.Semaphore(20)
        for _ in range(20):
            nursery.start_soon(_edge.sse_reader, port, "/api/dashboard/stream", opened, counts)
        await trio.sleep(10.0)
        nursery.cancel_scope.cancel()
    out = await lag(port)
    out["events"] = counts[0]
    return out


async def run_tree(port: int) -> dict:
    await trio.sleep(3.0)  # warm up: every route seen, the first rotations behind
    await lag(port)
    return {"rotations": await phase_rotations(port), "scrapes": await phase_scrapes(port),
            "snapshots": await phase_snapshots(port)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--database-url")
    p.add_argument("--before", help="a tree of the baseline commit (see _edge.py)")
    p.add_argument("--rounds", type=int, default=1)
    args = p.parse_args()
    trees = _edge.trees(args.before)
    results: dict[str, list[dict]] = {name: [] for name in trees}
    print(f"loop lag at 200 routes, 1,000 requests/s recorded; {args.rounds} round(s); trees: "
          + ", ".join(f"{k}={v}" for k, v in trees.items()))
    for r in range(args.rounds):
        order = list(trees) if r % 2 == 0 else list(reversed(trees))
        for name in order:
            proc, port = _edge.start(trees[name], args.database_url, routes=200, rate=1000.0)
            try:
                res = trio.run(run_tree, port)
            finally:
                _edge.stop(proc)
            results[name].append(res)
            for ph in PHASES:
                x = res[ph]
                extra = f"  scrape {x['scrape_ms']:.1f} ms" if "scrape_ms" in x else ""
                print(f"  round {r + 1} {name:<6} {ph:<10} wall: worst {x['worst_ms']:7.1f} p99 {x['p99_ms']:6.2f}"
                      f"   own CPU: worst {x['cpu_worst_ms']:6.1f} p99 {x['cpu_p99_ms']:5.2f}"
                      f"   gc pause: worst {x['gc_worst_ms']:5.1f} ms ({x['gc_objects']} objects){extra}")
    keys = ("worst_ms", "p99_ms", "cpu_worst_ms", "cpu_p99_ms")
    med = {name: {ph: {k: statistics.median(res[ph][k] for res in rs) for k in keys} for ph in PHASES}
           for name, rs in results.items()}
    print("medians over rounds (ms; 'own' = the server's CPU time while the sleeper waited):")
    for name, m in med.items():
        print(f"  {name:<6} " + "   ".join(
            f"{ph}: worst {m[ph]['worst_ms']:.1f} (own {m[ph]['cpu_worst_ms']:.1f}) p99 {m[ph]['p99_ms']:.2f}"
            for ph in PHASES))
    if "before" in med:
        print("ratios after/before (own worst): " + ", ".join(
            f"{ph} {med['after'][ph]['cpu_worst_ms'] / med['before'][ph]['cpu_worst_ms']:.2f}" for ph in PHASES))
    worst = max(med["after"][ph]["cpu_worst_ms"] for ph in PHASES)
    print(f"after: worst stall of its own {worst:.1f} ms (goal < 20 ms) {'OK' if worst < 20 else 'ABOVE GOAL'}")


if __name__ == "__main__":
    main()
