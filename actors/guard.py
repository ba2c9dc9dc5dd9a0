"""What callers hold for each actor: breaker and queue handles, and the one guard around a call.

`Guard` is the only path of a guarded call — `mon.run`, `mon.guard` and `mon.db` alike:
breaker permit, admission (with a pooled connection for mon.db), outcome, metrics.

Handles only read published values and talk to actors through their mailboxes;
they own no state of their own beyond wiring, and the count of the refusals they
decided themselves (`refused`): a refusal that the published state makes exact — the
actor would answer it the same, and nothing waits in its inbox that could change that —
costs no round trip. Those counts are added to the actor's in every snapshot.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import trio
from msgspec.structs import replace
from trio.lowlevel import cancel_shielded_checkpoint, checkpoint_if_cancelled

from actors.breaker import refused_retry
from actors.breaker import snapshot as breaker_snapshot
from actors.pg.pool import ConnectionLease, Offers, corrected
from actors.pg.pool_probe import check_pool
from actors.runtime.actor import SupervisedActor, inline_ready, run_inline
from actors.runtime.mailbox import AsyncValue, Mailbox, Reply, ask, tell_quietly
from actors.scheduler import check_priority, park, pass_on, refuses
from actors.scheduler import snapshot as queue_snapshot
from messages.commands import (
    Admit,
    Admitted,
    Clear,
    Configure,
    DropIdle,
    ForceOpen,
    GetSnapshot,
    Outcome,
    Permit,
    Release,
    Reset,
    SetLimit,
    Withdraw,
)
from messages.config import Priority, check_breaker_field
from messages.errors import (
    CircuitOpen,
    InvalidArgument,
    InvalidArgumentType,
    QueueFull,
    ShuttingDown,
    TriageError,
    UnknownTier,
    breaker_verdict,
)
from messages.outcome import Outcome as CallOutcome
from messages.outcome import outcome_of
from messages.snapshots import BreakerSnapshot, PoolCheck, QueueSnapshot

# How long a failing caller waits for its breaker to take the failure in: normally one task
# switch; only a breaker that is down (restarting after a crash) makes it wait this long.
FAILURE_REPORT_TIMEOUT_S = 1.0
_PHASES = ("closed", "open", "half_open")
_PRIORITIES = tuple(Priority)


class FaultsDisabled(TriageError):
    def __init__(self) -> None:
        super().__init__("fault injection is off: set TRIAGE_FAULTS=1 (config faults.enabled)")


class BreakerHandle:
    """One tier's breaker as a caller sees it."""

    def __init__(self, tier: str, inbox: Mailbox, view: AsyncValue,
                 ignore: tuple[type[BaseException], ...]) -> None:
        self.tier, self._inbox, self._view, self.ignore = tier, inbox, view, ignore
        self.refused = 0  # CircuitOpen decided here (`refusal`), counted in `rejections`

    @property
    def state(self) -> str:
        """The state as last published (no round trip)."""
        return self._view.value.phase

    def statistics(self) -> BreakerSnapshot:
        """The breaker as last published, as a frozen value: no round trip, no checkpoint."""
        return self._counted(breaker_snapshot(self._view.value, trio.current_time()))

    def _counted(self, snap: BreakerSnapshot) -> BreakerSnapshot:
        return replace(snap, rejections=snap.rejections + self.refused) if self.refused else snap

    def refusal(self, now: float) -> float | None:
        """The `retry_after_s` of the CircuitOpen a permit would get now, from the published
        state without a round trip (counted); None if the breaker permits, or if only the
        actor can tell (mail is waiting)."""
        if len(self._inbox):
            return None
        retry = refused_retry(self._view.value, now)
        if retry is None:
            return None
        self.refused += 1
        return max(retry, 0.0)

    async def wait_state(self, state: str) -> None:
        if state not in _PHASES:  # a typo would wait forever
            raise InvalidArgument(f"state must be one of {', '.join(_PHASES)}, got {state!r}")
        await self._view.wait_value(lambda v: v.phase == state)

    async def reset(self) -> None:
        await ask(self._inbox, lambda r: Reset(reply=r))

    async def force_open(self) -> None:
        await ask(self._inbox, lambda r: ForceOpen(reply=r))

    async def configure(self, **fields: Any) -> None:
        """failure_threshold, recovery_timeout_s, monitoring_period_s, half_open_max_calls, success_threshold.

        A bad value (or an unknown field) raises ConfigError naming `tiers.<tier>.<field>`.
        """
        for name, value in fields.items():
            if value is not None:  # None leaves a field as it is
                check_breaker_field(f"tiers.{self.tier}", name, value)
        await ask(self._inbox, lambda r: Configure(reply=r, **fields))

    async def snapshot(self) -> BreakerSnapshot:
        return self._counted(await ask(self._inbox, lambda r: GetSnapshot(reply=r)))

    def fleet_report(self, msg: Any) -> None:
        """The fleet agent's news for this breaker (FleetShared, FleetQuorum, ProbeLease,
        FleetVerdict: see actors/fleet/breaker_agent.py). Never blocks; nothing once closed."""
        if not self._inbox.closed:
            self._inbox.put(msg)

    def admitting_epoch(self) -> int | None:
        """The epoch while the breaker admits every call from its published state (CLOSED,
        or turned off): no permit to ask for. None otherwise."""
        v = self._view.value
        return v.epoch if v.phase == "closed" or not v.enabled else None

    async def permit(self) -> tuple[bool, int]:
        """(trial, epoch) or CircuitOpen. Asks the actor only when it is not CLOSED."""
        v = self._view.value
        if v.phase == "closed" or not v.enabled:
            return False, v.epoch
        p = await ask(self._inbox, lambda r: Permit(reply=r))
        return p.trial, p.epoch

    def count_success(self) -> bool:
        """A success of a call that was no trial, counted without a message while the breaker
        is CLOSED (True); False: it must be reported (`report`)."""
        if self._view.value.phase != "closed":
            return False
        self._inbox.tally += 1  # `tell_count` without its frame (once the system is gone: moot)
        return True

    async def report(self, result: str, trial: bool, epoch: int, duration_s: float) -> None:
        """Tell the breaker how a call ended (nothing to tell once the system is gone).

        A failure waits until the breaker has applied it and published its state, so once
        this returns every admission anywhere sees the verdict (a breaker just opened refuses).
        Shielded and bounded: the caller's own exception is never replaced by a cancellation.
        """
        if result == "success" and not trial and self.count_success():
            return
        v = self._view.value
        if result != "failure" or not v.enabled:
            tell_quietly(self._inbox, Outcome(result=result, epoch=epoch, trial=trial,
                                              duration_s=duration_s))
            return
        reply = Reply()
        if not tell_quietly(self._inbox, Outcome(result=result, epoch=epoch, trial=trial,
                                                 duration_s=duration_s, reply=reply)):
            return
        with trio.move_on_after(FAILURE_REPORT_TIMEOUT_S, shield=True), \
                contextlib.suppress(TriageError):  # shutting down, or the breaker crashed on it
            await reply.wait()


