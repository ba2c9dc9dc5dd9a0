"""HTTP edge benchmark: Triage vs a bare hypercorn-trio + Starlette app, same route, same run.

    .venv/bin/python scripts/bench/http.py [--route health|animals] [--seconds 3] [--rounds 5]
                                           [--connections 32] [--database-url URL | --no-database]
                                           [--baseline-tree DIR] [--in-process [--requests N]]

Both servers run as subprocesses on loopback with the same hypercorn settings
(trio worker, one process each, pinned to CPU 0; the load on CPU 1). This
process drives one server at a time with N keep-alive connections (a small
raw-socket HTTP/1.1 client on trio, one request in flight per connection),
alternating which server goes first each round, and prints per round
requests/s, p99 latency and **CPU per request** (the server process's user +
system CPU time from /proc/<pid>/stat over the run, divided by the requests it
answered), their medians, and the ratios Triage / bare.

Triage is served by `actors.cli.serve`, the function behind `triage serve` (its start-up,
`gc.freeze()` of what start-up built, its signal handling), with this file's app factory;
the bare app by `hypercorn.trio.serve` as it stands.

The servers start in the order Triage, bare, before. On this 2-core machine the first one
started read up to ~10 % dearer than an identical tree started third: to compare two trees,
run both ways (each as the checkout and as --baseline-tree) and take the geometric mean of
the two ratios.

``--route health`` (default): `GET /api/health`. The bare app answers a constant JSON
body from a Starlette route; Triage is the full edge (`create_app`: edge,
rate-limit middleware, Starlette routing, the health route) with a monitoring
system whose database monitor probes PostgreSQL. Target: req/s ratio >= 0.8.

``--baseline-tree DIR`` adds a third server, Triage from another checkout ("before", e.g.
`git archive <commit> | tar -x -C DIR`), to every round.

``--route animals``: `GET /api/animals` of the reference service
(examples/vet_tracker: edge, rate limit on the `general` policy -- its limit raised so
that nothing is refused --, the guarded `mon.db.fetch`, JSON). The bare app runs the
same query on 8 connections of raw non-blocking psycopg (`pgconn` driven with
`trio.lowlevel.wait_readable`/`wait_writable`, a `trio.Semaphore` for the slots, no
Triage class) from one Starlette route and encodes the same body with msgspec.
Target: CPU per request ratio <= 1.3. Needs PostgreSQL.

``--in-process``: Triage's own share, without hypercorn and sockets (the same in both
servers, and most of the noise on a shared machine): both ASGI apps, built as the servers
build them (without the served start-up's `gc.freeze()`), called directly in this process by
`--connections` callers at once, alternating rounds of `--requests`; prints each app's process CPU per request, the
difference (Triage's own work a request) and the ratio of the apps alone. Both apps live in
one process, so Triage's background actors are charged to the bare app's rounds too (a
fraction of a µs a request).

The database: --database-url; else DATABASE_URL, else an embedded one (the serving
rule); --no-database for none (health only).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# This file is named like the standard library's `http`, which hypercorn imports: take its
# directory off the import path before anything else is imported.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from contextlib import AbstractContextManager, nullcontext  # noqa: E402
from functools import partial  # noqa: E402
from typing import Any  # noqa: E402

import trio  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# A server for --baseline-tree runs this file with that checkout's code on the path instead.
sys.path.insert(0, os.environ.get("TRIAGE_BENCH_TREE") or str(ROOT))

from actors.pg.embedded import serving_database  # noqa: E402

PATHS = {"health": "/api/health", "animals": "/api/animals"}
SLOTS = 8  # the bare app's connections: Triage's default max_concurrent


# -- the servers (child processes) ----------------------------------------------------------

async def serve_bare(route: str, database_url: str | None, run: Any = None) -> None:
    import hypercorn.trio
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    from actors.http.app import hypercorn_config
    from messages.http_config import HttpConfig

    body = b'{"status":"healthy","timestamp":"2024-01-01T12:00:00.000Z"}'

    async def health(request):
        return Response(body, media_type="application/json")

    if route == "health":
        app = Starlette(routes=[Route("/api/health", health)])
        return await (run or _serve)(hypercorn.trio.serve, app, hypercorn_config(HttpConfig(port=0)))
    pool = BarePool(database_url, SLOTS)
    sql = BARE_ANIMALS.format(s=HttpConfig().demo_schema).encode()

    async def animals(request):
        rows = await pool.query(sql, (b"50", b"0", None))
        data = [{"id": int(r[0]), "name": r[1].decode(), "species": r[2].decode(),
                 "bornOn": None if r[3] is None else r[3].decode(),
                 "owner": {"id": int(r[4]), "name": r[5].decode()}} for r in rows]
        return Response(_encode({"animals": data, "stale": False}), media_type="application/json",
                        headers={"cache-control": "no-store"})

    app = Starlette(routes=[Route("/api/animals", animals)])
    await (run or _serve)(hypercorn.trio.serve, app, hypercorn_config(HttpConfig(port=0)))


# The reference service's query (examples/vet_tracker/schema.py), in libpq's $n form.
BARE_ANIMALS = ("SELECT a.id, a.name, a.species, a.born_on, o.id, o.name FROM {s}.animals a "
                "JOIN {s}.owners o ON o.id = a.owner_id "
                "WHERE ($3::int IS NULL OR a.owner_id = $3::int) "
                "ORDER BY a.id LIMIT $1::int OFFSET $2::int")


def _encode(value):
    import msgspec
    return msgspec.json.encode(value)


class BarePool:
    """N raw libpq connections (psycopg's `pgconn`, non-blocking) behind a `trio.Semaphore`."""

    def __init__(self, dsn: str, n: int) -> None:
        from psycopg import pq

        self.pq = pq
        self.idle = []
        for _ in range(n):
            conn = pq.PGconn.connect(dsn.encode())
            if conn.status != pq.ConnStatus.OK:
                raise RuntimeError(conn.get_error_message())
            conn.nonblocking = 1
            self.idle.append(conn)
        self.slots = trio.Semaphore(n)

    async def query(self, sql: bytes, params: tuple) -> list[tuple]:
        async with self.slots:
            conn = self.idle.pop()
            try:
                return await self._run(conn, sql, params)
            finally:
                self.idle.append(conn)

    async def _run(self, conn, sql: bytes, params: tuple) -> list[tuple]:
        conn.send_query_params(sql, params)
        while conn.flush():
            await trio.lowlevel.wait_writable(conn.socket)
        while True:
            conn.consume_input()
            if not conn.is_busy():
                break
            await trio.lowlevel.wait_readable(conn.socket)
        rows: list[tuple] = []
        while (res := conn.get_result()) is not None:
            if res.status != self.pq.ExecStatus.TUPLES_OK:
                raise RuntimeError(res.error_message.decode())
            cols = range(res.nfields)
            rows += [tuple(res.get_value(i, c) for c in cols) for i in range(res.ntuples)]
            while conn.is_busy():  # the next result (or the end) may still be on the wire
                await trio.lowlevel.wait_readable(conn.socket)
                conn.consume_input()
        return rows


async def serve_triage(route: str, database_url: str | None, run: Any = None) -> None:
    import hypercorn.trio

    from actors import open_monitoring
    from actors.http.app import create_app, hypercorn_config
    from messages.config import Config, RatePolicy, _default_policies
    from messages.http_config import HttpConfig

    http = HttpConfig(port=0, grace_s=1.0)  # on SIGTERM: drain 1 s at most (the parent waits 10)
    # Rate-limited, never refused: the check runs on every request, at a limit no run reaches.
    policies = {**_default_policies(), "general": RatePolicy(limit=10**9, window_s=60.0)}
    config = Config(database_url=database_url, policies=policies)

    def factory(mon: Any, http: HttpConfig) -> Any:
        if route == "health":
            return create_app(mon, http)
        from examples.vet_tracker.service import DemoService

        return create_app(mon, http, service=DemoService(mon, http))

    if run is None:  # served as `triage serve` serves (actors/cli.py: its start-up, gc.freeze, signals)
        from actors.cli import serve

        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(serve, config, http, factory))
            print(binds[0].rsplit(":", 1)[1], flush=True)  # the port, for the parent
        return
    async with open_monitoring(config) as mon:
        await run(hypercorn.trio.serve, factory(mon, http), hypercorn_config(http))


