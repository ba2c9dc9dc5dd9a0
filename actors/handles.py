"""What callers hold: the `Monitoring` handle and the per-actor handles behind it.

Handles only read published values and talk to actors through their mailboxes;
they own no state of their own beyond wiring.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import trio
from loguru import logger
from msgspec.structs import replace

from actors.actor import Cell
from actors.errors import (
    CircuitOpen,
    QueueCleared,
    QueueFull,
    QueueTimeout,
    RateLimited,
    ShuttingDown,
    TriageError,
    UnknownTier,
    classify,
)
from actors.mailbox import Mailbox, Published, Reply, ask, tell_quietly
from actors.ratelimit_core import RateDecision
from messages.commands import (
    Admit,
    Admitted,
    Check,
    Clear,
    Configure,
    ForceOpen,
    GetSnapshot,
    Outcome,
    Permit,
    Reclaim,
    Release,
    Reset,
    ResetKeys,
    Withdraw,
)
from messages.config import Config, Priority
from messages.events import BreakerTransition, MaintenanceChanged
from messages.health import SEVERITY_RANK, Alert, HealthReport
from messages.metrics import Count, GetMetrics
from messages.snapshots import ActorStatus, BreakerSnapshot, QueueSnapshot, SystemSnapshot

if TYPE_CHECKING:
    from actors.database import Database

T = TypeVar("T")

_OUTCOMES = {CircuitOpen: "circuit_open", QueueFull: "queue_full", QueueTimeout: "queue_timeout",
             QueueCleared: "queue_full", ShuttingDown: "shutting_down", RateLimited: "rate_limited"}


class FaultsDisabled(TriageError):
    def __init__(self) -> None:
        super().__init__("fault injection is off: set TRIAGE_FAULTS=1 (config faults.enabled)")


def outcome_name(exc: BaseException | None) -> str:
    """How a call ended, in the metrics' words."""
    if exc is None:
        return "ok"
    if not isinstance(exc, Exception):
        return "cancelled"
    return _OUTCOMES.get(type(exc), "error")


class Subscription:
    """One subscriber's bounded channel: `async for event in sub`; `sub.dropped` counts losses."""

    def __init__(self, buffer: int, accept: Callable[[Any], bool]) -> None:
        self._send, self._recv = trio.open_memory_channel(buffer)
        self.accept, self.dropped, self.delivered = accept, 0, 0

    def offer(self, event: Any) -> None:
        if not self.accept(event):
            return
        try:
            self._send.send_nowait(event)
            self.delivered += 1
        except trio.WouldBlock:
            self.dropped += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._recv.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def receive(self) -> Any:
        return await self._recv.receive()

    def receive_nowait(self) -> Any:
        return self._recv.receive_nowait()

    def close(self) -> None:
        self._send.close()


class EventBus:
    """Fan-out of events to bounded subscriptions: a slow subscriber loses events (counted),
    never stalls the actor that emitted them."""

    def __init__(self) -> None:
        self._subs: list[Subscription] = []
        self.taps: list[Callable[[Any], None]] = []   # synchronous observers (metrics counts)

    def emit(self, event: Any) -> None:
        if type(event) is BreakerTransition:
            logger.bind(actor="breaker", tier=event.tier).info(
                "Circuit breaker {tier} {to_state} (was {from_state}): {reason}",
                tier=event.tier, to_state=event.to_state.upper(),
                from_state=event.from_state.upper(), reason=event.reason)
        for tap in self.taps:
            tap(event)
        for sub in list(self._subs):
            sub.offer(event)

    @asynccontextmanager
    async def subscribe(self, buffer: int = 256,
                        accept: Callable[[Any], bool] = lambda _e: True) -> AsyncIterator[Subscription]:
        sub = Subscription(buffer, accept)
        self._subs.append(sub)
        try:
            yield sub
        finally:
            if sub in self._subs:
                self._subs.remove(sub)
            sub.close()

    def close(self) -> None:
        for sub in self._subs:
            sub.close()
        self._subs.clear()


