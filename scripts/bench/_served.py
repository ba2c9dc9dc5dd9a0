"""A Triage server for the stream and loop-lag benchmarks (a child process; not run by hand).

    python scripts/bench/_served.py --tree DIR [--database-url URL] [--routes 200] [--rate 1000]

Imports `actors` from `--tree` (this checkout, or an export of another commit: the baseline
of a before/after run), so it uses only what both have: `triage serve`'s `actors.cli.serve` (its start-up as
shipped), `create_app(mon, http, routes=...)`, `mon.observe_request`.
It serves the edge on a free loopback port and prints that port. Beside it run:

- traffic: `--rate` observations a second spread over `--routes` routes (the metrics
  actor's route cap is 200), as the HTTP edge would record them;
- a lag probe: a task that sleeps 1 ms again and again and records how late it wakes, and
  how much CPU time the process spent meanwhile (its own work, whatever else the machine runs).
  `GET /_bench/lag` answers the probe's figures since the previous call, and starts afresh.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import sys
import time
from pathlib import Path

import trio

# This folder holds http.py, which would shadow the standard library's `http`.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


class Lag:
    """Overshoots of a 1 ms sleep, in seconds: wall time, and the process's CPU time in it.

    On a shared machine the wall figure also counts the time the OS ran other processes; the
    CPU figure is only this process's own work while the sleeper waited (the loop's stall)."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.gc_worst, self._gc_at = 0.0, 0.0
        gc.callbacks.append(self._gc)

    def _gc(self, phase: str, info: dict) -> None:
        """The garbage collector's pauses: they stall the loop too, and show apart."""
        if phase == "start":
            self._gc_at = time.perf_counter()
        else:
            self.gc_worst = max(self.gc_worst, time.perf_counter() - self._gc_at)

    async def probe(self) -> None:
        while True:
            t0, c0 = time.perf_counter(), time.process_time()
            await trio.sleep(0.001)
            self.wall.append(time.perf_counter() - t0 - 0.001)
            self.cpu.append(time.process_time() - c0)

    def take(self) -> dict:
        wall, cpu, self.wall, self.cpu = sorted(self.wall), sorted(self.cpu), [], []
        gc_worst, self.gc_worst = self.gc_worst, 0.0
        if not wall:
            return {"n": 0}
        return {"n": len(wall), "gc_worst_ms": gc_worst * 1e3, "gc_objects": len(gc.get_objects()), "worst_ms": wall[-1] * 1e3, "p99_ms": wall[int(0.99 * (len(wall) - 1))] * 1e3,
                "cpu_worst_ms": cpu[-1] * 1e3, "cpu_p99_ms": cpu[int(0.99 * (len(cpu) - 1))] * 1e3}


async def traffic(mon, routes: int, rate: float) -> None:
    r = random.Random(7)
    period, n = 0.01, max(1, round(rate * 0.01))
    i = 0
    while True:
        for _ in range(n):
            mon.observe_request(f"GET /r{i % routes}", 200, r.lognormvariate(math.log(0.02), 1.0))
            i += 1
        await trio.sleep(period)


async def main(args: argparse.Namespace) -> None:
    """`triage serve`'s own `serve` (whatever it does at start-up, the tree decides), with a
    factory that adds the lag route and hands the handle to the traffic task."""
    from starlette.responses import Response
    from starlette.routing import Route

    from actors.cli import serve
    from actors.http.app import create_app
    from messages.config import Config
    from messages.http_config import HttpConfig

    lag, ready, handle = Lag(), trio.Event(), {}

    async def lag_route(request):
        return Response(json.dumps(lag.take()), media_type="application/json")

    def factory(mon, http):
        handle["mon"] = mon
        ready.set()
        return create_app(mon, http, routes=[Route("/_bench/lag", lag_route)])

    http = HttpConfig(host="127.0.0.1", port=0)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, Config(database_url=args.database_url), http, factory)
        await ready.wait()
        if args.rate > 0:
            nursery.start_soon(traffic, handle["mon"], args.routes, args.rate)
        nursery.start_soon(lag.probe)
        print(binds[0].rsplit(":", 1)[1], flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--tree", required=True)
    p.add_argument("--database-url")
    p.add_argument("--routes", type=int, default=200)
    p.add_argument("--rate", type=float, default=1000.0)
    a = p.parse_args()
    sys.path.insert(0, str(Path(a.tree).resolve()))
    trio.run(main, a)