async def _serve(serve, app, hc) -> None:
    hc.errorlog = None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(serve, app, hc))
        print(binds[0].rsplit(":", 1)[1], flush=True)  # the port, for the parent


# -- in process: the two ASGI apps alone ----------------------------------------------------

async def in_process(route: str, database_url: str | None, rounds: int, requests: int,
                     connections: int) -> dict[str, list[float]]:
    """CPU µs per request of each app called directly (no hypercorn, no sockets), alternating."""
    apps: dict[str, Any] = {}

    def keep(kind: str) -> Any:
        async def run(serve: Any, app: Any, hc: Any) -> None:
            apps[kind] = app
            await trio.sleep_forever()
        return run

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_triage, route, database_url, keep("triage"))
        nursery.start_soon(serve_bare, route, database_url, keep("bare"))
        while len(apps) < 2:
            await trio.sleep(0.05)
        await nursery.start(_lifespan, apps["triage"])  # the reference service sets its tables up
        path = PATHS[route]
        for app in apps.values():
            with trio.fail_after(60):
                while not await _answers(app, path):
                    await trio.sleep(0.2)
            await _drive(app, path, 2000, connections)  # warm-up
        results: dict[str, list[float]] = {"triage": [], "bare": []}
        for r in range(rounds):
            for kind in (("triage", "bare") if r % 2 == 0 else ("bare", "triage")):
                results[kind].append(await _drive(apps[kind], path, requests, connections))
                print(f"  round {r + 1} {kind:<6}  CPU {results[kind][-1] * 1e6:6.1f} µs/request", flush=True)
        nursery.cancel_scope.cancel()
    return results