class QueueHandle:
    """The admission queue as a caller sees it."""

    def __init__(self, inbox: Mailbox, timeout_s: float, offers: Offers | None = None,
                 cell: SupervisedActor | None = None) -> None:
        self._inbox, self.timeout_s, self.offers, self._cell = inbox, timeout_s, offers, cell
        self._entries: Any = offers.entries if offers is not None else ()
        self._connections: Any = None
        self._probe_timeout_s = 5.0
        self.refused = 0  # QueueFull decided here (`admit`), counted in `rejected`

    def attach_connections(self, connections: Any, probe_timeout_s: float) -> None:
        """How the pool's connections are made (mon.db's), for `health_check`: the queue starts
        before the database handle exists."""
        self._connections, self._probe_timeout_s = connections, probe_timeout_s

    async def admit(self, priority: int, timeout_s: float | None = None,
                    conn: bool = False, probe: bool = False, now: float | None = None,
                    checkpoint: bool = False) -> tuple[Reply, Admitted]:
        """Wait for a slot (and a pooled connection if `conn`): (token for `release`, lease).

        Raises QueueFull, QueueTimeout (after `timeout_s`, default the queue's request
        timeout), QueueCleared or ShuttingDown. `now`: the caller's clock reading, if it has one.
        `checkpoint`: the caller has checked for cancellation and wants one schedule point
        (trio.Semaphore's pattern): an answer given here without waiting yields once first.
        """
        if self._entries and not probe:  # a slot offered in advance: held at once, no round trip
            taken = self.offers.take(conn, priority)
            if taken is not None:
                if checkpoint:
                    await cancel_shielded_checkpoint()
                return taken
        if now is None:
            now = trio.current_time()
        wait_s = self.timeout_s if timeout_s is None else check_timeout(timeout_s)
        deadline = now + wait_s
        offers = self.offers
        priority = check_priority(priority)
        # Refused from the scheduler's own state: exact while no message waits in its inbox.
        if offers is not None and not len(self._inbox) and refuses(offers.state, priority, deadline, now):
            self.refused += 1
            depth = offers.state.depth
            if checkpoint:
                await cancel_shielded_checkpoint()
            # Made in the raise itself: an exception kept in a local of the frame its traceback
            # holds is a reference cycle, and a retry storm of those keeps the GC busy.
            raise QueueFull(_PRIORITIES[priority], depth)
        reply = None if conn or probe else self.park(priority, wait_s, now)
        if reply is None:
            reply = Reply()
            msg = Admit(reply=reply, priority=priority, at=now, deadline=deadline, conn=conn, probe=probe)
            if not self._inline(msg, now):
                await self._inbox.put_ask(msg)
            elif checkpoint and reply.answered:  # granted or refused at once
                await cancel_shielded_checkpoint()
        try:
            admitted = await reply.wait()
        except BaseException:
            self.leave(reply)
            raise
        return reply, admitted

    def park(self, priority: int, timeout_s: float | None, now: float) -> Reply | None:
        """The contended hot path: an arrival (a checked priority and timeout, no connection)
        that must wait parks from the caller's task, without a message, when the actor would
        handle its Admit next (`actors.scheduler.park`). The caller then waits on the reply
        (its token for `release`) and calls `leave` if that raises. None: `admit` instead."""
        cell = self._cell
        if cell is None or self._entries or not inline_ready(cell):
            return None
        s = cell.state
        reply = park(s, Reply, priority, now, now + (self.timeout_s if timeout_s is None else timeout_s))
        if reply is not None:
            cell.inbox.wake_by(s.next_deadline)  # the actor wakes for the earliest deadline
        return reply

    def leave(self, reply: Reply) -> None:
        """The wait for a slot raised: if the caller was cancelled while waiting, it leaves."""
        if reply.abandoned:
            self._tell(Withdraw(reply=reply, reason="cancelled"))

    def _inline(self, msg: Any, now: float) -> bool:
        """The scheduler's core applies `msg` in this task when the actor would do so next."""
        return self._cell is not None and run_inline(self._cell, msg, now)

    @staticmethod
    def _pass_on(s: Any, token: Any, now: float) -> Any:
        """Hand the slot of a holder with no connection straight to the next waiter from this
        task (`actors.scheduler.pass_on`); a waiter that has just gone passes it on in turn,
        as `undelivered` would. Returns the token whose Release is still owed (None: none is)."""
        while True:
            handed = pass_on(s, token, now)
            if handed is None:
                return token
            token, granted = handed
            if token.deliver(granted):
                return None

    def _tell(self, msg: Any, now: float | None = None) -> bool:
        if self._cell is not None and run_inline(self._cell, msg, trio.current_time() if now is None else now):
            return True
        return tell_quietly(self._inbox, msg)

    def release(self, token: Any, conn: Any = None, discarded: bool = False,
                connect_failed: bool = False, lease: Admitted | None = None,
                connect_limited: bool = False, now: float | None = None) -> bool:
        """Give the slot back (with the pooled connection, if any). False once shut down.

        `lease`: what the holder got, returned as is when it used no connection or the one it
        came with (an offer taken by `mon.db`, see `actors.pg.pool.release_with`). While nobody
        waits, a clean slot goes straight back on the offer list (see `actors.pg.pool.Offers`).
        """
        offers, cell = self.offers, self._cell
        # Callers wait, and the actor would handle this Release next: the slot goes straight on.
        if (cell is not None and cell.state.depth and conn is None and not discarded
                and (lease is None or (lease.conn is None and not lease.connect)) and inline_ready(cell)):
            if now is None:
                now = trio.current_time()
            left = self._pass_on(cell.state, token, now)
            if left is None:
                return True
            if left is not token:  # granted to a caller that had just gone: back as `undelivered`
                return self._tell(Release(reply=left), now)
        if offers is not None and not discarded and offers.put_back(token, conn, lease):
            return True
        if lease is not None and conn is None and not discarded:
            conn, discarded = lease.conn, lease.connect  # unused: the lease goes back as it came
        return self._tell(Release(reply=token, conn=conn, discarded=discarded,
                                  connect_failed=connect_failed, connect_limited=connect_limited), now)

    def would_refuse(self, priority: int) -> bool:
        """Whether an arrival at `priority` would be refused now (`QueueFull`: the queue is at
        its limit and nobody less urgent waits, whom it would displace), judged from the
        published state: no round trip, no checkpoint, no snapshot. False when in doubt."""
        s = self.offers.state if self.offers is not None else None
        if s is None or not s.depth or s.depth < s.cfg.max_queue_size:
            return False
        return not any(s.waiting[p] for p in range(priority + 1, len(s.waiting)))

    def statistics(self) -> QueueSnapshot:
        """The queue (and pool) as last published, offered slots counted free: no round trip."""
        snap = queue_snapshot(self.offers.state, trio.current_time())
        return self._counted(corrected(snap, self.offers.counts()))

    def _counted(self, snap: QueueSnapshot) -> QueueSnapshot:
        return replace(snap, rejected=snap.rejected + self.refused) if self.refused else snap

    async def clear(self) -> None:
        """Answer every waiter with QueueCleared (holders keep their slots)."""
        await ask(self._inbox, lambda r: Clear(reply=r))

    async def set_limit(self, max_concurrent: int | None) -> None:
        """Temporarily fewer slots: holders above the new limit finish (nobody is cut), new
        admissions wait. None restores the configured value. InvalidArgument if out of range."""
        await ask(self._inbox, lambda r: SetLimit(reply=r, max_concurrent=max_concurrent))

    async def drop_idle(self) -> int:
        """Close every idle pooled connection; the number closed."""
        return (await ask(self._inbox, lambda r: DropIdle(reply=r))).conns

    async def health_check(self) -> PoolCheck:
        """Replace every idle connection, then probe through the pool: the result, as data."""
        if self._connections is None:
            raise InvalidArgument("no database is configured: the pool has nothing to check")
        return await check_pool(self, self._connections, self._probe_timeout_s)

    async def snapshot(self) -> QueueSnapshot:
        snap = await ask(self._inbox, lambda r: GetSnapshot(reply=r))
        return self._counted(corrected(snap, self.offers.counts()) if self.offers is not None else snap)


