"""Counting the Python bytecodes a block executes, every task of the thread included.

`with counted() as n: ...` then `n.executed`: `sys.settrace` with opcode events, turned off
when the block ends. Used by `opcodes.py` and `pg_raw.py`/`db.py --opcodes`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class Count:
    executed = 0


@contextmanager
def counted() -> Iterator[Count]:
    count = Count()

    def opcode(frame, event, arg):
        if event == "opcode":
            count.executed += 1
        return opcode

    def call(frame, event, arg):
        frame.f_trace_opcodes = True
        return opcode

    sys.settrace(call)
    try:
        yield count
    finally:
        sys.settrace(None)