async def _lifespan(app: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    started = False

    async def receive() -> dict:
        if not started:
            return {"type": "lifespan.startup"}
        await trio.sleep_forever()

    async def send(message: dict) -> None:
        nonlocal started
        if not started:
            started = True
            task_status.started()

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)


def _http_scope(path: str) -> dict:
    """A request's scope as hypercorn builds it."""
    return {"type": "http", "asgi": {"spec_version": "2.3", "version": "3.0"}, "http_version": "1.1",
            "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "headers": [(b"host", b"bench")], "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8000), "extensions": {}, "state": {}}


_REQUEST = {"type": "http.request", "body": b"", "more_body": False}


async def _receive() -> dict:
    return _REQUEST


async def _answers(app: Any, path: str) -> bool:
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)
    await app(_http_scope(path), _receive, send)
    return sent[0]["status"] == 200


async def _drive(app: Any, path: str, requests: int, connections: int) -> float:
    """Process CPU seconds per request over `requests`, `connections` callers at once."""
    failed: list[int] = []

    async def caller(n: int) -> None:
        for _ in range(n):
            status = 0

            async def send(message: dict) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
            await app(_http_scope(path), _receive, send)
            if status != 200:
                failed.append(status)

    per = requests // connections
    cpu0 = time.process_time()
    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(caller, per)
    cpu = time.process_time() - cpu0
    if failed:
        raise RuntimeError(f"{len(failed)} answers were not 200 (first: {failed[0]})")
    return cpu / (per * connections)


def report_in_process(results: dict[str, list[float]]) -> None:
    med = {k: statistics.median(v) for k, v in results.items()}
    per_round = [t / b for t, b in zip(results["triage"], results["bare"], strict=True)]
    print(f"median triage {med['triage'] * 1e6:6.1f} µs/request   bare {med['bare'] * 1e6:6.1f} µs/request   "
          f"Triage's own share {(med['triage'] - med['bare']) * 1e6:5.1f} µs")
    print(f"ratio triage/bare (the apps alone): CPU per request {med['triage'] / med['bare']:.2f} "
          f"(per round {min(per_round):.2f}–{max(per_round):.2f})")


# -- the load (this process) ----------------------------------------------------------------

async def one_connection(port: int, request: bytes, until: float, latencies: list[float]) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    buffer = b""
    async with stream:
        while trio.current_time() < until:
            t0 = time.perf_counter()
            await stream.send_all(request)
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


def request_for(path: str) -> bytes:
    return b"GET %s HTTP/1.1\r\nhost: bench\r\n\r\n" % path.encode()


async def ready(port: int, request: bytes, timeout_s: float = 60.0) -> None:
    """Until the server answers 2xx (the reference service sets its tables up first)."""
    with trio.fail_after(timeout_s):
        while True:
            try:
                await one_connection(port, request, trio.current_time() + 0.01, [])
                return
            except (RuntimeError, ConnectionError, OSError):
                await trio.sleep(0.2)


