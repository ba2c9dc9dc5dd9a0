"""A Triage server for the stream and loop-lag benchmarks (a child process; not run by hand).

    python scripts/bench/_served.py --tree DIR [--database-url URL] [--routes 200] [--rate 1000]

Imports `actors` from `--tree` (this checkout, or an export of another commit: the baseline
of a before/after run), so it uses only the public API both have: `open_monitoring`,
`create_app(mon, http, routes=...)`, `hypercorn_config`, `mon.observe_request`.
It serves the edge on a free loopback port and prints that port. Beside it run:

- traffic: `--rate` observations a second spread over `--routes` routes (the metrics
  actor's route cap is 200), as the HTTP edge would record them;
- a lag probe: a task that sleeps 1 ms again and again and records how late it wakes.
  `GET /_bench/lag` answers the probe's figures since the previous call, and starts afresh.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from functools import partial
from pathlib import Path

import trio

# This folder holds http.py, which would shadow the standard library's `http`.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


class Lag:
    """Overshoots of a 1 ms sleep, in seconds."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    async def probe(self) -> None:
        while True:
            t0 = time.perf_counter()
            await trio.sleep(0.001)
            self.samples.append(time.perf_counter() - t0 - 0.001)

    def take(self) -> dict:
        samples, self.samples = sorted(self.samples), []
        if not samples:
            return {"n": 0, "worst_ms": None, "p99_ms": None}
        return {"n": len(samples), "worst_ms": samples[-1] * 1e3,
                "p99_ms": samples[int(0.99 * (len(samples) - 1))] * 1e3}


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
    import hypercorn.trio
    from starlette.responses import Response
    from starlette.routing import Route

    from actors import open_monitoring
    from actors.http.app import create_app, hypercorn_config
    from messages.config import Config
    from messages.http_config import HttpConfig

    lag = Lag()

    async def lag_route(request):
        return Response(json.dumps(lag.take()), media_type="application/json")

    http = HttpConfig(host="127.0.0.1", port=0)
    hc = hypercorn_config(http)
    hc.errorlog = None
    hc.backlog = 2048
    async with open_monitoring(Config(database_url=args.database_url)) as mon, trio.open_nursery() as nursery:
        app = create_app(mon, http, routes=[Route("/_bench/lag", lag_route)])
        binds = await nursery.start(partial(hypercorn.trio.serve, app, hc))
        if args.rate > 0:
            nursery.start_soon(traffic, mon, args.routes, args.rate)
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
