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
Connections. A holder that asks for one gets it with its slot; the pool itself — what a
holder runs on, and the slots offered ahead of demand — lives in `actors.pg.pool`.

Timeouts. Each waiter carries its deadline; the shell wakes the core with a
`Tick` at the earliest one, and the core answers `QueueTimeout` — exactly at
the deadline, so MockClock tests can assert it to the tick.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
from msgspec.structs import replace

from actors.pg.pool import (
    CloseConns,
    CloseIdle,
    Offer,
    Offers,
    Pool,
    Token,
    drop_idle,
    give_back,
    lease,
    pool_snapshot,
    undo_lease,
)
from actors.runtime.actor import Send
from messages.commands import (
    Admit,
    Admitted,
    Clear,
    Done,
    DropIdle,
    Dropped,
    GetSnapshot,
    Reclaim,
    Release,
    Replenish,
    SetLimit,
    Taken,
    Tick,
    Withdraw,
)
from messages.config import Priority, QueueConfig
from messages.errors import (
    InvalidArgument,
    InvalidArgumentType,
    QueueCleared,
    QueueFull,
    QueueTimeout,
)
from messages.snapshots import QueueSnapshot

N_PRIORITIES = len(Priority)
_NAMES = ", ".join(f"{p.name}={p.value}" for p in Priority)


def check_priority(priority: object) -> int:
    """A Priority, or an int naming one; anything else is the caller's error (never clamped)."""
    if type(priority) is Priority:
        return priority
    if type(priority) is not int:
        raise InvalidArgumentType(f"priority must be a Priority or an int ({_NAMES}), got {priority!r}")
    if not 0 <= priority < N_PRIORITIES:
        raise InvalidArgument(f"priority must be one of {_NAMES}, got {priority!r}")
    return priority


SchedulerIn = (Admit | Release | Withdraw | Clear | Reclaim | Replenish | Taken | GetSnapshot | Tick
               | CloseIdle | SetLimit | DropIdle)

class Waiter(msgspec.Struct, frozen=True, array_like=True):
    reply: Any
    priority: int
    at: float
    deadline: float
    conn: bool
    probe: bool = False


class SchedulerState(msgspec.Struct, frozen=True, kw_only=True):
    cfg: QueueConfig
    holders: frozenset = frozenset()
    # one FIFO (tuple, oldest first) per priority, most urgent first
    waiting: tuple[tuple[Waiter, ...], ...] = ((),) * N_PRIORITIES
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

    @classmethod
    def initial(cls, cfg: QueueConfig) -> SchedulerState:
        return cls(cfg=cfg)

    @property
    def in_flight(self) -> int:
        return len(self.holders)

    @property
    def max_concurrent(self) -> int:
        return self.cfg.max_concurrent if self.limit is None else self.limit

    @property
    def free(self) -> int:
        return max(self.max_concurrent - len(self.holders), 0)


def _offer(s: SchedulerState, now: float) -> tuple[SchedulerState, list]:
    if not s.offer or s.depth:
        return s, []
    effects = []
    while s.free > 0:
        token = Token()
        s, grant = _grant(s, token, now, now, wants_conn=True)
        s = replace(s, admitted=s.admitted - 1)  # counted when taken (a `Taken` tally)
        effects.append(Offer(token, grant.value))
    return s, effects


def _reclaim(s: SchedulerState, msg: Reclaim, now: float) -> tuple[SchedulerState, list]:
    """An offer taken back unused: its slot and lease return, uncounted."""
    if msg.token not in s.holders:
        return s, []
    release = Release(reply=msg.token, conn=msg.lease.conn, discarded=msg.lease.connect)
    if release.conn is not None or release.discarded:
        s = replace(s, pool=undo_lease(s.pool, msg.lease))
    s = replace(s, holders=s.holders - {msg.token})
    return _hand_over(s, now)


def _with_queue(s: SchedulerState, prio: int, queue: tuple, depth_delta: int, **changes) -> SchedulerState:
    waiting = s.waiting[:prio] + (queue,) + s.waiting[prio + 1:]
    return replace(s, waiting=waiting, depth=s.depth + depth_delta, **changes)


def _grant(s: SchedulerState, reply: Any, since: float, now: float,
           wants_conn: bool = False, probe: bool = False,
           priority: int | None = None) -> tuple[SchedulerState, Send]:
    if wants_conn:
        pool, granted = lease(s.pool, now, probe, priority)
        s = replace(s, pool=pool)
    else:
        granted = {}
    s = replace(s, holders=s.holders | {reply}, admitted=s.admitted + 1)
    return s, Send(reply, Admitted(waited_s=max(now - since, 0.0), **granted))


