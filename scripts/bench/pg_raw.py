"""SELECT 1 throughput on N connections: trio-native PgConnection vs psycopg via to_thread.

    .venv/bin/python scripts/bench/pg_raw.py [--dsn DSN] [--conns 8] [--rounds 5] [--seconds 2]

Without --dsn: DATABASE_URL if set, else an embedded PostgreSQL (the serving rule).

(a) N trio tasks, each driving its own ``actors.pg.connection.PgConnection``;
(b) N trio tasks, each calling a sync ``psycopg.Connection`` through
    ``trio.to_thread.run_sync``.
The two alternate each round (so drift in machine load hits both); the
script prints every round, the medians and the ratio a/b. A figure, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import psycopg
import trio

# This folder holds http.py, which would shadow the standard library's `http` (httpx needs it).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from actors.pg.connection import PgConnection  # noqa: E402
from actors.pg.embedded import serving_database  # noqa: E402


async def count_for(seconds: float, workers: list) -> int:
    """Run every worker(deadline) concurrently; return total queries done."""
    deadline = trio.current_time() + seconds
    counts = [0] * len(workers)

    async def run(i: int) -> None:
        counts[i] = await workers[i](deadline)

    async with trio.open_nursery() as nursery:
        for i in range(len(workers)):
            nursery.start_soon(run, i)
    return sum(counts)


def trio_native_worker(conn: PgConnection):
    async def work(deadline: float) -> int:
        done = 0
        while trio.current_time() < deadline:
            await conn.execute("SELECT 1")
            done += 1
        return done

    return work


def to_thread_worker(conn: psycopg.Connection):
    def select_one() -> None:
        conn.execute("SELECT 1").fetchone()

    async def work(deadline: float) -> int:
        done = 0
        while trio.current_time() < deadline:
            await trio.to_thread.run_sync(select_one)
            done += 1
        return done

    return work


async def measure(modes: dict[str, list], rounds: int, seconds: float) -> dict[str, float]:
    """Warm up, then `rounds` alternating-order rounds of every mode; median q/s per mode."""
    rates: dict[str, list[float]] = {name: [] for name in modes}
    for workers in modes.values():  # warm-up: caches, plans, thread pool, pool connections
        await count_for(0.3, workers)
    for round_no in range(1, rounds + 1):
        order = list(modes) if round_no % 2 else list(reversed(modes))
        for name in order:
            rates[name].append(await count_for(seconds, modes[name]) / seconds)
        print(f"round {round_no}: " + "  ".join(f"{n} {rates[n][-1]:9,.0f} q/s" for n in modes))
    return {name: statistics.median(values) for name, values in rates.items()}


async def main(args: argparse.Namespace) -> None:
    natives = [await PgConnection.connect(args.dsn) for _ in range(args.conns)]
    syncs = [psycopg.connect(args.dsn, autocommit=True) for _ in range(args.conns)]
    modes = {
        "trio-native": [trio_native_worker(c) for c in natives],
        "to_thread": [to_thread_worker(c) for c in syncs],
    }
    try:
        medians = await measure(modes, args.rounds, args.seconds)
    finally:
        for conn in natives:
            await conn.close()
        for sync_conn in syncs:
            sync_conn.close()
    print(f"\nSELECT 1, {args.conns} connections, {args.rounds} rounds x {args.seconds}s:")
    for name, value in medians.items():
        print(f"  {name:12} median {value:9,.0f} q/s")
    print(f"  ratio trio-native / to_thread = {medians['trio-native'] / medians['to_thread']:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="default: DATABASE_URL, else an embedded PostgreSQL")
    parser.add_argument("--conns", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    if args.dsn:
        trio.run(main, args)
    else:
        with serving_database() as args.dsn:
            trio.run(main, args)
