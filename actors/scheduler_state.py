"""The admission queue's state: mutable inside, changed in place by the scheduler alone.

One FIFO (a deque of `Waiter`s) per priority, most urgent first, and a set of holders, so a
message costs the same at depth 1,000 as at depth 1. Each in-place change of a container
goes through a helper here that journals how to undo it while a message is being applied
(`SchedulerState.journal`, set by `actors.scheduler.SchedulerCore.step`); with the scalar
fields saved before, `rollback` puts the state back exactly as it was if the core crashes
half-way, so the supervisor restarts the actor from its last good state.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import msgspec
from msgspec.structs import replace

from actors.pg.pool import Pool
from messages.config import Priority, QueueConfig

N_PRIORITIES = len(Priority)


class Waiter(msgspec.Struct, frozen=True, array_like=True):
    reply: Any
    priority: int
    at: float
    deadline: float
    conn: bool
    probe: bool = False


def fifos() -> list[deque]:
    return [deque() for _ in range(N_PRIORITIES)]


class SchedulerState(msgspec.Struct, kw_only=True):
    """The admission queue's state: changed in place by this actor alone (see the module doc)."""

    cfg: QueueConfig
    holders: set = msgspec.field(default_factory=set)
    # one FIFO (oldest first) per priority, most urgent first
    waiting: list = msgspec.field(default_factory=fifos)
    depth: int = 0
    # A lower bound on the earliest waiter deadline (exact after each Tick): waking early
    # only costs a Tick, so removals need not recompute it.
    next_deadline: float = math.inf
    pool: Pool = Pool()
    # Offer free slots ahead of demand (see `actors.pg.pool`): off in the pure-core tests' default.
    offer: bool = False
    # `set_limit`: temporarily fewer slots than configured (None: cfg.max_concurrent). Holders
    # above it keep their slots, so in_flight may exceed it until they release.
    limit: int | None = None
    admitted: int = 0
    rejected: int = 0
    displaced: int = 0
    timed_out: int = 0
    cancelled: int = 0
    cleared: int = 0
    # While `SchedulerCore.step` applies a message: how to undo each in-place change.
    journal: list | None = None

    @classmethod
    def initial(cls, cfg: QueueConfig) -> SchedulerState:
        return cls(cfg=cfg)

    def copy(self) -> SchedulerState:
        return replace(self, holders=set(self.holders), waiting=[deque(q) for q in self.waiting],
                       journal=None)

    @property
    def in_flight(self) -> int:
        return len(self.holders)

    @property
    def max_concurrent(self) -> int:
        return self.cfg.max_concurrent if self.limit is None else self.limit

    @property
    def free(self) -> int:
        return max(self.max_concurrent - len(self.holders), 0)


# --- the in-place changes of containers, each journaled (scalars are saved whole) ---------

def hold(s: SchedulerState, reply: Any) -> None:
    s.holders.add(reply)
    if s.journal is not None:
        s.journal.append((s.holders.discard, reply))


def unhold(s: SchedulerState, reply: Any) -> None:
    s.holders.discard(reply)
    if s.journal is not None:
        s.journal.append((s.holders.add, reply))


def enqueue(s: SchedulerState, w: Waiter) -> None:
    q = s.waiting[w.priority]
    q.append(w)
    s.depth += 1
    if s.journal is not None:
        s.journal.append((_pop_last, q))


def _pop_last(q: deque) -> None:
    q.pop()


def dequeue_oldest(s: SchedulerState, q: deque) -> Waiter:
    w = q.popleft()
    s.depth -= 1
    if s.journal is not None:
        s.journal.append((q.appendleft, w))
    return w


def dequeue_newest(s: SchedulerState, q: deque) -> Waiter:
    w = q.pop()
    s.depth -= 1
    if s.journal is not None:
        s.journal.append((q.append, w))
    return w


def remove_at(s: SchedulerState, q: deque, i: int) -> None:
    w = q[i]
    del q[i]
    s.depth -= 1
    if s.journal is not None:
        s.journal.append((_insert_at, (q, i, w)))


def _insert_at(args: tuple) -> None:
    q, i, w = args
    q.insert(i, w)


def rollback(s: SchedulerState, saved: tuple, journal: list) -> None:
    """Undo a message's in-place changes, newest first, then restore every field."""
    for undo, arg in reversed(journal):
        undo(arg)
    for name, value in zip(s.__struct_fields__, saved, strict=True):
        setattr(s, name, value)
