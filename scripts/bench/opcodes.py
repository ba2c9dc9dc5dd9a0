"""Python bytecodes a guarded call executes, every task counted: a figure load cannot move.

    .venv/bin/python scripts/bench/opcodes.py [--tree DIR] [--callers 100] [--calls 20]

`mon.run(work)` (work: one checkpoint) from `--callers` tasks at once on 8 slots, each making
`--calls` calls: admission under contention (parking, hand-over), the call, the slot back and
the metrics actor recording it. Counted under `sys.settrace` with opcode events after an
untraced warm-up of the same size. `--tree DIR` measures another tree's kernel (e.g. `git
archive main | tar -x -C DIR`), for a before/after in the same session; C code (trio's
epoll, libpq) is not counted. For `mon.db` and `PgConnection`, see `db.py --opcodes`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--tree", default=str(Path(__file__).resolve().parents[2]))
parser.add_argument("--callers", type=int, default=100)
parser.add_argument("--calls", type=int, default=20)
args = parser.parse_args()
# This folder holds http.py, which would shadow the standard library's `http`.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, args.tree)
sys.path.append(str(Path(__file__).resolve().parent))  # last: only bytecodes is looked up there

import trio  # noqa: E402
from bytecodes import counted  # noqa: E402

from actors import open_monitoring  # noqa: E402
from messages.config import Config, QueueConfig  # noqa: E402


async def main() -> None:
    cfg = Config(queue=QueueConfig(max_concurrent=8, max_queue_size=max(2000, args.callers * 2)),
                 health_check_interval_s=60.0)
    async with open_monitoring(cfg) as mon:
        async def work() -> None:
            await trio.lowlevel.checkpoint()

        async def caller() -> None:
            for _ in range(args.calls):
                await mon.run(work)

        async def round_of_calls() -> None:
            async with trio.open_nursery() as nursery:
                for _ in range(args.callers):
                    nursery.start_soon(caller)

        await round_of_calls()  # untraced warm-up
        with counted() as count:
            await round_of_calls()
    calls = args.callers * args.calls
    print(f"{args.tree}: mon.run, {args.callers} callers on 8 slots: "
          f"{count.executed / calls:,.0f} bytecodes a call ({calls:,} calls)")


trio.run(main)
