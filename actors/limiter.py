"""Rate limiter actor: the key table of `limiter_core` (GCRA or sliding window) behind a mailbox.

The key table is the one part of an actor's state that is mutated in place:
it may hold a million keys, and copying it per decision is out of the
question. It is owned by this actor alone and never leaves it; what leaves
is `RateDecision` and `LimiterSnapshot` values.

Lending (the limiter's offered slots). A round trip to this actor costs two task
switches, several times the decision itself. So a key the actor has decided on is
*lent*: its state (one TAT, or a window log) goes on the table's lent list, where
`mon.check_rate` / `mon.peek_rate` find it and decide in the caller's task, with the
same function the table uses (`limiter_core._decide`), exactly as the actor would; a key
not lent (new, or taken back) is asked as before. The actor stays the owner: it lends,
and it takes back, in its own step — a lease no caller used since the last review
(every `REVIEW_EVERY_S` while anything is lent), a key it must reset, expire or evict.
Nothing awaits between a caller's look-up and its decision, and trio runs one task at a
time, so the two never interleave, and the order of decisions is the order of the calls:
an exact window stays exact, GCRA keeps its bound. At most `LEND_MAX` keys are lent.
"""

from __future__ import annotations

import math

import msgspec
import trio

from actors.limiter_core import LentKeys, LimiterTable, PolicySpec, RateDecision
from actors.runtime.actor import Send, SupervisedActor
from actors.runtime.mailbox import Mailbox
from messages.commands import Check, Done, GetSnapshot, PeekRate, ResetKeys, Tick
from messages.config import Config
from messages.errors import TriageError
from messages.snapshots import LimiterSnapshot, PolicyStats

LimiterIn = Check | PeekRate | ResetKeys | GetSnapshot | Tick

# Idle keys carry no information (GCRA or window); sweeping them in small slices, at most every
# EXPIRE_EVERY_S while checks arrive, keeps memory low without a pause.
EXPIRE_EVERY_S = 5.0
EXPIRE_BUDGET = 2000
# Lent keys (see the module doc): at most this many, each reviewed (taken back when unused) this often.
LEND_MAX = 4096
REVIEW_EVERY_S = 1.0

__all__ = ["LimiterCore", "LimiterHandle", "LimiterState", "RateDecision", "step", "snapshot"]


class LimiterState(msgspec.Struct, kw_only=True):
    table: LimiterTable
    next_expire_at: float
    next_review_at: float

    @classmethod
    def initial(cls, config: Config, now: float) -> LimiterState:
        policies = {n: PolicySpec(limit=p.limit, window_s=p.window_s, algorithm=p.resolved_algorithm())
                    for n, p in config.policies.items()}
        overrides = {pol: {k: PolicySpec(limit=v.limit, window_s=v.window_s) for k, v in keys.items()}
                     for pol, keys in config.limiter.overrides.items()}
        table = LimiterTable(policies, max_keys=config.limiter.max_keys, overrides=overrides,
                             exempt=frozenset(config.limiter.exempt_keys),
                             enabled=config.rate_limiting_enabled, lend=LEND_MAX)
        return cls(table=table, next_expire_at=now + EXPIRE_EVERY_S, next_review_at=now + REVIEW_EVERY_S)


def snapshot(s: LimiterState, now: float, restarts: int = 0) -> LimiterSnapshot:
    stats = s.table.stats()
    policies = {
        name: PolicyStats(limit=p["limit"], window_s=p["window_s"], allowed=p["allowed"],
                          rejected=p["rejected"], keys=p["keys"])
        for name, p in stats["policies"].items()
    }
    return LimiterSnapshot(enabled=stats["enabled"], keys=stats["keys"], max_keys=stats["max_keys"],
                           evictions=stats["evictions"], policies=policies, restarts=restarts)


def _expire(s: LimiterState, now: float) -> None:
    s.table.expire(now, EXPIRE_BUDGET)
    s.next_expire_at = now + EXPIRE_EVERY_S


def _review(s: LimiterState, now: float) -> None:
    s.table.review_lent()
    s.next_review_at = now + REVIEW_EVERY_S


def step(s: LimiterState, msg: LimiterIn, now: float) -> tuple[LimiterState, list]:
    if now >= s.next_review_at:
        _review(s, now)
    match msg:
        case Check():
            if now >= s.next_expire_at:
                _expire(s, now)
            try:
                decision = s.table.check(msg.policy, msg.key, now, msg.cost)
            except (TriageError, KeyError, ValueError) as exc:  # a malformed check
                return s, [Send(msg.reply, exc)]
            return s, [Send(msg.reply, decision)]
        case PeekRate():
            try:
                decision = s.table.peek(msg.policy, msg.key, now)
            except (TriageError, KeyError) as exc:  # an unknown policy
                return s, [Send(msg.reply, exc)]
            return s, [Send(msg.reply, decision)]
        case Tick():
            return s, []
        case ResetKeys():
            try:
                s.table.reset(msg.policy, msg.key)
            except (TriageError, KeyError) as exc:  # an unknown policy, say
                return s, [Send(msg.reply, exc)]
            return s, [Send(msg.reply, Done())]
        case GetSnapshot():
            return s, [Send(msg.reply, snapshot(s, now))]
    raise TypeError(f"limiter cannot handle {type(msg).__name__}")


class LimiterCore:
    name = "limiter"
    step = staticmethod(step)

    @staticmethod
    def wakeup(s: LimiterState) -> float:
        # Expiry rides on checks: without traffic no key is added, so nothing grows. Lent keys
        # are decided without a message, so their review needs a wake-up of its own.
        return s.next_review_at if len(s.table.lent) else math.inf

    @staticmethod
    def parked(s: LimiterState) -> tuple:
        return ()

    @staticmethod
    def undelivered(reply: object, value: object) -> None:
        return None


class LimiterHandle:
    """The limiter as a caller sees it: its mailbox (asks go through `mon.check_rate`), the
    keys it has lent (`lent`, decided without a round trip) and `statistics()`, the table's
    counters as a frozen value without a round trip."""

    def __init__(self, inbox: Mailbox, cell: SupervisedActor) -> None:
        self.inbox, self._cell = inbox, cell
        self.lent: LentKeys = cell.state.table.lent

    def statistics(self) -> LimiterSnapshot:
        return snapshot(self._cell.state, trio.current_time())
