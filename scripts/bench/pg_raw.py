"""Triage's own `PgConnection` against the bare libpq loop it is built on, on N connections.

    .venv/bin/python scripts/bench/pg_raw.py [--dsn DSN] [--conns 8] [--rounds 5] [--seconds 2]
                                             [--workload select1,rows100,insert_tx] [--opcodes]

Without --dsn: DATABASE_URL if set, else an embedded PostgreSQL (the serving rule).

The baseline is the *bare loop*: psycopg's `pgconn` driven non-blocking by trio and nothing
else — `send_query` (`send_query_params` for a parameter), `flush`, `consume_input`,
`is_busy`, `get_result` with `trio.lowlevel.wait_readable/wait_writable`. No binding, no
result loading, no error mapping: the floor any trio-native driver stands on.

Per workload, in one run, alternating order each round (so drift in machine load hits all):
  bare         N trio tasks each running the bare loop on its own connection;
  PgConnection N trio tasks each calling `PgConnection.execute` on its own connection;
  to_thread    (select1 only) N trio tasks calling a sync psycopg connection via `trio.to_thread`.
Workloads: `select1` (SELECT 1, the value loaded), `rows100` (100 rows of int, text, float8
loaded as tuples), `insert_tx` (BEGIN; INSERT one parameter; COMMIT — three round trips, into
an UNLOGGED table so the disk's fsync does not drown the client's cost).
Prints every round, the medians and each mode's ratio to bare: the median of its ratios within
each round, with their range. A figure, not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NamedTuple

import psycopg
import trio

# This folder holds http.py, which would shadow the standard library's `http` (httpx needs it).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.append(str(Path(__file__).resolve().parent))  # last: only bytecodes is looked up there
from bytecodes import counted  # noqa: E402

from actors.pg.connection import PgConnection  # noqa: E402
from actors.pg.embedded import serving_database  # noqa: E402

WORKLOADS = ("select1", "rows100", "insert_tx")
ROWS_TABLE = f"triage_bench_rows_{os.getpid()}"
INSERT_TABLE = f"triage_bench_ins_{os.getpid()}"
SELECT1 = "SELECT 1"
ROWS100 = f"SELECT id, name, weight FROM {ROWS_TABLE}"
INSERT = f"INSERT INTO {INSERT_TABLE} (v) VALUES (%s)"
INSERT_BARE = f"INSERT INTO {INSERT_TABLE} (v) VALUES ($1)".encode()

Worker = Callable[[float], Awaitable[int]]


# ---- the bare loop: the baseline --------------------------------------------------------


async def bare_query(pgconn, sock: int, query: bytes, params: list[bytes] | None = None):
    """One query on psycopg's pgconn, non-blocking under trio, and nothing else: the last result."""
    if params is None:
        pgconn.send_query(query)
    else:
        pgconn.send_query_params(query, params)
    while pgconn.flush():
        await trio.lowlevel.wait_writable(sock)
    last = None
    while True:
        while pgconn.is_busy():
            await trio.lowlevel.wait_readable(sock)
            pgconn.consume_input()
        result = pgconn.get_result()
        if result is None:
            return last
        last = result


def bare_worker(conn: psycopg.Connection, workload: str) -> Worker:
    pgconn = conn.pgconn
    pgconn.nonblocking = 1
    sock = pgconn.socket

    async def work(deadline: float) -> int:
        done = 0
        while trio.current_time() < deadline:
            if workload == "insert_tx":
                await bare_query(pgconn, sock, b"BEGIN")
                await bare_query(pgconn, sock, INSERT_BARE, [b"%d" % done])
                await bare_query(pgconn, sock, b"COMMIT")
            else:
                await bare_query(pgconn, sock, SELECT1.encode() if workload == "select1" else ROWS100.encode())
            done += 1
        return done

    return work


# ---- Triage's PgConnection ----------------------------------------------------------------