class BreakerHandle:
    """One tier's breaker as a caller sees it."""

    def __init__(self, tier: str, inbox: Mailbox, view: Published,
                 ignore: tuple[type[BaseException], ...]) -> None:
        self.tier, self._inbox, self._view, self.ignore = tier, inbox, view, ignore

    @property
    def state(self) -> str:
        """The state as last published (no round trip)."""
        return self._view.value.phase

    async def wait_state(self, state: str) -> None:
        await self._view.wait_value(lambda v: v.phase == state)

    async def reset(self) -> None:
        await ask(self._inbox, lambda r: Reset(reply=r))

    async def force_open(self) -> None:
        await ask(self._inbox, lambda r: ForceOpen(reply=r))

    async def configure(self, **fields: Any) -> None:
        """failure_threshold, recovery_timeout_s, monitoring_period_s, half_open_max_calls, success_threshold."""
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

    def report(self, result: str, trial: bool, epoch: int, duration_s: float) -> None:
        """Tell the breaker how a call ended (nothing to tell once the system is gone)."""
        if result == "success" and not trial and self._view.value.phase == "closed":
            with contextlib.suppress(ShuttingDown):
                self._inbox.tally()
            return
        tell_quietly(self._inbox, Outcome(result=result, epoch=epoch, trial=trial,
                                          duration_s=duration_s))


class QueueHandle:
    """The admission queue as a caller sees it."""

    def __init__(self, inbox: Mailbox, timeout_s: float, cell: Cell | None = None) -> None:
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
            token, lease = offers.popleft()
            if not (conn and lease.unavailable_s):
                self._inbox.tally()
                return token, lease
            tell_quietly(self._inbox, Reclaim(token=token, lease=lease))  # stale back-off: ask
        if now is None:
            now = trio.current_time()
        reply = Reply()
        wait_s = self.timeout_s if timeout_s is None else timeout_s
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
                connect_failed: bool = False, lease: Admitted | None = None) -> bool:
        """Give the slot back (with the pooled connection, if any). False once shut down.

        `lease`: what the holder got, returned as is when it used no connection. While nobody
        waits, a clean slot goes straight back on the offer list (see `scheduler.Offer`).
        """
        cell = self._cell
        if cell is not None and not discarded and not self._inbox.closed and cell.state.depth == 0:
            if conn is not None:
                self._offers.append((token, Admitted(waited_s=0.0, conn=conn)))
                return True
            if lease is not None and not lease.unavailable_s:  # untouched: offered again as it came
                self._offers.append((token, lease))
                return True
        if lease is not None and conn is None and not discarded:
            conn, discarded = lease.conn, lease.connect  # unused: the lease goes back as it came
        return tell_quietly(self._inbox, Release(reply=token, conn=conn, discarded=discarded,
                                                 connect_failed=connect_failed))

    async def clear(self) -> None:
        """Answer every waiter with QueueCleared (holders keep their slots)."""
        await ask(self._inbox, lambda r: Clear(reply=r))

    async def snapshot(self) -> QueueSnapshot:
        from actors.scheduler import adjust

        return adjust(await ask(self._inbox, lambda r: GetSnapshot(reply=r)), len(self._offers))


def observe_call(metrics: Mailbox, tier: str, exc: BaseException | None, t0: float,
                 now: float, waited_s: float | None) -> None:
    """Tell the metrics actor how a guarded call ended (lazily: it reads its mail in batches)."""
    metrics.add_to_batch(("call", None, tier, outcome_name(exc), None, now - t0, waited_s))


