"""What a server-side statement timeout costs without session state (PgBouncer transaction mode).

    .venv/bin/python scripts/bench/statement_timeout.py [--dsn DSN] [--conns 4] [--rounds 5] [--seconds 1]

Without --dsn: DATABASE_URL if set, else an embedded PostgreSQL. Runs straight to PostgreSQL and
through a PgBouncer in transaction mode started for the run (Debian's /usr/sbin/pgbouncer).

A session `SET statement_timeout` would leak into PgBouncer's shared server connections, so
the choices per statement are, on N connections each driven by one trio task:
  (a) client: the statement alone (`SELECT $1::int`); the timeout is applied by `mon.db`'s
      watchdog (a cancel request when it expires), which costs nothing per statement here;
  (b) set_local: `BEGIN; SET LOCAL statement_timeout`, the statement, `COMMIT`: 3 round trips;
  (c) client_simple: `SELECT 1` alone over the simple protocol, the baseline of (d);
  (d) set_local_1rt: (b) as one simple-protocol message (possible only without parameters).
Alternating order each round; prints every round, the medians and the ratios: (b) to (a), (d) to (c).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from pathlib import Path

import trio

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from actors.pg.connection import PgConnection  # noqa: E402
from actors.pg.embedded import serving_database  # noqa: E402
from actors.tools.pgbouncer import running_pgbouncer  # noqa: E402

SET_LOCAL = "BEGIN; SET LOCAL statement_timeout = 30000"


async def client(conn: PgConnection) -> None:
    await conn.execute("SELECT %s::int", [1])


async def client_simple(conn: PgConnection) -> None:
    await conn.execute("SELECT 1")


async def set_local(conn: PgConnection) -> None:
    await conn.execute(SET_LOCAL)
    await conn.execute("SELECT %s::int", [1])
    await conn.execute("COMMIT")


async def set_local_1rt(conn: PgConnection) -> None:
    await conn.execute(f"{SET_LOCAL}; SELECT 1; COMMIT")


MODES = {"client": client, "set_local": set_local, "client_simple": client_simple,
         "set_local_1rt": set_local_1rt}
BASE = {"client": "client", "set_local": "client", "client_simple": "client_simple",
        "set_local_1rt": "client_simple"}


async def rate(conns: list[PgConnection], op, seconds: float) -> float:
    counts = [0] * len(conns)

    async def work(i: int, deadline: float) -> None:
        while trio.current_time() < deadline:
            await op(conns[i])
            counts[i] += 1

    deadline = trio.current_time() + seconds
    async with trio.open_nursery() as nursery:
        for i in range(len(conns)):
            nursery.start_soon(work, i, deadline)
    return sum(counts) / seconds


async def bench(label: str, dsn: str, args: argparse.Namespace) -> None:
    conns = [await PgConnection.connect(dsn) for _ in range(args.conns)]
    results: dict[str, list[float]] = {m: [] for m in MODES}
    try:
        for r in range(args.rounds):
            order = list(MODES) if r % 2 == 0 else list(reversed(MODES))
            for mode in order:
                results[mode].append(await rate(conns, MODES[mode], args.seconds))
            print(f"{label} round {r + 1}: " + "  ".join(f"{m} {results[m][-1]:8.0f}/s" for m in MODES),
                  flush=True)
    finally:
        for c in conns:
            c.close_now()
    medians = {m: statistics.median(v) for m, v in results.items()}
    print(f"{label} medians: " + "  ".join(f"{m} {v:8.0f}/s ({v / medians[BASE[m]]:.2f}x)"
                                           for m, v in medians.items()))


async def main(args: argparse.Namespace, dsn: str, bounced: str) -> None:
    await bench("direct   ", dsn, args)
    await bench("pgbouncer", bounced, args)


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsn")
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args()
    with contextlib.ExitStack() as stack:
        dsn = args.dsn or stack.enter_context(serving_database())
        bouncer = stack.enter_context(running_pgbouncer(dsn))
        trio.run(main, args, dsn, bouncer.url)


if __name__ == "__main__":
    cli()