def _admit(s: SchedulerState, msg: Admit, now: float) -> tuple[SchedulerState, list]:
    try:
        prio = check_priority(msg.priority)
    except (InvalidArgument, InvalidArgumentType) as exc:
        return s, [Send(msg.reply, exc)]
    if s.free > 0:
        s, grant = _grant(s, msg.reply, msg.at, now, msg.conn, msg.probe, prio)
        return s, [grant]
    waiter = Waiter(msg.reply, prio, msg.at, msg.deadline, msg.conn, msg.probe)
    if msg.deadline <= now:
        s = replace(s, timed_out=s.timed_out + 1)
        return s, [Send(msg.reply, QueueTimeout(Priority(prio), now - msg.at))]
    s = replace(s, next_deadline=min(s.next_deadline, msg.deadline))
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
        s, grant = _grant(s, first.reply, first.at, now, first.conn, first.probe, prio)
        effects.append(grant)
    return s, effects


def _release(s: SchedulerState, msg: Release | Withdraw, now: float) -> tuple[SchedulerState, list]:
    if msg.reply not in s.holders:
        return s, []
    if type(msg) is Release and (msg.conn is not None or msg.discarded):
        s = replace(s, pool=give_back(s.pool, msg, now))
    s, effects = _hand_over(replace(s, holders=s.holders - {msg.reply}), now)
    s, offers = _offer(s, now)
    return s, effects + offers



def _withdraw(s: SchedulerState, msg: Withdraw, now: float) -> tuple[SchedulerState, list]:
    for prio, queue in enumerate(s.waiting):
        for i, w in enumerate(queue):
            if w.reply is msg.reply:
                count = "timed_out" if msg.reason == "timeout" else "cancelled"
                s = _with_queue(s, prio, queue[:i] + queue[i + 1:], -1,
                                **{count: getattr(s, count) + 1})
                return s, []
    return _release(s, msg, now)


def _expire(s: SchedulerState, now: float) -> tuple[SchedulerState, list]:
    """Answer QueueTimeout to every waiter whose deadline has come."""
    if now < s.next_deadline:
        return s, []
    effects = [Send(w.reply, QueueTimeout(Priority(w.priority), now - w.at))
               for q in s.waiting for w in q if w.deadline <= now]
    waiting = tuple(tuple(w for w in q if w.deadline > now) for q in s.waiting)
    nxt = min((w.deadline for q in waiting for w in q), default=math.inf)
    s = replace(s, waiting=waiting, depth=s.depth - len(effects), next_deadline=nxt,
                timed_out=s.timed_out + len(effects))
    return s, effects


def _close_idle(s: SchedulerState, msg: CloseIdle, now: float) -> tuple[SchedulerState, list]:
    tokens = {t for t in msg.tokens if t in s.holders}
    pool, gone = drop_idle(s.pool, msg.conns, len(tokens))
    s, effects = _hand_over(replace(s, pool=pool, holders=s.holders - tokens), now)
    s, offers = _offer(s, now)
    return s, ([CloseConns(gone)] if gone else []) + effects + offers


def _clear(s: SchedulerState, msg: Clear) -> tuple[SchedulerState, list]:
    effects = [Send(w.reply, QueueCleared(Priority(w.priority))) for q in s.waiting for w in q]
    s = replace(s, waiting=((),) * N_PRIORITIES, depth=0, next_deadline=math.inf,
                cleared=s.cleared + len(effects))
    return s, [*effects, Send(msg.reply, Done())]


def _set_limit(s: SchedulerState, msg: SetLimit, now: float) -> tuple[SchedulerState, list]:
    """Fewer slots from now on (nobody is cut), or (None) the configured number again."""
    n, most = msg.max_concurrent, s.cfg.max_concurrent
    if n is not None and (type(n) is not int or not 1 <= n <= most):
        return s, [Send(msg.reply, InvalidArgument(f"max_concurrent must be an int in 1..{most} "
                                                   f"(the configured value) or None, got {n!r}"))]
    s, effects = _hand_over(replace(s, limit=n), now)
    s, offers = _offer(s, now)
    return s, [*effects, *offers, Send(msg.reply, Done())]


def _drop_idle_all(s: SchedulerState, msg: DropIdle, now: float) -> tuple[SchedulerState, list]:
    """Every idle connection closes; the next holders open fresh ones."""
    pool, gone = drop_idle(s.pool, s.pool.idle, 0)
    s, offers = _offer(replace(s, pool=pool), now)
    return s, ([CloseConns(gone)] if gone else []) + offers + [Send(msg.reply, Dropped(conns=len(gone)))]


