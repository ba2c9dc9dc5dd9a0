"""`Monitoring`: the one handle a host gets from `open_monitoring` / `run_monitoring`."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import trio
from loguru import logger
from msgspec.structs import replace

from actors.limiter import LimiterHandle
from actors.limiter_core import RateDecision, check_cost
from actors.runtime.actor import SupervisedActor
from actors.runtime.mailbox import AsyncValue, Mailbox, ask
from messages.commands import (
    Check,
    GetSnapshot,
    PeekRate,
    ResetKeys,
)
from messages.config import Config, Priority
from messages.errors import (
    CircuitOpen,
    InvalidArgumentType,
    RateLimited,
    ShuttingDown,
)
from messages.events import MaintenanceChanged
from messages.health import SEVERITY_RANK, Alert, HealthReport
from messages.metrics import Count, GetMetrics
from messages.snapshots import ActorStatus, SystemSnapshot, SystemStatistics

if TYPE_CHECKING:
    from actors.pg.database import Database

from actors.guard import BreakerHandle, FaultsDisabled, Guard, Guards, QueueHandle
from actors.runtime.bus import EventBus

T = TypeVar("T")


class Monitoring:
    """The handle a host gets from `open_monitoring` / `run_monitoring`."""

    def __init__(self, config: Config, breakers: dict[str, BreakerHandle], queue: QueueHandle,
                 limiter: LimiterHandle, metrics_inbox: Mailbox, cells: dict[str, SupervisedActor],
                 bus: EventBus) -> None:
        self.config, self.breakers, self.queue, self.limiter = config, breakers, queue, limiter
        self._limiter, self._metrics = limiter.inbox, metrics_inbox
        self._lent = limiter.lent
        self._cells, self._bus = cells, bus
        self.closed = False
        # The one maker of guards: mon.run, mon.guard and mon.db (see actors.guard.Guard).
        self.guards = Guards(breakers, queue, metrics_inbox, lambda: self.closed)
        self.in_maintenance = False
        self.db: Database            # set by the wiring (raises DatabaseNotConfigured without one)
        self.health_report: AsyncValue  # the health actor's latest HealthReport
        self.metrics_snapshot: AsyncValue  # the metrics actor's latest MetricsSnapshot (or None)
        self.injector: Any = None        # a FaultInjector when config.faults.enabled
        self.sinks: Any = None           # actors.sinks.Sinks, set by start_sinks
        self.fleet_handle: Any = None    # actors.fleet.Fleet when [fleet] names a Redis

    def stop_accepting(self) -> None:
        """From now on every guarded call (`mon.run`, `mon.guard`, `mon.db`) is refused with
        `ShuttingDown`: the first step of the system's own shutdown. Idempotent."""
        self.closed = True
        self.db.stop_offering()  # the offered path too: it makes no guard

    def guard(self, *, priority: int = Priority.NORMAL, tier: str = "database",
              timeout_s: float | None = None) -> Guard:
        """Breaker + admission slot for a block; an exception leaving the block is the outcome.

        `timeout_s` bounds the wait for a slot (default: the queue's request timeout). A bad
        `priority` or `timeout_s` raises TypeError / ValueError here. Entering is a checkpoint;
        a failure leaving the block has been applied by the breaker when it propagates.
        """
        return self.guards(tier, priority, timeout_s)

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any, priority: int = Priority.NORMAL,
                  tier: str = "database", fallback: Callable[[], Any] | None = None,
                  timeout_s: float | None = None) -> T:
        """Run `await fn(*args)` under the tier's breaker and an admission slot.

        When the breaker refuses and `fallback` is given, returns `fallback()` (awaited if it
        returns an awaitable) instead of raising `CircuitOpen`.
        """
        guard = self.guards(tier, priority, timeout_s)
        try:
            await guard.enter()
        except CircuitOpen:
            if fallback is None:
                raise
            value = fallback()
            return await value if inspect.isawaitable(value) else value
        try:
            result = await fn(*args)
        except BaseException as exc:
            await guard.exit(exc)
            raise
        await guard.exit(None)
        return result

    async def check_rate(self, policy: str, key: str, cost: int = 1) -> RateDecision:
        """One decision for (policy, key); consumes `cost` when allowed.

        `cost` is an int >= 1 (else TypeError / ValueError). A cost above the policy's limit
        can never be allowed: a refusal with `retry_after_s=inf`, `reason="cost_exceeds_limit"`.
        """
        key = self._rate_args(policy, key, cost)
        # The checkpoint first (cancelled: nothing spent); then the fleet's cached refusal (the
        # local quota is kept), then a key the limiter has lent is decided here, with no await
        # between look-up and decision; any other is asked (see "Lending" in actors.limiter).
        # The fleet's limit comes after a local allow.
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        fleet = self.fleet_handle
        decision = fleet.gate.refusal(policy, key) if fleet is not None else None
        if decision is None:
            decision = self._lent.check(policy, key, now, cost)
            if decision is None:
                decision = await ask(self._limiter, lambda r: Check(reply=r, policy=policy, key=key, cost=cost))
            if decision.allowed and fleet is not None:
                decision = await fleet.gate.admit(decision, key, cost)
                now = trio.current_time()
        if not decision.allowed:
            self._metrics.tell_lazy(Count(what="rate_limit_violation", label=policy, at=now))
        return decision

    def check_rate_nowait(self, policy: str, key: str, cost: int = 1) -> RateDecision:
        """`check_rate` decided in this task without waiting, and not a checkpoint (trio's
        ``*_nowait`` convention): for a key the limiter has lent (or an exempt one) when no
        `[fleet]` is configured. Otherwise raises `trio.WouldBlock`, having spent nothing:
        then `await check_rate(...)`. For a caller that checkpoints anyway, such as an HTTP
        request on its way to a handler (`actors.http.ratelimit`)."""
        key = self._rate_args(policy, key, cost)
        if self.fleet_handle is not None:
            raise trio.WouldBlock
        now = trio.current_time()
        decision = self._lent.check(policy, key, now, cost)
        if decision is None:
            raise trio.WouldBlock
        if not decision.allowed:
            self._metrics.tell_lazy(Count(what="rate_limit_violation", label=policy, at=now))
        return decision

    def _rate_args(self, policy: str, key: str, cost: int) -> str:
        """Checks `check_rate`'s arguments; the key as a str."""
        if self.closed:
            raise ShuttingDown()
        if type(policy) is not str and not isinstance(policy, str):
            raise InvalidArgumentType(f"policy must be a str, got {policy!r}")
        if cost != 1 or type(cost) is not int:
            check_cost(cost)
        return key if type(key) is str else str(key)

    async def peek_rate(self, policy: str, key: str) -> RateDecision:
        """The decision a cost-1 `check_rate` would get now, spending no quota (like `limits`'
        `test()`): nothing is recorded, no violation is counted, the key's LRU place stays."""
        if self.closed:
            raise ShuttingDown()
        if not isinstance(policy, str):
            raise InvalidArgumentType(f"policy must be a str, got {policy!r}")
        key = str(key)
        await trio.lowlevel.checkpoint()
        decision = self._lent.peek(policy, key, trio.current_time())
        if decision is None:
            return await ask(self._limiter, lambda r: PeekRate(reply=r, policy=policy, key=key))
        return decision

    async def enforce_rate(self, policy: str, key: str, cost: int = 1) -> RateDecision:
        """`check_rate`, raising `RateLimited` (with the decision) when refused."""
        decision = await self.check_rate(policy, key, cost)
        if not decision.allowed:
            raise RateLimited(policy, str(key), decision.retry_after_s, decision)
        return decision

    async def reset_rate(self, policy: str | None = None, key: str | None = None) -> None:
        """Forget quotas: all, one policy's, one key's (in every policy), or one (policy, key).
        With `[fleet]`, the fleet's shared counts in Redis too (`RedisUnavailable` when Redis
        can't be reached; this instance's counts are reset all the same)."""
        for name, value in (("policy", policy), ("key", key)):
            if value is not None and not isinstance(value, str):
                raise InvalidArgumentType(f"{name} must be a str or None, got {value!r}")
        await self._reset_here(policy, key)
        if self.fleet_handle is not None:  # and the fleet's: RedisUnavailable if it can't be had
            await self.fleet_handle.reset_rate(policy, key)

    async def _reset_here(self, policy: str | None, key: str | None) -> None:
        await ask(self._limiter, lambda r: ResetKeys(reply=r, policy=policy, key=key))

    async def fleet(self) -> dict[str, Any]:
        """The instances sharing this one's Redis (`[fleet]`), as `GET /api/fleet` shows them:
        each one's status, breaker states, queue depth, connections and when it was last seen,
        with the fleet mode per policy and Redis's state. Without `[fleet]`: ``enabled`` false."""
        if self.fleet_handle is None:
            await trio.lowlevel.checkpoint()
            return {"enabled": False, "instances": []}
        return await self.fleet_handle.view()

    def events(self, buffer: int = 256):
        """`async with mon.events() as ch: async for event in ch` — breaker transitions, actor
        restarts, maintenance and queue-limit changes, alerts."""
        return self._bus.subscribe(buffer)

    def actors(self) -> dict[str, ActorStatus]:
        """Every supervised actor (health too): restarts, last restart, whether it runs."""
        return {name: ActorStatus(name=name, restarts=c.restarts, last_restart_at=c.last_restart_at,
                                  running=c.running) for name, c in self._cells.items()}

    # --- health, metrics, alerts ------------------------------------------------------------

    async def health(self, detailed: bool = False) -> dict[str, Any]:
        """The spec's /api/health body: basic, or with `detailed=True` the full report.

        Answers from the health actor's latest report: never waits on the queue or the database.
        """
        report: HealthReport = self.health_report.value
        await trio.lowlevel.checkpoint()
        return report.detailed() if detailed else report.basic()

    def observe_request(self, route: str, status: int, duration_s: float, outcome: str = "ok",
                        tier: str | None = None, rated: bool = True, stale: bool = False) -> None:
        """Record one finished HTTP request (the HTTP edge calls this).

        `rated=False` leaves it out of the error rates (still a request: rate, latency);
        `stale=True` counts it as a fallback answer (`WindowStats.stale`)."""
        self._metrics.tell_batched(("http", route, tier, outcome, status, duration_s, None, rated, None, stale))

    async def metrics(self, routes: bool = True, totals: bool = False) -> Any:
        """A fresh MetricsSnapshot (percentiles, rates); `routes=False` leaves per-route series out,
        `totals=True` adds the counts since start (Prometheus' histograms and counters)."""
        if self.closed:
            raise ShuttingDown()
        return await ask(self._metrics, lambda r: GetMetrics(reply=r, routes=routes, totals=totals))

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

    def statistics(self) -> SystemStatistics:
        """Every handle's `statistics()` at once (trio's convention): the last published state of
        each actor as one frozen value, with no round trip and no checkpoint. For a fresh view,
        asked of each actor, `await mon.snapshot()`."""
        actors = self.actors()
        breakers = {tier: replace(b.statistics(), restarts=actors[f"breaker.{tier}"].restarts)
                    for tier, b in self.breakers.items()}
        return SystemStatistics(
            breakers=breakers, queue=replace(self.queue.statistics(), restarts=actors["scheduler"].restarts),
            limiter=replace(self.limiter.statistics(), restarts=actors["limiter"].restarts), actors=actors,
            metrics=self.metrics_snapshot.value, health=self.health_report.value)

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