async def load(port: int, request: bytes, seconds: float, connections: int, pid: int
               ) -> tuple[float, float, float]:
    """(requests/s, p99 seconds, server CPU seconds per request) over `seconds`, after a warm-up."""
    async with trio.open_nursery() as nursery:
        warm: list[float] = []
        for _ in range(connections):
            nursery.start_soon(one_connection, port, request, trio.current_time() + 0.5, warm)
    latencies: list[float] = []
    cpu0, t0 = cpu_seconds(pid), trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(one_connection, port, request, t0 + seconds, latencies)
    elapsed, cpu = trio.current_time() - t0, cpu_seconds(pid) - cpu0
    latencies.sort()
    return len(latencies) / elapsed, latencies[int(0.99 * (len(latencies) - 1))], cpu / len(latencies)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (/proc/<pid>/stat, fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(kind: str, route: str, database_url: str | None, baseline: Path | None = None
          ) -> tuple[subprocess.Popen, int]:
    args = [sys.executable, __file__, "--serve", "bare" if kind == "bare" else "triage", "--route", route]
    if database_url:
        args += ["--database-url", database_url]
    env = {**os.environ, "TRIAGE_BENCH_TREE": str(baseline)} if kind == "before" else None
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=ROOT, preexec_fn=_pin(0), env=env)
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
    p.add_argument("--route", choices=tuple(PATHS), default="health")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--database-url")
    p.add_argument("--no-database", action="store_true")
    p.add_argument("--baseline-tree", type=Path, help="also serve Triage from this checkout ('before')")
    p.add_argument("--in-process", action="store_true",
                   help="call both ASGI apps in this process, without hypercorn or sockets")
    p.add_argument("--requests", type=int, default=10_000, help="per round, with --in-process")
    p.add_argument("--serve", choices=("bare", "triage"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve == "bare":
        return trio.run(serve_bare, args.route, args.database_url)
    if args.serve == "triage":
        return trio.run(serve_triage, args.route, args.database_url)
    if args.route == "animals" and args.no_database:
        p.error("--route animals needs a database")
    with database(args) as url:
        if args.in_process:
            print(f"GET {PATHS[args.route]} in process, {args.connections} callers at once, {args.requests} "
                  f"requests per round, {args.rounds} rounds; Triage database: {'PostgreSQL' if url else 'none'}")
            return report_in_process(trio.run(in_process, args.route, url, args.rounds, args.requests,
                                              args.connections))
        compare(args, url)


def compare(args: argparse.Namespace, url: str | None) -> None:
    _pin(1)()
    request = request_for(PATHS[args.route])
    servers: dict[str, tuple[subprocess.Popen, int]] = {}
    kinds = ("triage", "bare", *(("before",) if args.baseline_tree else ()))
    try:
        for kind in kinds:  # Triage first: the reference service creates the tables
            servers[kind] = start(kind, args.route, url, args.baseline_tree and args.baseline_tree.resolve())
            trio.run(ready, servers[kind][1], request)
        print(f"GET {PATHS[args.route]}, {args.connections} keep-alive connections, {args.seconds:g} s "
              f"per run, {args.rounds} rounds; Triage database: {'PostgreSQL' if url else 'none'}; "
              f"{os.cpu_count()} CPUs")
        results: dict[str, list[tuple[float, float, float]]] = {k: [] for k in kinds}
        for r in range(args.rounds):
            order = kinds[::-1] if r % 2 == 0 else kinds
            for kind in order:
                proc, port = servers[kind]
                rps, p99, cpu = trio.run(load, port, request, args.seconds, args.connections, proc.pid)
                results[kind].append((rps, p99, cpu))
                print(f"  round {r + 1} {kind:<6}  {rps:8.0f} req/s   p99 {p99 * 1000:6.2f} ms   "
                      f"CPU {cpu * 1e6:6.0f} µs/request")
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=10)
    med = {k: tuple(statistics.median(x[i] for x in v) for i in range(3)) for k, v in results.items()}
    for kind, (rps, p99, cpu) in med.items():
        print(f"median {kind:<6}  {rps:8.0f} req/s   p99 {p99 * 1000:6.2f} ms   CPU {cpu * 1e6:6.0f} µs/request")
    rps_ratio = med["triage"][0] / med["bare"][0]
    cpu_ratio = med["triage"][2] / med["bare"][2]
    per_round = [t[2] / b[2] for t, b in zip(results["triage"], results["bare"], strict=True)]
    print(f"ratio triage/bare: req/s {rps_ratio:.2f}   CPU per request {cpu_ratio:.2f} "
          f"(per round {min(per_round):.2f}–{max(per_round):.2f})")
    if "before" in med:
        print(f"ratio before/bare: req/s {med['before'][0] / med['bare'][0]:.2f}   CPU per request "
              f"{med['before'][2] / med['bare'][2]:.2f}   (triage/before CPU: {med['triage'][2] / med['before'][2]:.2f})")
    if args.route == "health":
        print(f"target req/s >= 0.80: {'OK' if rps_ratio >= 0.8 else 'BELOW TARGET'}")
    else:
        print(f"target CPU per request <= 1.30: {'OK' if cpu_ratio <= 1.3 else 'ABOVE TARGET'}")


if __name__ == "__main__":
    main()