def snapshot(s: SchedulerState, now: float, restarts: int = 0) -> QueueSnapshot:
    """The core's view: untaken offers count as held (`actors.pg.pool.corrected` frees them)."""
    oldest = min((q[0].at for q in s.waiting if q), default=now)
    return QueueSnapshot(
        max_concurrent=s.max_concurrent, max_queue_size=s.cfg.max_queue_size,
        in_flight=s.in_flight, free=s.free, depth=s.depth,
        depth_by_priority={Priority(p).name: len(q) for p, q in enumerate(s.waiting)},
        oldest_wait_s=max(now - oldest, 0.0), admitted=s.admitted, rejected=s.rejected,
        displaced=s.displaced, timed_out=s.timed_out, cancelled=s.cancelled,
        cleared=s.cleared, pool=pool_snapshot(s.pool), restarts=restarts,
        configured_max_concurrent=None if s.limit is None else s.cfg.max_concurrent)


def step(s: SchedulerState, msg: SchedulerIn, now: float) -> tuple[SchedulerState, list]:
    """No I/O, no trio: the whole behaviour of the admission queue."""
    match msg:
        case Admit():
            return _admit(s, msg, now)
        case Release():
            return _release(s, msg, now)
        case Withdraw():
            return _withdraw(s, msg, now)
        case Clear():
            return _clear(s, msg)
        case Reclaim():
            return _reclaim(s, msg, now)
        case Taken():
            return replace(s, admitted=s.admitted + msg.n), []
        case Replenish():
            return _offer(s, now)
        case GetSnapshot():
            return s, [Send(msg.reply, snapshot(s, now))]
        case Tick():
            return _expire(s, now)
        case CloseIdle():
            return _close_idle(s, msg, now)
        case SetLimit():
            return _set_limit(s, msg, now)
        case DropIdle():
            return _drop_idle_all(s, msg, now)
    raise TypeError(f"scheduler cannot handle {type(msg).__name__}")


class SchedulerCore:
    """The scheduler's core as its shell runs it, with the pool's offer list beside it.

    Offers are shell state (callers take them without a message), so this is where the pure
    `step` meets them: an arrival that must ask first takes one unused offer back, and the
    slots the core offers go onto the list. The generic actor shell knows nothing of this.
    """

    name = "scheduler"

    def __init__(self, offers: Offers) -> None:
        self.offers = offers

    def step(self, s: SchedulerState, msg: SchedulerIn, now: float) -> tuple[SchedulerState, list]:
        first: list = []
        if type(msg) is SetLimit or type(msg) is DropIdle:
            s, first = self._reclaim_all(s, now)
        reclaim = self.offers.reclaim_for(msg)
        try:
            if reclaim is not None:
                s, first = step(s, reclaim, now)
            s, effects = step(s, msg, now)
        except BaseException:
            if reclaim is not None:  # the state stays as it was, so the offer does too
                self.offers.entries.append((reclaim.token, reclaim.lease))
            raise
        if first:
            effects = first + effects
        if effects:
            effects = self._offer(effects)
        self.offers.state = s
        return s, effects

    def _reclaim_all(self, s: SchedulerState, now: float) -> tuple[SchedulerState, list]:
        """Offered slots come back first: a lower limit must not leave them pre-granted, and
        their idle connections must be in the core's list to be closed."""
        entries, effects = self.offers.entries, []
        while entries:
            token, granted = entries.pop()
            s, more = _reclaim(s, Reclaim(token=token, lease=granted), now)
            effects += more
        return s, effects

    def _offer(self, effects: list) -> list:
        """Offers go on the list; every other effect goes to the shell."""
        entries, rest = self.offers.entries, []
        for effect in effects:
            if type(effect) is Offer:
                entries.append((effect.token, effect.lease))
            else:
                rest.append(effect)
        return rest

    @staticmethod
    def wakeup(s: SchedulerState) -> float:
        return s.next_deadline if s.depth else math.inf

    @staticmethod
    def parked(s: SchedulerState) -> list:
        return [w.reply for q in s.waiting for w in q]

    @staticmethod
    def undelivered(reply: Any, value: Any) -> Release | None:
        """A slot (and any connection with it) handed to a caller that has just gone comes back."""
        if type(value) is not Admitted:
            return None
        return Release(reply=reply, conn=value.conn, discarded=value.connect)
