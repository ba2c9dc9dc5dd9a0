"""What callers hold for each actor: breaker and queue handles, and the guard around a call.

Handles only read published values and talk to actors through their mailboxes;
they own no state of their own beyond wiring.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import trio

from actors.breaker import snapshot as breaker_snapshot
from actors.runtime.actor import SupervisedActor
from actors.runtime.mailbox import AsyncValue, Mailbox, Reply, ask, tell_quietly
from actors.scheduler import adjust, check_priority
from actors.scheduler import snapshot as queue_snapshot
from messages.commands import (
    Admit,
    Admitted,
    Clear,
    Configure,
    ForceOpen,
    GetSnapshot,
    Outcome,
    Permit,
    Reclaim,
    Release,
    Reset,
    Withdraw,
)
from messages.config import check_breaker_field
from messages.errors import (
    InvalidArgument,
    InvalidArgumentType,
    ShuttingDown,
    TriageError,
    breaker_verdict,
)
from messages.outcome import outcome_of
from messages.snapshots import BreakerSnapshot, QueueSnapshot

# How long a failing caller waits for its breaker to take the failure in: normally one task
# switch; only a breaker that is down (restarting after a crash) makes it wait this long.
FAILURE_REPORT_TIMEOUT_S = 1.0
_PHASES = ("closed", "open", "half_open")


class FaultsDisabled(TriageError):
    def __init__(self) -> None:
        super().__init__("fault injection is off: set TRIAGE_FAULTS=1 (config faults.enabled)")


class BreakerHandle:
    """One tier's breaker as a caller sees it."""

    def __init__(self, tier: str, inbox: Mailbox, view: AsyncValue,
                 ignore: tuple[type[BaseException], ...]) -> None:
        self.tier, self._inbox, self._view, self.ignore = tier, inbox, view, ignore

    @property
    def state(self) -> str:
        """The state as last published (no round trip)."""
        return self._view.value.phase

    def statistics(self) -> BreakerSnapshot:
        """The breaker as last published, as a frozen value: no round trip, no checkpoint."""
        return breaker_snapshot(self._view.value, trio.current_time())

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
        return await ask(self._inbox, lambda r: GetSnapshot(reply=r))

    async def permit(self) -> tuple[bool, int]:
        """(trial, epoch) or CircuitOpen. Asks the actor only when it is not CLOSED."""
        v = self._view.value
        if v.phase == "closed" or not v.enabled:
            return False, v.epoch
        p = await ask(self._inbox, lambda r: Permit(reply=r))
        return p.trial, p.epoch

    async def report(self, result: str, trial: bool, epoch: int, duration_s: float) -> None:
        """Tell the breaker how a call ended (nothing to tell once the system is gone).

        A failure waits until the breaker has applied it and published its state, so once
        this returns every admission anywhere sees the verdict (a breaker just opened refuses).
        Shielded and bounded: the caller's own exception is never replaced by a cancellation.
        """
        v = self._view.value
        if result == "success" and not trial and v.phase == "closed":
            with contextlib.suppress(ShuttingDown):
                self._inbox.tell_count()
            return
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

    def __init__(self, inbox: Mailbox, timeout_s: float, cell: SupervisedActor | None = None) -> None:
        self._inbox, self.timeout_s, self._cell = inbox, timeout_s, cell
        self._offers: Any = cell.offers if cell is not None else ()

    async def admit(self, priority: int, timeout_s: float | None = None,
                    conn: bool = False, probe: bool = False, now: float | None = None
                    ) -> tuple[Reply, Admitted]:
        """Wait for a slot (and a pooled connection if `conn`): (token for `release`, lease).

        Raises QueueFull, QueueTimeout (after `timeout_s`, default the queue's request
        timeout), QueueCleared or ShuttingDown. `now`: the caller's clock reading, if it has one.
        """
        offers = self._offers
        if offers and not probe:  # a slot offered in advance: held at once, no round trip
            token, lease = offers.pop()  # LIFO: the warmest connection, so idle ones can age out
            if not (conn and lease.unavailable_s):
                self._inbox.tell_count()
                return token, lease
            tell_quietly(self._inbox, Reclaim(token=token, lease=lease))  # stale back-off: ask
        if now is None:
            now = trio.current_time()
        reply = Reply()
        wait_s = self.timeout_s if timeout_s is None else check_timeout(timeout_s)
        await self._inbox.put_ask(Admit(reply=reply, priority=priority, at=now,
                                        deadline=now + wait_s, conn=conn, probe=probe))
        try:
            admitted = await reply.wait()
        except BaseException:
            if reply.abandoned:  # cancelled while waiting: leave the queue
                tell_quietly(self._inbox, Withdraw(reply=reply, reason="cancelled"))
            raise
        return reply, admitted

    def release(self, token: Any, conn: Any = None, discarded: bool = False,
                connect_failed: bool = False, lease: Admitted | None = None,
                connect_limited: bool = False) -> bool:
        """Give the slot back (with the pooled connection, if any). False once shut down.

        `lease`: what the holder got, returned as is when it used no connection. While nobody
        waits, a clean slot goes straight back on the offer list (see `scheduler.Offer`).
        """
        cell = self._cell
        # While the pool backs off connecting, a working connection must reach the core: it is
        # the news that the database answers again (else callers keep getting DatabaseUnavailable).
        if (cell is not None and not discarded and not self._inbox.closed and cell.state.depth == 0
                and not (conn is not None and cell.state.pool.backoff_s)):
            if conn is not None:
                self._offers.append((token, Admitted(waited_s=0.0, conn=conn)))
                return True
            if lease is not None and not lease.unavailable_s:  # untouched: offered again as it came
                self._offers.append((token, lease))
                return True
        if lease is not None and conn is None and not discarded:
            conn, discarded = lease.conn, lease.connect  # unused: the lease goes back as it came
        return tell_quietly(self._inbox, Release(reply=token, conn=conn, discarded=discarded,
                                                 connect_failed=connect_failed,
                                                 connect_limited=connect_limited))

    def statistics(self) -> QueueSnapshot:
        """The queue (and pool) as last published, offered slots counted free: no round trip."""
        return queue_snapshot(self._cell.state, trio.current_time(), idle_offers=len(self._offers))

    async def clear(self) -> None:
        """Answer every waiter with QueueCleared (holders keep their slots)."""
        await ask(self._inbox, lambda r: Clear(reply=r))

    async def snapshot(self) -> QueueSnapshot:
        return adjust(await ask(self._inbox, lambda r: GetSnapshot(reply=r)), len(self._offers))