class _Guard:
    """`async with mon.guard(...)`: breaker permit + admission slot around a block."""

    __slots__ = ("_breaker", "_queue", "_metrics", "_priority", "_timeout_s", "_trial", "_epoch",
                 "_token", "_t0", "_waited", "_lease")

    def __init__(self, breaker: BreakerHandle, queue: QueueHandle, metrics: Mailbox, priority: int,
                 timeout_s: float | None) -> None:
        self._breaker, self._queue, self._metrics = breaker, queue, metrics
        self._priority, self._timeout_s = priority, timeout_s

    async def __aenter__(self) -> _Guard:
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
                self._breaker.report("abandoned", True, self._epoch, 0.0)
            observe_call(self._metrics, self._breaker.tier, exc, t0, trio.current_time(), None)
            raise
        self._t0, self._waited, self._lease = t0, admitted.waited_s, admitted
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        now = trio.current_time()
        self._queue.release(self._token, lease=self._lease)
        self._breaker.report(classify(exc, self._breaker.ignore), self._trial, self._epoch,
                             now - self._t0 - self._waited)
        observe_call(self._metrics, self._breaker.tier, exc, self._t0, now, self._waited)


class Monitoring:
    """The handle a host gets from `open_monitoring` / `run_monitoring`."""

    def __init__(self, config: Config, breakers: dict[str, BreakerHandle], queue: QueueHandle,
                 limiter_inbox: Mailbox, metrics_inbox: Mailbox, cells: dict[str, Cell],
                 bus: EventBus) -> None:
        self.config, self.breakers, self.queue = config, breakers, queue
        self._limiter, self._metrics = limiter_inbox, metrics_inbox
        self._cells, self._bus = cells, bus
        self.closed = False
        self.in_maintenance = False
        self.db: Database            # set by the wiring (raises DatabaseNotConfigured without one)
        self.health_report: Published  # the health actor's latest HealthReport
        self.metrics_snapshot: Published  # the metrics actor's latest MetricsSnapshot (or None)
        self._extra_actors: Callable[[], dict[str, ActorStatus]] = dict
        self.injector: Any = None        # a FaultInjector when config.faults.enabled

    def _breaker(self, tier: str) -> BreakerHandle:
        if self.closed:
            raise ShuttingDown()
        try:
            return self.breakers[tier]
        except KeyError:
            raise UnknownTier(tier, tuple(self.breakers)) from None

    def guard(self, *, priority: int = Priority.NORMAL, tier: str = "database",
              timeout_s: float | None = None) -> _Guard:
        """Breaker + admission slot for a block; an exception leaving the block is the outcome.

        `timeout_s` bounds the wait for a slot (default: the queue's request timeout).
        """
        return _Guard(self._breaker(tier), self.queue, self._metrics, priority, timeout_s)

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any, priority: int = Priority.NORMAL,
                  tier: str = "database", fallback: Callable[[], Any] | None = None,
                  timeout_s: float | None = None) -> T:
        """Run `await fn(*args)` under the tier's breaker and an admission slot.

        When the breaker refuses and `fallback` is given, returns `fallback()` (awaited if it
        returns an awaitable) instead of raising `CircuitOpen`.
        """
        guard = _Guard(self._breaker(tier), self.queue, self._metrics, priority, timeout_s)
        try:
            await guard.__aenter__()
        except CircuitOpen:
            if fallback is None:
                raise
            value = fallback()
            return await value if inspect.isawaitable(value) else value
        try:
            result = await fn(*args)
        except BaseException as exc:
            await guard.__aexit__(type(exc), exc, None)
            raise
        await guard.__aexit__(None, None, None)
        return result

    async def check_rate(self, policy: str, key: str, cost: int = 1) -> RateDecision:
        """One decision for (policy, key); consumes `cost` when allowed."""
        if self.closed:
            raise ShuttingDown()
        decision = await ask(self._limiter, lambda r: Check(reply=r, policy=policy, key=str(key), cost=cost))
        if not decision.allowed:
            self._metrics.put_lazy(Count(what="rate_limit_violation", label=policy,
                                         at=trio.current_time()))
        return decision

    async def enforce_rate(self, policy: str, key: str, cost: int = 1) -> RateDecision:
        """`check_rate`, raising `RateLimited` (with the decision) when refused."""
        decision = await self.check_rate(policy, key, cost)
        if not decision.allowed:
            raise RateLimited(policy, str(key), decision.retry_after_s, decision)
        return decision

    async def reset_rate(self, policy: str | None = None, key: str | None = None) -> None:
        await ask(self._limiter, lambda r: ResetKeys(reply=r, policy=policy, key=key))

    def events(self, buffer: int = 256):
        """`async with mon.events() as ch: async for event in ch` — transitions and restarts."""
        return self._bus.subscribe(buffer)

    def actors(self) -> dict[str, ActorStatus]:
        return {**{name: ActorStatus(name=name, restarts=c.restarts, last_restart_at=c.last_restart_at,
                                     running=c.running)
                   for name, c in self._cells.items()}, **self._extra_actors()}

    # --- health, metrics, alerts ------------------------------------------------------------

    async def health(self, detailed: bool = False) -> dict[str, Any]:
        """The spec's /api/health body: basic, or with `detailed=True` the full report.

        Answers from the health actor's latest report: never waits on the queue or the database.
        """
        report: HealthReport = self.health_report.value
        await trio.lowlevel.checkpoint()
        return report.detailed() if detailed else report.basic()

    def observe_request(self, route: str, status: int, duration_s: float, outcome: str = "ok",
                        tier: str | None = None) -> None:
        """Record one finished HTTP request (the HTTP edge calls this)."""
        self._metrics.add_to_batch(("http", route, tier, outcome, status, duration_s, None))

    async def metrics(self, routes: bool = True) -> Any:
        """A fresh MetricsSnapshot (percentiles, rates); `routes=False` leaves per-route series out."""
        if self.closed:
            raise ShuttingDown()
        return await ask(self._metrics, lambda r: GetMetrics(reply=r, routes=routes))

    def subscribe(self, min_severity: str = "info", buffer: int = 64):
        """`async with mon.subscribe(min_severity="warning") as alerts: async for alert in alerts`.

        A slow subscriber loses alerts (counted in `alerts.dropped`), never stalls the system.
        """
        if min_severity not in SEVERITY_RANK:
            raise ValueError(f"min_severity must be one of {', '.join(SEVERITY_RANK)}")
        floor = SEVERITY_RANK[min_severity]
        return self._bus.subscribe(buffer, lambda e: type(e) is Alert and SEVERITY_RANK[e.severity] >= floor)

    # --- fault injection (config.faults.enabled) ---------------------------------------------

    def _faults(self) -> Any:
        if self.injector is None:
            raise FaultsDisabled()
        return self.injector

    async def inject(self, fault: Any) -> None:
        """Apply a fault (`actors.faults`: Down(), Latency(latency_ms=…), TerminateBackends()…)."""
        await self._faults().inject(fault)

    async def remove_fault(self, kind: str) -> None:
        self._faults().remove(kind)
        await trio.lowlevel.checkpoint()

    async def clear_faults(self) -> None:
        self._faults().clear()
        await trio.lowlevel.checkpoint()

    async def maintenance(self, on: bool) -> None:
        """Maintenance mode: health reports degraded; the HTTP edge answers 503 outside health."""
        self.in_maintenance = bool(on)
        logger.bind(actor="system").warning("Maintenance mode {state}", state="on" if on else "off")
        self._bus.emit(MaintenanceChanged(on=bool(on)))
        await trio.lowlevel.checkpoint()

    async def snapshot(self) -> SystemSnapshot:
        """Every actor's state, each asked for its own."""
        if self.closed:
            raise ShuttingDown()
        actors = self.actors()
        breakers = {tier: replace(await b.snapshot(), restarts=actors[f"breaker.{tier}"].restarts)
                    for tier, b in self.breakers.items()}
        queue = replace(await self.queue.snapshot(), restarts=actors["scheduler"].restarts)
        limiter = replace(await ask(self._limiter, lambda r: GetSnapshot(reply=r)),
                          restarts=actors["limiter"].restarts)
        return SystemSnapshot(breakers=breakers, queue=queue, limiter=limiter, actors=actors)


