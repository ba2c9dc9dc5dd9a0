"""Sliding-window log: the exact algorithm for small limits (pure; no I/O, no clock reads).

A policy of `limit` requests per `window` admits a request of cost ``c`` at ``now`` iff
fewer than ``limit - c + 1`` of the units it admitted before are still *counted*, a unit
admitted at ``t`` being counted while ``now < t + window``. So every half-open interval
``[a, a + window)`` holds at most `limit` admitted units, for any arrival sequence (the
bound GCRA cannot give: with its full burst it lets ``limit + floor(D / T)`` through in D).

State of a key: a `bytearray` of exactly ``8 * limit`` bytes, `limit` C doubles, each the
instant (whole microseconds, as in `limiter_core`) at which one admitted unit leaves the
window, kept in ascending order; a slot whose instant is ``<= now`` is free (a fresh log
is all zeros). Why a bytearray: it is the smallest mutable buffer CPython has (56 bytes of
object, not GC-tracked, no over-allocation: 32 + 8*limit bytes more than GCRA's one float),
where ``array('d')`` is GC-tracked (80 bytes of object: 16 over the issue's bound) and a
list or tuple of floats costs 32 bytes a unit. It is read through a ``memoryview`` cast to
doubles, so the searches (`bisect`) and the shifts run in C.

Storing leave-instants rather than arrival instants keeps the policy's window out of the
idle test: a key is idle (indistinguishable from a fresh one) iff its newest instant is
``<= now``, the same test as GCRA's ``TAT <= now``, so `LimiterTable.expire` needs no
per-key policy lookup.
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_right

__all__ = ["LogDecision", "fresh_log", "log_idle", "log_peek", "log_take"]

_DOUBLE = struct.Struct("d")
_read = _DOUBLE.unpack_from

# (allowed, remaining, more_at, reset_at, retry_at): instants in whole microseconds.
# more_at: when the oldest counted unit leaves (more quota); reset_at: when the newest does.
LogDecision = tuple[bool, int, float, float, float]


def fresh_log(limit: int) -> bytearray:
    """A key never seen: `limit` free slots."""
    return bytearray(_DOUBLE.size * limit)


def log_idle(log: bytearray, nu: float) -> bool:
    """True when every unit has left the window (the log is then the same as a fresh one)."""
    return _read(log, len(log) - _DOUBLE.size)[0] <= nu


def log_take(log: bytearray, nu: float, window: float, cost: int) -> LogDecision:
    """Admit `cost` units at `nu` if they fit (recording them in `log`), else refuse."""
    m = memoryview(log).cast("d")
    n = len(m)
    free = bisect_right(m, nu)  # slots whose unit has left the window
    if cost > free:  # refused: nothing changes; the cost-th oldest unit must leave first
        return False, free, m[free], max(m[n - 1], nu), m[cost - 1]
    leave = nu + window
    j = bisect_right(m, leave)  # == n unless `now` went backwards
    m[: j - cost] = m[cost:j]  # drop `cost` free slots from the front, keep the order
    if cost == 1:
        m[j - 1] = leave
    else:
        m[j - cost : j] = array("d", (leave,)) * cost
    left = free - cost
    return True, left, m[left], m[n - 1], nu


def log_peek(log: bytearray | None, nu: float, limit: int) -> LogDecision:
    """What a cost-1 `log_take` would answer, changing nothing."""
    if log is None:
        return True, limit, nu, nu, nu
    m = memoryview(log).cast("d")
    free = bisect_right(m, nu)
    more_at = m[free] if free < limit else nu
    return free >= 1, free, more_at, max(m[limit - 1], nu), nu if free else m[0]
