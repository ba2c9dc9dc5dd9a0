"""Machine instructions a `SELECT 1` costs the client, under callgrind: a figure load cannot move.

    .venv/bin/python scripts/bench/db_instructions.py [--tree DIR] [--conns 8]
                                                      [--modes bare,PgConnection,guarded]

Database: DATABASE_URL if set, else an embedded PostgreSQL (the serving rule). Needs valgrind
(Debian's `valgrind`). For each mode (see `db.py`: the bare libpq loop, Triage's `PgConnection`,
guarded `mon.db.fetchval`), runs N trio tasks doing a fixed number of queries each under `valgrind --tool=callgrind`, twice (500 and 2,500 queries a task), and
prints (instructions of the long run - the short one) / the queries between them: start-up,
imports and connecting cancel out. Every task of the process is counted (the metrics actor
recording the call too); the kernel's share (syscalls) and the server's are not. Hash seed and
trio's scheduling seed are fixed, so a figure repeats within about 1 %.

`--tree DIR` measures another checkout's code (e.g. `git archive <commit> | tar -x -C DIR`)
with this script. Prints each mode's figure and its ratio to bare's.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# This folder holds http.py, which would shadow the standard library's `http`.
BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]

MODES = ("bare", "PgConnection", "guarded")
SHORT, LONG = 500, 2500


def child(tree: str, mode: str, conns: int, queries: int) -> None:
    """One run: `conns` tasks, `queries` each, of `mode` (the process valgrind watches)."""
    sys.path.insert(0, tree)
    import psycopg
    import trio
    import trio._core._run as trio_run

    from actors import open_monitoring
    from actors.pg.connection import PgConnection
    from messages.config import Config, DatabaseConfig, QueueConfig

    # The bare loop is pg_raw's (imported after `actors`, so the tree measured is `tree`).
    sys.path.append(str(BENCH))
    from pg_raw import bare_query

    dsn = os.environ["DATABASE_URL"]
    trio_run._r.seed(0)  # trio shuffles each batch of runnable tasks: the same order every run

    async def bare(pgconn) -> None:
        sock = pgconn.socket
        for _ in range(queries):
            await bare_query(pgconn, sock, b"SELECT 1")

    async def main() -> None:
        cfg = Config(database_url=dsn, queue=QueueConfig(max_concurrent=conns),
                     database=DatabaseConfig(application_name="triage-bench"), health_check_interval_s=60.0)
        async with open_monitoring(cfg) as mon, trio.open_nursery() as nursery:
            if mode == "guarded":
                async def work() -> None:
                    for _ in range(queries):
                        await mon.db.fetchval("SELECT 1")
                for _ in range(conns):
                    nursery.start_soon(work)
            elif mode == "PgConnection":
                async def native(conn: PgConnection) -> None:
                    for _ in range(queries):
                        (await conn.execute("SELECT 1")).rows[0][0]
                for _ in range(conns):
                    nursery.start_soon(native, await PgConnection.connect(dsn))
            else:
                for _ in range(conns):
                    conn = psycopg.connect(dsn, autocommit=True)
                    conn.pgconn.nonblocking = 1
                    nursery.start_soon(bare, conn.pgconn)

    trio.run(main)


def instructions(tree: str, mode: str, conns: int, queries: int, dsn: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out", sys.executable,
             __file__, "--child", mode, "--tree", tree, "--conns", str(conns), "--queries", str(queries)],
            capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": "0", "DATABASE_URL": dsn}).stderr
    found = re.search(r"Collected : (\d+)", out)
    if found is None:
        raise SystemExit(f"valgrind said no instruction count:\n{out[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", default=str(Path(__file__).resolve().parents[2]))
    parser.add_argument("--conns", type=int, default=8)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--queries", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.tree, args.child, args.conns, args.queries)
        return
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown mode(s): {', '.join(sorted(unknown))}")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    tree = str(Path(args.tree).resolve())
    print(f"{tree}: instructions a SELECT 1, {args.conns} tasks, callgrind "
          f"({LONG:,} - {SHORT:,} queries a task)", flush=True)
    per_query: dict[str, float] = {}
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from actors.pg.embedded import serving_database

    with serving_database() as dsn:  # DATABASE_URL, else an embedded server (the serving rule)
        for mode in modes:
            short = instructions(tree, mode, args.conns, SHORT, dsn)
            long = instructions(tree, mode, args.conns, LONG, dsn)
            per_query[mode] = (long - short) / ((LONG - SHORT) * args.conns)
            print(f"  {mode:12} {per_query[mode]:9,.0f}", flush=True)
    if "bare" in per_query:
        for mode, n in per_query.items():
            print(f"  {mode:12} {per_query['bare'] / n:.2f}x bare (fewer instructions: nearer 1)")


if __name__ == "__main__":
    main()
