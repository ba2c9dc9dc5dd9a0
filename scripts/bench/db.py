"""Guarded queries on 8 slots (`mon.db`) against the bare libpq loop, in the same run.

    .venv/bin/python scripts/bench/db.py [--dsn DSN] [--conns 8] [--rounds 5] [--seconds 2]
                                         [--workload select1,rows100,insert_tx] [--opcodes]

Without --dsn: DATABASE_URL if set, else an embedded PostgreSQL (the serving rule).

Per workload (see `pg_raw.py`: `select1`, `rows100`, `insert_tx`), in one run, alternating
order each round (so drift in machine load hits every mode):
  guarded      N trio tasks calling `mon.db` with every guard on (breaker, admission queue
               with N slots, pooled connection): `fetchval`, `fetch`, or `transaction()`;
  PgConnection N trio tasks each driving its own `PgConnection` (no guard);
  bare         the baseline: N trio tasks each running the bare libpq loop (`pg_raw.bare_query`:
               psycopg's pgconn non-blocking under trio, nothing else);
  to_thread    (select1) N trio tasks calling a sync psycopg connection through `trio.to_thread`.
Prints every round, the medians and each mode's ratio to bare: the median of its ratios within
each round (the two ran seconds apart), with their range. Targets (select1):
guarded >= 0.8x bare, PgConnection >= 0.9x bare.
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
from pg_raw import (  # noqa: E402
    INSERT,
    ROWS100,
    SELECT1,
    Worker,
    bare_worker,
    measure,
    opcodes_per_op,
    parse_args,
    report,
    report_opcodes,
    run_with_database,
    to_thread_worker,
    trio_native_worker,
)

from actors import open_monitoring  # noqa: E402
from actors.pg.connection import PgConnection  # noqa: E402
from messages.config import Config, DatabaseConfig, QueueConfig  # noqa: E402


def guarded_worker(mon, workload: str) -> Worker:
    db = mon.db

    async def work(deadline: float) -> int:
        done = 0
        while trio.current_time() < deadline:
            if workload == "select1":
                await db.fetchval(SELECT1)
            elif workload == "rows100":
                await db.fetch(ROWS100)
            else:
                async with db.transaction() as tx:
                    await tx.execute(INSERT, [done])
            done += 1
        return done

    return work


async def main(args: argparse.Namespace) -> None:
    cfg = Config(database_url=args.dsn, queue=QueueConfig(max_concurrent=args.conns),
                 database=DatabaseConfig(application_name="triage-bench"),
                 health_check_interval_s=60.0)
    natives = [await PgConnection.connect(args.dsn) for _ in range(args.conns)]
    bares = [psycopg.connect(args.dsn, autocommit=True) for _ in range(args.conns)]
    syncs = [psycopg.connect(args.dsn, autocommit=True) for _ in range(args.conns)]
    try:
        async with open_monitoring(cfg) as mon:
            for workload in args.workloads:
                print(f"{workload}, {args.conns} connections, {args.rounds} rounds x {args.seconds}s:")
                modes = {"guarded": [guarded_worker(mon, workload) for _ in range(args.conns)],
                         "PgConnection": [trio_native_worker(c, workload) for c in natives],
                         "bare": [bare_worker(c, workload) for c in bares]}
                if workload == "select1":
                    modes["to_thread"] = [to_thread_worker(c) for c in syncs]
                figures = await measure(modes, args.rounds, args.seconds)
                targets = {"guarded": 0.8, "PgConnection": 0.9} if workload == "select1" else {}
                report(workload, figures, targets)
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
