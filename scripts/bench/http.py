"""HTTP edge benchmark: `GET /api/health` through Triage vs a bare hypercorn + Starlette app.

    .venv/bin/python scripts/bench/http.py [--seconds 3] [--rounds 5] [--connections 32]
                                           [--database-url URL | --no-database]

Both servers run as subprocesses on loopback with the same hypercorn settings
(trio worker, one process each); the bare one answers a constant JSON body from
a Starlette route. This process drives one server at a time with N keep-alive
connections (a small raw-socket HTTP/1.1 client on trio, one request in flight
per connection), alternating which server goes first each round, and prints
requests/s and p99 latency per round, their medians, and the ratio
Triage / bare. Target: ratio >= 0.8.

The Triage server is the full edge (`create_app`: edge, rate-limit middleware,
Starlette routing, the health route) with a monitoring system whose database
monitor probes PostgreSQL (--database-url; else DATABASE_URL, else an embedded one: the
serving rule; --no-database for none).
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named like the standard library's `http`, which hypercorn imports: take its
# directory off the import path before anything else is imported.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from contextlib import AbstractContextManager, nullcontext  # noqa: E402
from functools import partial  # noqa: E402

import trio  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from actors.pg.embedded import serving_database  # noqa: E402

REQUEST = b"GET /api/health HTTP/1.1\r\nhost: bench\r\n\r\n"


# -- the servers (child processes) ----------------------------------------------------------

async def serve_bare() -> None:
    import hypercorn.trio
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    from actors.http.app import hypercorn_config
    from messages.http_config import HttpConfig

    body = b'{"status":"healthy","timestamp":"2024-01-01T12:00:00.000Z"}'

    async def health(request):
        return Response(body, media_type="application/json")

    app = Starlette(routes=[Route("/api/health", health)])
    await _serve(hypercorn.trio.serve, app, hypercorn_config(HttpConfig(port=0)))


async def serve_triage(database_url: str | None) -> None:
    import hypercorn.trio

    from actors import open_monitoring
    from actors.http.app import create_app, hypercorn_config
    from messages.config import Config
    from messages.http_config import HttpConfig

    http = HttpConfig(port=0)
    async with open_monitoring(Config(database_url=database_url)) as mon:
        app = create_app(mon, http)
        await _serve(hypercorn.trio.serve, app, hypercorn_config(http))


async def _serve(serve, app, hc) -> None:
    hc.errorlog = None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(serve, app, hc))
        print(binds[0].rsplit(":", 1)[1], flush=True)  # the port, for the parent


# -- the load (this process) ----------------------------------------------------------------

async def one_connection(port: int, until: float, latencies: list[float]) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    buffer = b""
    async with stream:
        while trio.current_time() < until:
            t0 = time.perf_counter()
            await stream.send_all(REQUEST)
            while True:
                end = buffer.find(b"\r\n\r\n")
                if end >= 0:
                    head = buffer[:end].lower()
                    length = int(head[head.find(b"content-length:") + 15:].split(b"\r\n", 1)[0])
                    if len(buffer) >= end + 4 + length:
                        buffer = buffer[end + 4 + length:]
                        break
                chunk = await stream.receive_some(65536)
                if not chunk:
                    raise ConnectionError("server closed the connection")
                buffer += chunk
            if not head.startswith(b"http/1.1 2"):
                raise RuntimeError(head.split(b"\r\n")[0].decode())
            latencies.append(time.perf_counter() - t0)


async def load(port: int, seconds: float, connections: int) -> tuple[float, float]:
    """(requests/s, p99 seconds) over `seconds`, after a short warm-up."""
    async with trio.open_nursery() as nursery:
        warm: list[float] = []
        for _ in range(connections):
            nursery.start_soon(one_connection, port, trio.current_time() + 0.5, warm)
    latencies: list[float] = []
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(one_connection, port, t0 + seconds, latencies)
    elapsed = trio.current_time() - t0
    latencies.sort()
    return len(latencies) / elapsed, latencies[int(0.99 * (len(latencies) - 1))]


def start(kind: str, database_url: str | None) -> tuple[subprocess.Popen, int]:
    args = [sys.executable, __file__, "--serve", kind]
    if database_url:
        args += ["--database-url", database_url]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=ROOT, preexec_fn=_pin(0))
    return proc, int(proc.stdout.readline())


def _pin(cpu: int):
    """Servers on CPU 0, the load on CPU 1 (when there are two): less noise between runs."""
    def pin() -> None:
        if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
            os.sched_setaffinity(0, {cpu})
    return pin


def database(args: argparse.Namespace) -> AbstractContextManager[str | None]:
    """--no-database, --database-url, else the serving rule (DATABASE_URL, else embedded)."""
    if args.no_database or args.database_url:
        return nullcontext(None if args.no_database else args.database_url)
    return serving_database()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--database-url")
    p.add_argument("--no-database", action="store_true")
    p.add_argument("--serve", choices=("bare", "triage"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve == "bare":
        return trio.run(serve_bare)
    if args.serve == "triage":
        return trio.run(serve_triage, args.database_url)

    with database(args) as url:
        compare(args, url)


def compare(args: argparse.Namespace, url: str | None) -> None:
    _pin(1)()
    servers = {kind: start(kind, url) for kind in ("bare", "triage")}
    print(f"GET /api/health, {args.connections} keep-alive connections, {args.seconds:g} s per run, "
          f"{args.rounds} rounds; Triage database: {'PostgreSQL' if url else 'none'}; "
          f"{os.cpu_count()} CPUs")
    results: dict[str, list[tuple[float, float]]] = {"bare": [], "triage": []}
    try:
        for r in range(args.rounds):
            order = ("bare", "triage") if r % 2 == 0 else ("triage", "bare")
            for kind in order:
                rps, p99 = trio.run(load, servers[kind][1], args.seconds, args.connections)
                results[kind].append((rps, p99))
                print(f"  round {r + 1} {kind:<6}  {rps:8.0f} req/s   p99 {p99 * 1000:6.2f} ms")
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=10)
    med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for k, v in results.items()}
    for kind, (rps, p99) in med.items():
        print(f"median {kind:<6}  {rps:8.0f} req/s   p99 {p99 * 1000:6.2f} ms")
    ratio = med["triage"][0] / med["bare"][0]
    print(f"ratio triage/bare: {ratio:.2f} (target >= 0.80) {'OK' if ratio >= 0.8 else 'BELOW TARGET'}")


if __name__ == "__main__":
    main()