def observe_call(metrics: Mailbox, tier: str, exc: BaseException | None, t0: float,
                 now: float, waited_s: float | None) -> None:
    """Tell the metrics actor how a guarded call ended (lazily: it reads its mail in batches)."""
    metrics.tell_batched(("call", None, tier, outcome_of(exc), None, now - t0, waited_s))


class _Guard:
    """`async with mon.guard(...)`: breaker permit + admission slot around a block."""

    __slots__ = ("_breaker", "_queue", "_metrics", "_priority", "_timeout_s", "_trial", "_epoch",
                 "_token", "_t0", "_waited", "_lease")

    def __init__(self, breaker: BreakerHandle, queue: QueueHandle, metrics: Mailbox, priority: int,
                 timeout_s: float | None) -> None:
        self._breaker, self._queue, self._metrics = breaker, queue, metrics
        self._priority, self._timeout_s = check_priority(priority), check_timeout(timeout_s)

    async def __aenter__(self) -> _Guard:
        # A checkpoint before anything is taken: a cancelled caller takes no slot and runs
        # nothing, and a loop of guarded calls that never await still lets other tasks run.
        await trio.lowlevel.checkpoint()
        t0 = trio.current_time()
        breaker = self._breaker
        v = breaker._view.value
        if v.phase == "closed" or not v.enabled:  # the fast path, inline: no round trip
            self._trial, self._epoch = False, v.epoch
        else:
            try:
                self._trial, self._epoch = await breaker.permit()
            except BaseException as exc:
                observe_call(self._metrics, breaker.tier, exc, t0, trio.current_time(), None)
                raise
        try:
            self._token, admitted = await self._queue.admit(self._priority, self._timeout_s, now=t0)
        except BaseException as exc:
            if self._trial:
                await self._breaker.report("abandoned", True, self._epoch, 0.0)
            observe_call(self._metrics, self._breaker.tier, exc, t0, trio.current_time(), None)
            raise
        self._t0, self._waited, self._lease = t0, admitted.waited_s, admitted
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        now = trio.current_time()
        self._queue.release(self._token, lease=self._lease)
        observe_call(self._metrics, self._breaker.tier, exc, self._t0, now, self._waited)
        await self._breaker.report(breaker_verdict(exc, self._breaker.ignore), self._trial, self._epoch,
                                   now - self._t0 - self._waited)


def check_timeout(timeout_s: object) -> float | None:
    """None, or a number of seconds >= 0 (inf: no bound)."""
    if timeout_s is None:
        return None
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float):
        raise InvalidArgumentType(f"timeout_s must be a number of seconds or None, got {timeout_s!r}")
    if math.isnan(timeout_s) or timeout_s < 0:
        raise InvalidArgument(f"timeout_s must be >= 0, got {timeout_s!r}")
    return timeout_s
