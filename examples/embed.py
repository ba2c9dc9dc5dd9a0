"""Embedding Triage in a host's own trio program: its own Starlette routes, its own hypercorn.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/app python examples/embed.py --port 8000

`POST /visits` records a visit (a rate check per client, then a guarded insert) and answers
201 with its number; `GET /visits.csv` streams every visit. Routes reach the monitoring
handle through `request.app.state.mon`. Triage errors that mean "not now" (`Refused`: rate
limited, circuit open, queue full or timed out, shutting down) become 429 or 503 with
`Retry-After`; nothing else is caught, so a bug is a 500, as in any Starlette app.

SIGTERM or Ctrl-C drains: hypercorn stops accepting, requests in flight finish (within
`graceful_timeout`), then the monitoring stops and the program exits 0.
"""

from __future__ import annotations

import argparse
import math
import signal
from collections.abc import AsyncIterator
from functools import partial

import hypercorn.config
import hypercorn.trio
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from actors import Refused, open_monitoring
from messages.config import Config, Priority

SCHEMA = "create table if not exists embed_visits (id bigserial primary key, " \
         "client text not null, at timestamptz not null default now())"


def refused(exc: Refused) -> Response:
    """Nothing was started, so retrying is safe: say when."""
    retry = exc.retry_after_s if exc.retry_after_s is not None else 1.0
    return JSONResponse({"error": str(exc)}, status_code=503,
                        headers={"retry-after": str(math.ceil(retry))})


async def record_visit(request: Request) -> Response:
    mon = request.app.state.mon
    client = request.client.host if request.client else "unknown"
    decision = await mon.check_rate("general", key=f"ip:{client}")
    if not decision.allowed:
        return JSONResponse({"error": "rate limited"}, status_code=429,
                            headers={"retry-after": str(math.ceil(decision.retry_after_s))})
    try:
        visit = await mon.db.fetchval("insert into embed_visits (client) values (%s) returning id",
                                      [client], priority=Priority.HIGH)
    except Refused as exc:
        return refused(exc)
    return JSONResponse({"visit": visit}, status_code=201)


async def export_visits(request: Request) -> Response:
    """A streamed export: the header line goes out first, the rows when the query answers."""
    mon = request.app.state.mon

    async def lines() -> AsyncIterator[str]:
        yield "id,client\n"
        rows = await mon.db.fetch("select id, client from embed_visits order by id",
                                  priority=Priority.LOW, tier="analytics")
        for visit_id, client in rows:
            yield f"{visit_id},{client}\n"

    return StreamingResponse(lines(), media_type="text/csv")


def build_app() -> Starlette:
    return Starlette(routes=[Route("/visits", record_visit, methods=["POST"]),
                             Route("/visits.csv", export_visits, methods=["GET"])])


async def first_signal(signals: AsyncIterator[int]) -> None:
    """Hypercorn's shutdown trigger: returns (and so starts the drain) at the first signal."""
    async for signum in signals:
        print(f"draining after {signal.Signals(signum).name}", flush=True)
        return


async def main(port: int) -> None:
    hc = hypercorn.config.Config()
    hc.bind, hc.accesslog, hc.graceful_timeout = [f"127.0.0.1:{port}"], None, 10.0
    app = build_app()
    # Open the receiver first: a signal during start-up waits for the server, then drains it.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with open_monitoring(Config.from_env()) as mon:
            app.state.mon = mon
            await mon.db.execute(SCHEMA)
            async with trio.open_nursery() as nursery:
                binds = await nursery.start(partial(hypercorn.trio.serve, app, hc,
                                                    shutdown_trigger=partial(first_signal, signals)))
                print(f"listening on {binds[0]}", flush=True)
            # hypercorn has drained; leaving open_monitoring stops the actors.
    print("stopped", flush=True)


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (0 picks a free one)")
    trio.run(main, cli.parse_args().port)
