"""Open dashboard streams: the server's CPU and /api/health p99 with 0, 100 and 1,000 of them.

    .venv/bin/python scripts/bench/streams.py [--database-url URL] [--before DIR]
                                              [--streams 0,100,1000] [--seconds 10] [--rounds 1]

A served child (`_served.py`, no recorded traffic) runs the edge; this process opens N
`/api/dashboard/stream` connections (raw HTTP/1.1 on trio, reading and counting events),
lets them settle, then for `--seconds` measures the child's CPU time (user + system, from
/proc) and the latency of `GET /api/health` asked 20 times a second on a keep-alive
connection by a prober in a process of its own. Printed per N: CPU as % of one core,
snapshot events received per second, the health p99, what the streams add over N = 0, and
that per frame delivered (a saturated server delivers fewer frames: its added CPU is then
capped by the core it gets, and the per-frame figure is the fair comparison). Goal (issue 13): 1,000 streams add <= 10 %
of a core; health p99 < 1 s with them open. With `--before DIR` (a tree of the baseline,
see `_edge.py`) both trees run, alternating rounds, and the ratios after / before are printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.append(str(Path(__file__).resolve().parent))  # after the standard library: _edge

import _edge  # noqa: E402
import trio  # noqa: E402


async def health_latencies(port: int, seconds: float) -> list[float]:
    out: list[float] = []
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    buffer = bytearray()
    async with stream:
        deadline = trio.current_time() + seconds
        while trio.current_time() < deadline:
            t0 = time.perf_counter()
            status, _ = await _edge.get(stream, "/api/health", buffer)
            out.append(time.perf_counter() - t0)
            assert status in (200, 206, 503), status
            await trio.sleep(0.05)
    return out


def probe(port: int, seconds: float) -> None:
    """The health prober (its own process, so 1,000 readers do not delay its clock)."""
    lat = trio.run(health_latencies, port, seconds)
    print(json.dumps(lat))


async def measure(pid: int, port: int, n: int, seconds: float) -> dict:
    counts = [0]
    async with trio.open_nursery() as nursery:
        opened = trio.Semaphore(50)  # connect at most 50 at a time: the listen backlog
        for _ in range(n):
            nursery.start_soon(_edge.sse_reader, port, "/api/dashboard/stream", opened, counts)
        await trio.sleep(3.0 + n / 500)  # all connected, the first frames behind
        cpu0, t0, events0 = _edge.cpu_seconds(pid), time.perf_counter(), counts[0]
        prober = await trio.run_process([sys.executable, __file__, "--probe", str(port), str(seconds)],
                                        capture_stdout=True)
        lat = json.loads(prober.stdout)
        cpu1, t1, events1 = _edge.cpu_seconds(pid), time.perf_counter(), counts[0]
        nursery.cancel_scope.cancel()
    await trio.sleep(1.0)  # the server lets the streams go
    return {"cpu": (cpu1 - cpu0) / (t1 - t0) * 100, "events_per_s": (events1 - events0) / (t1 - t0),
            "health_p99_ms": _edge.percentile(lat, 0.99) * 1e3}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--database-url")
    p.add_argument("--before", help="a tree of the baseline commit (see _edge.py)")
    p.add_argument("--streams", default="0,100,1000")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--probe", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.probe:
        return probe(int(args.probe[0]), float(args.probe[1]))
    counts = [int(x) for x in args.streams.split(",")]
    trees = _edge.trees(args.before)
    results: dict[str, dict[int, list[dict]]] = {name: {n: [] for n in counts} for name in trees}
    print(f"dashboard streams {counts}, {args.seconds:g} s each, {args.rounds} round(s); trees: "
          + ", ".join(f"{k}={v}" for k, v in trees.items()))
    for r in range(args.rounds):
        order = list(trees) if r % 2 == 0 else list(reversed(trees))
        for name in order:
            proc, port = _edge.start(trees[name], args.database_url, routes=200, rate=0.0)
            try:
                for n in counts:
                    res = trio.run(measure, proc.pid, port, n, args.seconds)
                    results[name][n].append(res)
                    print(f"  round {r + 1} {name:<6} {n:5d} streams: CPU {res['cpu']:6.1f} % of a core, "
                          f"{res['events_per_s']:7.0f} snapshots/s received, health p99 "
                          f"{res['health_p99_ms']:8.1f} ms", flush=True)
            finally:
                _edge.stop(proc)
    print("medians over rounds:")
    med = {name: {n: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for n, rs in by_n.items()}
           for name, by_n in results.items()}
    base = counts[0]
    for name, by_n in med.items():
        for n, m in by_n.items():
            added = m["cpu"] - by_n[base]["cpu"]
            per = added / 100 / m["events_per_s"] * 1e6 if m["events_per_s"] else float("nan")
            print(f"  {name:<6} {n:5d} streams: CPU {m['cpu']:6.1f} % (adds {added:6.1f} % over {base}; "
                  f"{per:5.0f} µs a frame delivered), health p99 {m['health_p99_ms']:8.1f} ms")
    if "before" in med:
        for n in counts[1:]:
            a = med["after"][n]["cpu"] - med["after"][base]["cpu"]
            b = med["before"][n]["cpu"] - med["before"][base]["cpu"]
            print(f"  {n} streams: CPU they add, after/before = {a / b if b > 0 else float('nan'):.3f}; "
                  f"health p99 after/before = "
                  f"{med['after'][n]['health_p99_ms'] / med['before'][n]['health_p99_ms']:.3f}")
    top = max(counts)
    added = med["after"][top]["cpu"] - med["after"][base]["cpu"]
    p99 = med["after"][top]["health_p99_ms"]
    print(f"after, {top} streams: add {added:.1f} % of a core (goal <= 10 %), health p99 {p99:.0f} ms "
          f"(goal < 1000) {'OK' if added <= 10 and p99 < 1000 else 'ABOVE GOAL'}")


if __name__ == "__main__":
    main()