def observe_call(metrics: Mailbox, tier: str, exc: BaseException | None, t0: float,
                 now: float, waited_s: float | None, priority: int) -> None:
    """Tell the metrics actor how a guarded call ended (lazily: it reads its mail in batches).
    `waited_s` None: never admitted (refused by the breaker or the queue)."""
    if exc is None and waited_s is not None:  # the usual end: no tuple (`Mailbox.tell_call`)
        metrics.tell_call((tier, priority), now - t0, waited_s)
        return
    outcome = CallOutcome.OK if exc is None else outcome_of(exc)
    metrics.tell_batched(("call", None, tier, outcome, None, now - t0, waited_s, True, priority))


class Guard:
    """The one guard around every guarded call: `mon.run`, `async with mon.guard(...)`, `mon.db`.

    Breaker permit, then an admission slot (with a pooled connection when `conn`), then the
    outcome: the slot goes back, the metrics hear how the call ended, and the breaker its
    verdict — a failure applied before the caller gets control back. `checkpoint`: entering is
    a trio checkpoint (mon.db's calls are one anyway: every query waits on its socket).
    """

    __slots__ = ("_breaker", "_queue", "_metrics", "_priority", "_timeout_s", "_conn", "_checkpoint",
                 "_trial", "_epoch", "_token", "_t0", "_waited", "_lease", "_ended_at")

    def __init__(self, breaker: BreakerHandle, queue: QueueHandle, metrics: Mailbox, priority: int,
                 timeout_s: float | None, conn: bool = False, checkpoint: bool = True) -> None:
        self._breaker, self._queue, self._metrics = breaker, queue, metrics
        # The checks' usual answers first, without a call: a Priority, and no timeout of its own.
        self._priority = priority if type(priority) is Priority else check_priority(priority)
        self._timeout_s = None if timeout_s is None else check_timeout(timeout_s)
        self._conn, self._checkpoint, self._token = conn, checkpoint, None

    @property
    def entered(self) -> bool:
        """Whether a slot is held (so `exit` is owed)."""
        return self._token is not None

    def enter_now(self, now: float) -> Admitted | None:
        """`enter` when it has nothing to wait for, without a coroutine (mon.db's usual call):
        the breaker admits from its published state (CLOSED, or off) and a slot is on offer.
        None: `await enter()`, which decides afresh. Only for a guard that is no checkpoint
        (`checkpoint=False`: mon.db's queries are one anyway). `now`: the caller's clock."""
        v = self._breaker._view.value
        queue = self._queue
        if (v.phase != "closed" and v.enabled) or not queue._entries or self._checkpoint:
            return None
        taken = queue.offers.take(self._conn, self._priority)
        if taken is None:
            return None
        token, admitted = taken
        self.hold(token, admitted, now, v.epoch)
        return admitted

    def hold(self, token: Any, admitted: Admitted, now: float, epoch: int) -> None:
        """The guard now holds the slot `token` (no trial), as if it had entered at `now`."""
        self._trial, self._epoch = False, epoch
        self._token, self._t0, self._waited, self._lease = token, now, admitted.waited_s, admitted

    async def enter(self) -> Admitted:
        """Permit + slot, or the refusal (observed, and a trial permit handed back).

        Entering is one checkpoint, as trio.Semaphore.acquire is: cancellation is checked
        first (a cancelled caller takes no slot and runs nothing), then the call yields once —
        waiting for an answer is that yield; an answer at once (an offered slot, a refusal
        decided from published state) is followed by a cancel-shielded one, so a loop of
        guarded calls that never await still lets other tasks run.
        """
        checkpoint = self._checkpoint
        if checkpoint:
            await checkpoint_if_cancelled()
        t0 = trio.current_time()
        breaker = self._breaker
        v = breaker._view.value
        if v.phase == "closed" or not v.enabled:  # the fast path, inline: no round trip
            self._trial, self._epoch = False, v.epoch
        else:
            try:
                retry = breaker.refusal(t0)
                if retry is not None:
                    if checkpoint:
                        await cancel_shielded_checkpoint()
                    raise CircuitOpen(breaker.tier, retry)  # made in the raise: no reference cycle
                self._trial, self._epoch = await breaker.permit()
                checkpoint = False  # waiting for the breaker's answer was the yield
            except BaseException as exc:
                observe_call(self._metrics, breaker.tier, exc, t0, trio.current_time(), None, self._priority)
                raise
        queue = self._queue
        reply = None if self._conn else queue.park(self._priority, self._timeout_s, t0)  # contended
        try:
            if reply is None:  # a trial that wants a connection may connect while the pool backs off
                token, admitted = await queue.admit(self._priority, self._timeout_s, conn=self._conn,
                                                    probe=self._conn and self._trial, now=t0,
                                                    checkpoint=checkpoint)
            else:  # parked: waiting for the slot is the yield
                token = reply
                try:
                    admitted = await reply.wait()
                except BaseException:
                    queue.leave(reply)
                    raise
        except BaseException as exc:
            if self._trial:
                await breaker.report("abandoned", True, self._epoch, 0.0)
            observe_call(self._metrics, breaker.tier, exc, t0, trio.current_time(), None, self._priority)
            raise
        self._token, self._t0, self._waited, self._lease = token, t0, admitted.waited_s, admitted
        return admitted

    async def exit(self, exc: BaseException | None, held: ConnectionLease | None = None) -> None:
        """The slot back (with `held`'s connection), then the outcome to metrics and breaker."""
        if not self.leave(exc, held):
            await self.report(exc)

    def leave(self, exc: BaseException | None, held: ConnectionLease | None = None) -> bool:
        """`exit` up to the breaker's verdict, without a coroutine: the slot back, the outcome
        to metrics, and a success counted. False: the breaker must hear it (`await report`)."""
        now = trio.current_time()
        token, self._token = self._token, None
        if held is None:
            self._queue.release(token, lease=self._lease, now=now)
        else:
            held.give_back(self._queue, token)
        breaker = self._breaker
        observe_call(self._metrics, breaker.tier, exc, self._t0, now, self._waited, self._priority)
        if exc is None and not self._trial and breaker.count_success():
            return True  # the usual end: counted, nothing to wait for
        self._ended_at = now
        return False

    async def report(self, exc: BaseException | None) -> None:
        """The breaker's verdict on the call `leave` ended (a failure: applied before this returns)."""
        breaker = self._breaker
        await breaker.report(breaker_verdict(exc, breaker.ignore), self._trial, self._epoch,
                             self._ended_at - self._t0 - self._waited)

    async def __aenter__(self) -> Guard:
        await self.enter()
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        await self.exit(exc)


