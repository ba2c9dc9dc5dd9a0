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

State (`actors.scheduler_state`). Mutable inside, like the limiter's key table and the
metrics rings: one FIFO (a deque) per priority and a set of holders, changed in place, so
a message costs the same at depth 1,000 as at depth 1 (a frozen state copied its queues on
every message). Only this core changes it; what leaves is frozen (`snapshot()`, `Send`).
`step(state, msg, now)` is the pure form the tests drive: it works on a copy and returns
it. The shell runs `SchedulerCore.step`, which applies a message in place as one
transaction: a journal records each in-place change, so if the core crashes half-way the
changes are undone and the supervisor restarts the actor from its last good state.

Contended, without a message (`park`, `pass_on`). When the actor would handle an Admit or a
Release next (it runs and its inbox is empty: `actors.runtime.actor.inline_ready`), the two
messages of a contended admission are applied by the callers' own tasks, with no message
built and no journal: an arrival that must wait parks, and a holder with no connection to
give back hands its slot straight to the most urgent waiter, as `_admit` and `_release`
would (the tests check the state after each against `step`'s). Each computes all that can
fail before its first change, so a failure leaves the state as it was and the message goes
the usual way.

Refusals without a round trip. Whether an arrival would be refused (`refuses`) is a
function of the state alone; when no message waits in the inbox (one could free a slot
first), the queue handle decides it from this state, exactly as the core would.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any

from msgspec.structs import astuple

from actors.pg.pool import (
    CloseConns,
    CloseIdle,
    Offer,
    Offers,
    Token,
    drop_idle,
    give_back,
    lease,
    pool_snapshot,
    undo_lease,
)
from actors.runtime.actor import Emit, Send
from actors.scheduler_state import (
    N_PRIORITIES,
    SchedulerState,
    Waiter,
    dequeue_newest,
    dequeue_oldest,
    enqueue,
    fifos,
    hold,
    remove_at,
    rollback,
    unhold,
)
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
from messages.config import Priority
from messages.errors import (
    InvalidArgument,
    InvalidArgumentType,
    QueueCleared,
    QueueFull,
    QueueTimeout,
)
from messages.events import QueueLimitChanged
from messages.snapshots import QueueSnapshot

_NAMES = ", ".join(f"{p.name}={p.value}" for p in Priority)
_PRIORITIES = tuple(Priority)
_LEAST_URGENT_FIRST = tuple(range(N_PRIORITIES - 1, -1, -1))


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

# --- the decisions ----------------------------------------------------------------------

def _free(s: SchedulerState) -> int:
    """`s.free`, spelled out for the hot paths (a property call costs as much as the rest)."""
    limit = s.limit
    free = (s.cfg.max_concurrent if limit is None else limit) - len(s.holders)
    return free if free > 0 else 0


def _least_urgent_waiting(s: SchedulerState) -> int | None:
    waiting = s.waiting
    for p in _LEAST_URGENT_FIRST:
        if waiting[p]:
            return p
    return None


def refuses(s: SchedulerState, priority: int, deadline: float, now: float) -> bool:
    """Whether an arrival (a valid priority) would be refused with QueueFull in state `s`:
    no free slot, still time to wait, the queue full, and nobody less urgent to displace."""
    if s.depth < s.cfg.max_queue_size or deadline <= now or _free(s) > 0:
        return False
    lowest = _least_urgent_waiting(s)
    return lowest is None or lowest <= priority


def _offer(s: SchedulerState, now: float) -> list:
    if not s.offer or s.depth:
        return []
    effects = []
    while _free(s) > 0:
        token = Token()
        grant = _grant(s, token, now, now, wants_conn=True)
        s.admitted -= 1  # counted when taken (a `Taken` tally)
        effects.append(Offer(token, grant.value))
    return effects


def _reclaim(s: SchedulerState, msg: Reclaim, now: float) -> list:
    """An offer taken back unused: its slot and lease return, uncounted."""
    if msg.token not in s.holders:
        return []
    granted = msg.lease
    if granted.conn is not None or granted.connect:
        s.pool = undo_lease(s.pool, granted)
    unhold(s, msg.token)
    return _hand_over(s, now)


def _grant(s: SchedulerState, reply: Any, since: float, now: float,
           wants_conn: bool = False, probe: bool = False,
           priority: int | None = None) -> Send:
    if wants_conn:
        pool, granted = lease(s.pool, now, probe, priority)
        value = Admitted(waited_s=max(now - since, 0.0), **granted)
        s.pool = pool
    else:
        value = Admitted(waited_s=max(now - since, 0.0))
    hold(s, reply)
    s.admitted += 1
    return Send(reply, value)


def _admit(s: SchedulerState, msg: Admit, now: float) -> list:
    try:
        prio = check_priority(msg.priority)
    except (InvalidArgument, InvalidArgumentType) as exc:
        return [Send(msg.reply, exc)]
    if _free(s) > 0:
        return [_grant(s, msg.reply, msg.at, now, msg.conn, msg.probe, prio)]
    if msg.deadline <= now:
        s.timed_out += 1
        return [Send(msg.reply, QueueTimeout(_PRIORITIES[prio], now - msg.at))]
    if refuses(s, prio, msg.deadline, now):
        s.rejected += 1
        return [Send(msg.reply, QueueFull(_PRIORITIES[prio], s.depth))]
    if msg.deadline < s.next_deadline:
        s.next_deadline = msg.deadline
    waiter = Waiter(msg.reply, prio, msg.at, msg.deadline, msg.conn, msg.probe)
    if s.depth < s.cfg.max_queue_size:
        enqueue(s, waiter)
        return []
    lowest = _least_urgent_waiting(s)  # a less urgent waiter than the arrival: displaced
    victim = dequeue_newest(s, s.waiting[lowest])
    s.displaced += 1
    enqueue(s, waiter)
    return [Send(victim.reply, QueueFull(_PRIORITIES[lowest], s.depth, displaced=True))]


def _hand_over(s: SchedulerState, now: float) -> list:
    """Give free slots to the most urgent waiters, oldest first."""
    effects = []
    while s.depth > 0 and _free(s) > 0:
        prio = next(p for p, queue in enumerate(s.waiting) if queue)
        first = dequeue_oldest(s, s.waiting[prio])
        effects.append(_grant(s, first.reply, first.at, now, first.conn, first.probe, prio))
    return effects


def _release(s: SchedulerState, msg: Release | Withdraw, now: float) -> list:
    if msg.reply not in s.holders:
        return []
    if type(msg) is Release and (msg.conn is not None or msg.discarded):
        s.pool = give_back(s.pool, msg, now)
    unhold(s, msg.reply)
    effects = _hand_over(s, now) if s.depth else []
    offers = _offer(s, now) if s.offer else []
    return effects + offers if offers else effects


def _withdraw(s: SchedulerState, msg: Withdraw, now: float) -> list:
    reply = msg.reply
    for q in s.waiting:
        for i, w in enumerate(q):
            if w.reply is reply:
                remove_at(s, q, i)
                if msg.reason == "timeout":
                    s.timed_out += 1
                else:
                    s.cancelled += 1
                return []
    return _release(s, msg, now)


def _expire(s: SchedulerState, now: float) -> list:
    """Answer QueueTimeout to every waiter whose deadline has come."""
    if now < s.next_deadline:
        return []
    effects = [Send(w.reply, QueueTimeout(_PRIORITIES[w.priority], now - w.at))
               for q in s.waiting for w in q if w.deadline <= now]
    if effects:
        s.waiting = [deque(w for w in q if w.deadline > now) for q in s.waiting]
        s.depth -= len(effects)
        s.timed_out += len(effects)
    s.next_deadline = min((w.deadline for q in s.waiting for w in q), default=math.inf)
    return effects


# --- the contended hot path: an Admit that waits, a Release that hands over, no message ----

def park(s: SchedulerState, make_reply: Callable[[], Any], priority: int, now: float,
         deadline: float) -> Any:
    """Park an arrival (a valid priority, no connection, no probe) exactly as `_admit` would
    when it must wait: no free slot, its deadline ahead, room in the queue. Returns its reply
    (`make_reply()`, made only then); None: any other case, which goes through `apply`.
    Everything that can fail comes before the one change."""
    if s.depth >= s.cfg.max_queue_size or deadline <= now or _free(s) > 0:
        return None
    reply = make_reply()
    waiter = Waiter(reply, priority, now, deadline, False)
    s.waiting[priority].append(waiter)
    s.depth += 1
    if deadline < s.next_deadline:
        s.next_deadline = deadline
    return reply


def pass_on(s: SchedulerState, token: Any, now: float) -> tuple[Any, Admitted] | None:
    """A holder with no connection to give back releases while callers wait: its slot goes
    to the most urgent waiter, oldest first, exactly as `_release` hands it over, and that
    (reply, grant) is returned to deliver. None: any other case (a connection to lease or
    return, a lowered limit, nobody waiting), which goes through `apply`. The grant is
    computed before anything changes, so a failure leaves the state as it was."""
    holders = s.holders
    if not s.depth or token not in holders:
        return None
    limit = s.limit
    if len(holders) != (s.cfg.max_concurrent if limit is None else limit):
        return None  # above a lowered limit, the slot is not handed on
    for q in s.waiting:
        if q:
            break
    first = q[0]
    if first.conn:
        return None
    granted = Admitted(waited_s=max(now - first.at, 0.0))
    holders.discard(token)
    q.popleft()
    s.depth -= 1
    holders.add(first.reply)
    s.admitted += 1
    return first.reply, granted


def _close_idle(s: SchedulerState, msg: CloseIdle, now: float) -> list:
    tokens = [t for t in msg.tokens if t in s.holders]
    s.pool, gone = drop_idle(s.pool, msg.conns, len(tokens))
    for t in tokens:
        unhold(s, t)
    effects = _hand_over(s, now)
    offers = _offer(s, now)
    return ([CloseConns(gone)] if gone else []) + effects + offers


def _clear(s: SchedulerState, msg: Clear, now: float) -> list:
    effects = [Send(w.reply, QueueCleared(_PRIORITIES[w.priority])) for q in s.waiting for w in q]
    s.waiting, s.depth, s.next_deadline = fifos(), 0, math.inf
    s.cleared += len(effects)
    return [*effects, Send(msg.reply, Done())]


def _set_limit(s: SchedulerState, msg: SetLimit, now: float) -> list:
    """Fewer slots from now on (nobody is cut), or (None) the configured number again."""
    n, most = msg.max_concurrent, s.cfg.max_concurrent
    if n is not None and (type(n) is not int or not 1 <= n <= most):
        return [Send(msg.reply, InvalidArgument(f"max_concurrent must be an int in 1..{most} "
                                                f"(the configured value) or None, got {n!r}"))]
    s.limit = n
    effects = _hand_over(s, now)
    offers = _offer(s, now)
    return [*effects, *offers, Emit(QueueLimitChanged(max_concurrent=n, at=now)), Send(msg.reply, Done())]


def _drop_idle_all(s: SchedulerState, msg: DropIdle, now: float) -> list:
    """Every idle connection closes; the next holders open fresh ones."""
    s.pool, gone = drop_idle(s.pool, s.pool.idle, 0)
    offers = _offer(s, now)
    return ([CloseConns(gone)] if gone else []) + offers + [Send(msg.reply, Dropped(conns=len(gone)))]


def snapshot(s: SchedulerState, now: float, restarts: int = 0) -> QueueSnapshot:
    """The core's view: untaken offers count as held (`actors.pg.pool.corrected` frees them)."""
    waiting = s.waiting
    oldest = min((q[0].at for q in waiting if q), default=now)
    return QueueSnapshot(
        max_concurrent=s.max_concurrent, max_queue_size=s.cfg.max_queue_size,
        in_flight=len(s.holders), free=s.free, depth=s.depth,
        depth_by_priority={p.name: len(waiting[p]) for p in _PRIORITIES},
        oldest_wait_s=max(now - oldest, 0.0), admitted=s.admitted, rejected=s.rejected,
        displaced=s.displaced, timed_out=s.timed_out, cancelled=s.cancelled,
        cleared=s.cleared, pool=pool_snapshot(s.pool), restarts=restarts,
        configured_max_concurrent=None if s.limit is None else s.cfg.max_concurrent)


def _taken(s: SchedulerState, msg: Taken, now: float) -> list:
    s.admitted += msg.n
    return []


def _get_snapshot(s: SchedulerState, msg: GetSnapshot, now: float) -> list:
    return [Send(msg.reply, snapshot(s, now))]


def _tick(s: SchedulerState, msg: Tick, now: float) -> list:
    return _expire(s, now)


def _replenish(s: SchedulerState, msg: Replenish, now: float) -> list:
    return _offer(s, now)


# The whole behaviour of the admission queue, by message type (a dict: one lookup per message).
_HANDLERS = {Admit: _admit, Release: _release, Withdraw: _withdraw, Clear: _clear, Reclaim: _reclaim,
             Taken: _taken, Replenish: _replenish, GetSnapshot: _get_snapshot, Tick: _tick,
             CloseIdle: _close_idle, SetLimit: _set_limit, DropIdle: _drop_idle_all}


def apply(s: SchedulerState, msg: SchedulerIn, now: float) -> list:
    """No I/O, no trio: the whole behaviour of the admission queue, applied to `s` in place."""
    handler = _HANDLERS.get(type(msg))
    if handler is None:
        raise TypeError(f"scheduler cannot handle {type(msg).__name__}")
    return handler(s, msg, now)


def step(s: SchedulerState, msg: SchedulerIn, now: float) -> tuple[SchedulerState, list]:
    """The pure form: `apply` to a copy, so `s` stays as it was (the tests' and Hypothesis')."""
    s = s.copy()
    return s, apply(s, msg, now)


class SchedulerCore:
    """The scheduler's core as its shell runs it, with the pool's offer list beside it.

    Offers are shell state (callers take them without a message), so this is where the core
    meets them: an arrival that must ask first takes one unused offer back, and the slots
    the core offers go onto the list. Each message is one transaction (see the module doc):
    if it crashes, the state and the offer list are as they were before it.
    The generic actor shell knows nothing of this.
    """

    name = "scheduler"

    def __init__(self, offers: Offers) -> None:
        self.offers = offers

    def step(self, s: SchedulerState, msg: SchedulerIn, now: float) -> tuple[SchedulerState, list]:
        saved, kind = astuple(s), type(msg)
        s.journal = journal = []
        entries, taken_back = self.offers.entries, []
        try:
            if kind is Admit and entries:
                effects = self._reclaim_one(s, msg, now, taken_back)
                effects += apply(s, msg, now)
            elif kind is SetLimit or kind is DropIdle:
                effects = self._reclaim_all(s, now, taken_back)
                effects += apply(s, msg, now)
            else:
                effects = apply(s, msg, now)
        except BaseException:
            rollback(s, saved, journal)
            entries.extend(reversed(taken_back))  # the offers too are as they were
            raise
        s.journal = None
        if effects:
            for effect in effects:
                if type(effect) is Offer:
                    effects = self._offer(effects)
                    break
        self.offers.state = s
        return s, effects

    def _reclaim_one(self, s: SchedulerState, msg: Admit, now: float, taken_back: list) -> list:
        """Before an arrival that had to ask, one unused offer comes back so it can be granted."""
        reclaim = self.offers.reclaim_for(msg)
        if reclaim is None:
            return []
        taken_back.append((reclaim.token, reclaim.lease))
        return _reclaim(s, reclaim, now)

    def _reclaim_all(self, s: SchedulerState, now: float, taken_back: list) -> list:
        """Offered slots come back first: a lower limit must not leave them pre-granted, and
        their idle connections must be in the core's list to be closed."""
        entries, effects = self.offers.entries, []
        while entries:
            token, granted = entries.pop()
            taken_back.append((token, granted))
            effects += _reclaim(s, Reclaim(token=token, lease=granted), now)
        return effects

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
