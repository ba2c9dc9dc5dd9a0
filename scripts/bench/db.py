"""SELECT 1 throughput on 8 connections: guarded `mon.db.fetchval` vs raw vs to_thread.

    .venv/bin/python scripts/bench/db.py [--dsn DSN] [--conns 8] [--rounds 5] [--seconds 2]

Without --dsn: DATABASE_URL if set, else an embedded PostgreSQL (the serving rule).

In one run, alternating order each round (so drift in machine load hits all three):
  (a) guarded: N trio tasks calling `mon.db.fetchval("SELECT 1")` with every guard on
      (breaker, admission queue with N slots, pooled connection);
  (b) raw: N trio tasks each driving its own `PgConnection` (the non-blocking path, no Triage);
  (c) to_thread: N trio tasks calling a sync psycopg connection through `trio.to_thread`.
Prints every round, the medians and the ratios. Targets: guarded >= 0.6x raw, >= 4x to_thread.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import psycopg
import trio

# This folder holds http.py, which would shadow the standard library's `http` (httpx needs it):
# it goes last, where only pg_raw is looked up in it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.append(str(Path(__file__).resolve().parent))
from pg_raw import measure, to_thread_worker, trio_native_worker  # noqa: E402

from actors import open_monitoring  # noqa: E402
from actors.pg.connection import PgConnection  # noqa: E402
from actors.pg.embedded import serving_database  # noqa: E402
from messages.config import Config, DatabaseConfig, QueueConfig  # noqa: E402


def guarded_worker(mon):
    async def work(deadline: float) -> int:
        done = 0
        while trio.current_time() < deadline:
            await mon.db.fetchval("SELECT 1")
            done += 1
        return done

    return work


async def main(args: argparse.Namespace) -> None:
    cfg = Config(database_url=args.dsn, queue=QueueConfig(max_concurrent=args.conns),
                 database=DatabaseConfig(application_name="triage-bench"),
                 health_check_interval_s=60.0)
    natives = [await PgConnection.connect(args.dsn) for _ in range(args.conns)]
    syncs = [psycopg.connect(args.dsn, autocommit=True) for _ in range(args.conns)]
    try:
        async with open_monitoring(cfg) as mon:
            modes = {
                "guarded": [guarded_worker(mon) for _ in range(args.conns)],
                "raw": [trio_native_worker(c) for c in natives],
                "to_thread": [to_thread_worker(c) for c in syncs],
            }
            med = await measure(modes, args.rounds, args.seconds)
    finally:
        for conn in natives:
            await conn.close()
        for sync_conn in syncs:
            sync_conn.close()
    print(f"\nSELECT 1, {args.conns} connections, {args.rounds} rounds x {args.seconds}s (medians):")
    for name, value in med.items():
        print(f"  {name:10} {value:9,.0f} q/s")
    print(f"  guarded / raw       = {med['guarded'] / med['raw']:.2f}x  (target >= 0.6)")
    print(f"  guarded / to_thread = {med['guarded'] / med['to_thread']:.2f}x  (target >= 4)")


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