class Guards:
    """Makes the guard for a tier: the one place `mon.run`, `mon.guard` and `mon.db` get theirs."""

    __slots__ = ("breakers", "queue", "metrics", "closed")

    def __init__(self, breakers: dict[str, BreakerHandle], queue: QueueHandle, metrics: Mailbox,
                 closed: Any) -> None:
        self.breakers, self.queue, self.metrics, self.closed = breakers, queue, metrics, closed

    def __call__(self, tier: str, priority: int, timeout_s: float | None, *,
                 conn: bool = False) -> Guard:
        """A guard for one call; `conn`: the slot comes with a pooled connection (mon.db)."""
        if self.closed():
            raise ShuttingDown()
        breaker = self.breakers.get(tier)
        if breaker is None:
            raise UnknownTier(tier, tuple(self.breakers))
        return Guard(breaker, self.queue, self.metrics, priority, timeout_s, conn, not conn)

    def holding(self, breaker: BreakerHandle, priority: Priority, token: Any, admitted: Admitted,
                now: float, epoch: int) -> Guard:
        """The guard of a `mon.db` call that took an offered slot without one (see
        `Database._run`), made when the call needs it: its statement raised."""
        guard = Guard(breaker, self.queue, self.metrics, priority, None, True, False)
        guard.hold(token, admitted, now, epoch)
        return guard


def check_timeout(timeout_s: object) -> float | None:
    """None, or a number of seconds >= 0 (inf: no bound)."""
    if timeout_s is None:
        return None
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float):
        raise InvalidArgumentType(f"timeout_s must be a number of seconds or None, got {timeout_s!r}")
    if math.isnan(timeout_s) or timeout_s < 0:
        raise InvalidArgument(f"timeout_s must be >= 0, got {timeout_s!r}")
    return timeout_s
