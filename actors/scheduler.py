"""Priority admission queue: the pure core.

Theory of operation. `max_concurrent` slots. An arrival takes a free slot at
once; otherwise it waits in its priority's FIFO. When a slot is released it
is handed *straight* to the first waiter of the most urgent priority (as
trio.Semaphore does), so it is never free while someone waits.

Invariants after every step:
  * in_flight + free == max_concurrent, and 0 <= in_flight <= max_concurrent
  * free > 0 implies nobody waits
  * depth <= max_queue_size

Overflow. With `max_queue_size` waiters, an arrival is refused with
`QueueFull` — unless it outranks the least urgent waiter: then the newest
waiter of the least urgent priority is displaced (`QueueFull(displaced=True)`)
and the arrival takes its place. A CRITICAL medication record is never
refused because BATCH work is waiting.

Leaving. A waiter whose caller was cancelled or whose deadline passed sends
`Withdraw`; a holder sends `Release`. If a slot is handed to a caller that has
just gone, the shell feeds the core a `Withdraw` for it (`undelivered`), and
the slot moves on to the next waiter: it can neither leak nor be granted twice.
Queue timeouts are measured by the waiting caller's own deadline, so they are
exact; the core only counts them.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
from msgspec.structs import replace

from actors.actor import Send
from actors.errors import QueueCleared, QueueFull
from messages.commands import Admit, Admitted, Clear, Done, GetSnapshot, Release, Tick, Withdraw
from messages.config import Priority, QueueConfig
from messages.snapshots import QueueSnapshot

SchedulerIn = Admit | Release | Withdraw | Clear | GetSnapshot | Tick

N_PRIORITIES = len(Priority)


class Waiter(msgspec.Struct, frozen=True, array_like=True):
    reply: Any
    priority: int
    at: float


class SchedulerState(msgspec.Struct, frozen=True, kw_only=True):
    cfg: QueueConfig
    holders: frozenset = frozenset()
    # one FIFO (tuple, oldest first) per priority, most urgent first
    waiting: tuple[tuple[Waiter, ...], ...] = ((),) * N_PRIORITIES
    depth: int = 0
    admitted: int = 0
    rejected: int = 0
    displaced: int = 0
    timed_out: int = 0
    cancelled: int = 0
    cleared: int = 0

    @classmethod
    def initial(cls, cfg: QueueConfig) -> SchedulerState:
        return cls(cfg=cfg)

    @property
    def in_flight(self) -> int:
        return len(self.holders)

    @property
    def free(self) -> int:
        return self.cfg.max_concurrent - len(self.holders)


def _with_queue(s: SchedulerState, prio: int, queue: tuple, depth_delta: int, **changes) -> SchedulerState:
    waiting = s.waiting[:prio] + (queue,) + s.waiting[prio + 1:]
    return replace(s, waiting=waiting, depth=s.depth + depth_delta, **changes)


def _grant(s: SchedulerState, reply: Any, since: float, now: float) -> tuple[SchedulerState, Send]:
    s = replace(s, holders=s.holders | {reply}, admitted=s.admitted + 1)
    return s, Send(reply, Admitted(waited_s=max(now - since, 0.0)))


def _admit(s: SchedulerState, msg: Admit, now: float) -> tuple[SchedulerState, list]:
    prio = min(max(int(msg.priority), 0), N_PRIORITIES - 1)
    if s.free > 0:
        s, grant = _grant(s, msg.reply, msg.at, now)
        return s, [grant]
    waiter = Waiter(msg.reply, prio, msg.at)
    if s.depth < s.cfg.max_queue_size:
        return _with_queue(s, prio, s.waiting[prio] + (waiter,), +1), []
    lowest = next((p for p in range(N_PRIORITIES - 1, -1, -1) if s.waiting[p]), None)
    if lowest is None or lowest <= prio:
        s = replace(s, rejected=s.rejected + 1)
        return s, [Send(msg.reply, QueueFull(Priority(prio), s.depth))]
    victim = s.waiting[lowest][-1]
    s = _with_queue(s, lowest, s.waiting[lowest][:-1], -1, displaced=s.displaced + 1)
    s = _with_queue(s, prio, s.waiting[prio] + (waiter,), +1)
    return s, [Send(victim.reply, QueueFull(Priority(lowest), s.depth, displaced=True))]


def _hand_over(s: SchedulerState, now: float) -> tuple[SchedulerState, list]:
    """Give free slots to the most urgent waiters, oldest first."""
    effects = []
    while s.free > 0 and s.depth > 0:
        prio = next(p for p in range(N_PRIORITIES) if s.waiting[p])
        first = s.waiting[prio][0]
        s = _with_queue(s, prio, s.waiting[prio][1:], -1)
        s, grant = _grant(s, first.reply, first.at, now)
        effects.append(grant)
    return s, effects


def _release(s: SchedulerState, reply: Any, now: float) -> tuple[SchedulerState, list]:
    if reply not in s.holders:
        return s, []
    return _hand_over(replace(s, holders=s.holders - {reply}), now)


def _withdraw(s: SchedulerState, msg: Withdraw, now: float) -> tuple[SchedulerState, list]:
    for prio, queue in enumerate(s.waiting):
        for i, w in enumerate(queue):
            if w.reply is msg.reply:
                count = "timed_out" if msg.reason == "timeout" else "cancelled"
                s = _with_queue(s, prio, queue[:i] + queue[i + 1:], -1,
                                **{count: getattr(s, count) + 1})
                return s, []
    return _release(s, msg.reply, now)


def _clear(s: SchedulerState, msg: Clear) -> tuple[SchedulerState, list]:
    effects = [Send(w.reply, QueueCleared(Priority(w.priority))) for q in s.waiting for w in q]
    s = replace(s, waiting=((),) * N_PRIORITIES, depth=0, cleared=s.cleared + len(effects))
    return s, [*effects, Send(msg.reply, Done())]


def snapshot(s: SchedulerState, now: float, restarts: int = 0) -> QueueSnapshot:
    oldest = min((q[0].at for q in s.waiting if q), default=now)
    return QueueSnapshot(
        max_concurrent=s.cfg.max_concurrent, max_queue_size=s.cfg.max_queue_size,
        in_flight=s.in_flight, free=s.free, depth=s.depth,
        depth_by_priority={Priority(p).name: len(q) for p, q in enumerate(s.waiting)},
        oldest_wait_s=max(now - oldest, 0.0), admitted=s.admitted, rejected=s.rejected,
        displaced=s.displaced, timed_out=s.timed_out, cancelled=s.cancelled,
        cleared=s.cleared, restarts=restarts)


def step(s: SchedulerState, msg: SchedulerIn, now: float) -> tuple[SchedulerState, list]:
    """No I/O, no trio: the whole behaviour of the admission queue."""
    match msg:
        case Admit():
            return _admit(s, msg, now)
        case Release():
            return _release(s, msg.reply, now)
        case Withdraw():
            return _withdraw(s, msg, now)
        case Clear():
            return _clear(s, msg)
        case GetSnapshot():
            return s, [Send(msg.reply, snapshot(s, now))]
        case Tick():
            return s, []
    raise TypeError(f"scheduler cannot handle {type(msg).__name__}")


class SchedulerCore:
    name = "scheduler"
    step = staticmethod(step)

    @staticmethod
    def wakeup(s: SchedulerState) -> float:
        return math.inf

    @staticmethod
    def parked(s: SchedulerState) -> list:
        return [w.reply for q in s.waiting for w in q]

    @staticmethod
    def undelivered(reply: Any, value: Any) -> Withdraw | None:
        """A slot handed to a caller that has just gone comes straight back."""
        return Withdraw(reply=reply) if type(value) is Admitted else None