def trio_native_worker(conn: PgConnection, workload: str = "select1") -> Worker:
    async def work(deadline: float) -> int:
        done = 0
        while trio.current_time() < deadline:
            if workload == "select1":
                (await conn.execute(SELECT1)).rows[0][0]
            elif workload == "rows100":
                await conn.execute(ROWS100)
            else:
                await conn.execute("BEGIN")
                await conn.execute(INSERT, [done])
                await conn.execute("COMMIT")
            done += 1
        return done

    return work


def to_thread_worker(conn: psycopg.Connection) -> Worker:
    def select_one() -> None:
        conn.execute(SELECT1).fetchone()

    async def work(deadline: float) -> int:
        done = 0
        while trio.current_time() < deadline:
            await trio.to_thread.run_sync(select_one)
            done += 1
        return done

    return work


# ---- measuring ----------------------------------------------------------------------------


def create_tables(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {ROWS_TABLE} (id int PRIMARY KEY, name text, weight float8)")
        conn.execute(f"INSERT INTO {ROWS_TABLE} SELECT g, 'animal ' || g, g * 1.5 "
                     "FROM generate_series(1, 100) g")
        conn.execute(f"CREATE UNLOGGED TABLE {INSERT_TABLE} (v int)")


def drop_tables(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {ROWS_TABLE}, {INSERT_TABLE}")


async def count_for(seconds: float, workers: list[Worker]) -> int:
    """Run every worker(deadline) concurrently; return total operations done."""
    deadline = trio.current_time() + seconds
    counts = [0] * len(workers)

    async def run(i: int) -> None:
        counts[i] = await workers[i](deadline)

    async with trio.open_nursery() as nursery:
        for i in range(len(workers)):
            nursery.start_soon(run, i)
    return sum(counts)


class Figures(NamedTuple):
    """One mode's figures over the rounds: medians of its own, and of its ratio to the bare
    loop *within each round* (the two ran seconds apart, so the machine's drift between rounds
    cancels): throughput / bare's, and bare's CPU per op / its own (> 1: faster)."""
    rate: float
    cpu_us: float
    rate_ratio: float
    cpu_ratio: float
    rate_ratios: tuple[float, ...]


async def measure(modes: dict[str, list[Worker]], rounds: int, seconds: float) -> dict[str, Figures]:
    """Warm up, then `rounds` alternating-order rounds of every mode (`bare` among them).

    The CPU figure is this process's CPU time (trio, psycopg, libpq; not the server's) over
    the ops done: less moved by the other tenants of a noisy machine than throughput is.
    """
    rates: dict[str, list[float]] = {name: [] for name in modes}
    cpus: dict[str, list[float]] = {name: [] for name in modes}
    for workers in modes.values():  # warm-up: caches, plans, thread pool, pool connections
        await count_for(0.3, workers)
    for round_no in range(1, rounds + 1):
        order = list(modes) if round_no % 2 else list(reversed(modes))
        for name in order:
            cpu0 = time.process_time()
            ops = await count_for(seconds, modes[name])
            cpus[name].append((time.process_time() - cpu0) / max(ops, 1) * 1e6)
            rates[name].append(ops / seconds)
        print(f"  round {round_no}: " + "  ".join(f"{n} {rates[n][-1]:7,.0f}/s {cpus[n][-1]:5.1f}µs"
                                                  for n in modes), flush=True)
    figures = {}
    for name in modes:
        rate_ratios = tuple(r / b for r, b in zip(rates[name], rates["bare"], strict=True))
        cpu_ratios = [b / c for c, b in zip(cpus[name], cpus["bare"], strict=True)]
        figures[name] = Figures(statistics.median(rates[name]), statistics.median(cpus[name]),
                                statistics.median(rate_ratios), statistics.median(cpu_ratios), rate_ratios)
    return figures


async def opcodes_per_op(modes: dict[str, list[Worker]], seconds: float) -> dict[str, float]:
    """Python bytecodes executed per operation in each mode, every task of the process counted
    (the caller's and the actors': the metrics actor recording the call too), under
    `sys.settrace` with opcode events. Deterministic where time is not: a machine's load
    changes how long a query takes, not how many bytecodes it runs. libpq's and the server's
    work, in C, is not counted."""
    counts: dict[str, float] = {}
    for name, workers in modes.items():
        await count_for(0.2, workers)  # warm: plans, pool connections, loaders
        with counted() as count:
            ops = await count_for(seconds, workers)
        counts[name] = count.executed / max(ops, 1)
    return counts


def report_opcodes(title: str, counts: dict[str, float]) -> None:
    base = counts["bare"]
    print(f"{title}, Python bytecodes per operation (sys.settrace):")
    for name, n in counts.items():
        print(f"  {name:12} {n:8,.0f}  {n / base:.2f}x bare")


def report(title: str, figures: dict[str, Figures], targets: dict[str, float]) -> None:
    """Every mode's medians and its ratios to the bare loop, each the median of the per-round
    ratios, with their range (and the target, if it has one)."""
    print(f"{title} (medians; ratios to bare within each round, median and range):")
    for name, f in figures.items():
        target = f"  (target >= {targets[name]})" if name in targets else ""
        spread = f"{min(f.rate_ratios):.2f}-{max(f.rate_ratios):.2f}"
        print(f"  {name:12} {f.rate:9,.0f}/s  {f.rate_ratio:.2f}x bare ({spread})   "
              f"{f.cpu_us:6.1f} µs CPU/op  {f.cpu_ratio:.2f}x bare{target}")


def parse_args(doc: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--dsn", help="default: DATABASE_URL, else an embedded PostgreSQL")
    parser.add_argument("--conns", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--opcodes", action="store_true",
                        help="also count Python bytecodes per operation in each mode (deterministic)")
    parser.add_argument("--workload", default=",".join(WORKLOADS),
                        help=f"comma-separated, of {', '.join(WORKLOADS)}")
    args = parser.parse_args()
    args.workloads = [w for w in args.workload.split(",") if w]
    unknown = set(args.workloads) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workload(s): {', '.join(sorted(unknown))}")
    return args


def run_with_database(main: Callable[[argparse.Namespace], Awaitable[None]], args: argparse.Namespace) -> None:
    """`main(args)` under trio with the tables made (and dropped after), on args.dsn or an embedded server."""
    def go() -> None:
        create_tables(args.dsn)
        try:
            trio.run(main, args)
        finally:
            drop_tables(args.dsn)

    if args.dsn:
        go()
    else:
        with serving_database() as args.dsn:
            go()


async def main(args: argparse.Namespace) -> None:
    natives = [await PgConnection.connect(args.dsn) for _ in range(args.conns)]
    bares = [psycopg.connect(args.dsn, autocommit=True) for _ in range(args.conns)]
    syncs = [psycopg.connect(args.dsn, autocommit=True) for _ in range(args.conns)]
    try:
        for workload in args.workloads:
            print(f"{workload}, {args.conns} connections, {args.rounds} rounds x {args.seconds}s:")
            modes = {"bare": [bare_worker(c, workload) for c in bares],
                     "PgConnection": [trio_native_worker(c, workload) for c in natives]}
            if workload == "select1":
                modes["to_thread"] = [to_thread_worker(c) for c in syncs]
            figures = await measure(modes, args.rounds, args.seconds)
            report(workload, figures, {"PgConnection": 0.9} if workload == "select1" else {})
            if args.opcodes:
                report_opcodes(workload, await opcodes_per_op(
                    {k: v for k, v in modes.items() if k != "to_thread"}, 1.0))
    finally:
        for conn in natives:
            await conn.close()
        for sync_conn in bares + syncs:
            sync_conn.close()


if __name__ == "__main__":
    run_with_database(main, parse_args(__doc__))
