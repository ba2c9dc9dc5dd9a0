"""Wiring: the one place channels are made and actors started, and the caller's handle.

`run_monitoring(config, *, task_status)` starts every actor under its
supervisor, in dependency order, in the caller's nursery, and hands back a
`Monitoring` handle through `task_status.started`. `open_monitoring(config)` is
the same as an async context manager. Leaving it answers everything pending
with `ShuttingDown` and leaves no task behind.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio
from loguru import logger
from msgspec.structs import replace

from actors import breaker as breaker_mod
from actors import limiter as limiter_mod
from actors import scheduler as scheduler_mod
from actors.actor import Cell, supervise
from actors.errors import (
    CircuitOpen,
    ConfigError,
    RateLimited,
    ShuttingDown,
    UnknownTier,
    classify,
)
from actors.mailbox import Mailbox, Published, Reply, ask, tell_quietly
from actors.database import Database
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
    Release,
    Reset,
    ResetKeys,
    Successes,
    Withdraw,
)
from messages.config import Config, Priority
from messages.events import ActorRestarted, BreakerTransition
from messages.snapshots import ActorStatus, BreakerSnapshot, QueueSnapshot, SystemSnapshot

T = TypeVar("T")
INBOX_SIZE = 1024

log = logger.bind(actor="system")


def _resolve(dotted: tuple[str, ...]) -> tuple[type[BaseException], ...]:
    out = []
    for name in dotted:
        module, _, attr = name.rpartition(".")
        try:
            out.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):
            raise ConfigError("ignore_exceptions", name, "not an importable exception class") from None
    return tuple(out)


class EventBus:
    """Fan-out of events to bounded subscriber channels; a slow one loses events, counted."""

    def __init__(self) -> None:
        self._subs: list[trio.MemorySendChannel] = []
        self.dropped = 0

    def emit(self, event: Any) -> None:
        if type(event) is BreakerTransition:
            logger.bind(actor="breaker", tier=event.tier).info(
                "Circuit breaker {tier} {to_state} (was {from_state}): {reason}",
                tier=event.tier, to_state=event.to_state.upper(),
                from_state=event.from_state.upper(), reason=event.reason)
        for ch in list(self._subs):
            try:
                ch.send_nowait(event)
            except trio.WouldBlock:
                self.dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subs.remove(ch)

    @asynccontextmanager
    async def subscribe(self, buffer: int = 256) -> AsyncIterator[trio.MemoryReceiveChannel]:
        send, recv = trio.open_memory_channel(buffer)
        self._subs.append(send)
        try:
            async with recv:
                yield recv
        finally:
            if send in self._subs:
                self._subs.remove(send)
            send.close()

    def close(self) -> None:
        for ch in self._subs:
            ch.close()
        self._subs.clear()


class BreakerHandle:
    """One tier's breaker as a caller sees it."""

    def __init__(self, tier: str, inbox: Mailbox, view: Published,
                 ignore: tuple[type[BaseException], ...]) -> None:
        self.tier, self._inbox, self._view, self.ignore = tier, inbox, view, ignore

    @property
    def state(self) -> str:
        """The state as last published (no round trip)."""
        return self._view.value.state

    async def wait_state(self, state: str) -> None:
        await self._view.wait_value(lambda v: v.state == state)

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
        if v.state == "closed" or not v.enabled:
            return False, v.epoch
        p = await ask(self._inbox, lambda r: Permit(reply=r))
        return p.trial, p.epoch

    def report(self, result: str, trial: bool, epoch: int, duration_s: float) -> None:
        """Tell the breaker how a call ended (nothing to tell once the system is gone)."""
        if result == "success" and not trial and self._view.value.state == "closed":
            with contextlib.suppress(ShuttingDown):
                self._inbox.tally()
            return
        tell_quietly(self._inbox, Outcome(result=result, epoch=epoch, trial=trial,
                                          duration_s=duration_s))


class QueueHandle:
    """The admission queue as a caller sees it."""

    def __init__(self, inbox: Mailbox, timeout_s: float) -> None:
        self._inbox, self.timeout_s = inbox, timeout_s

    async def admit(self, priority: int, timeout_s: float | None = None,
                    conn: bool = False) -> tuple[Reply, Admitted]:
        """Wait for a slot (and a pooled connection if `conn`): (token for `release`, lease).

        Raises QueueFull, QueueTimeout (after `timeout_s`, default the queue's request
        timeout), QueueCleared or ShuttingDown.
        """
        now = trio.current_time()
        reply = Reply()
        wait_s = self.timeout_s if timeout_s is None else timeout_s
        await self._inbox.put_ask(Admit(reply=reply, priority=priority, at=now,
                                        deadline=now + wait_s, conn=conn))
        try:
            admitted = await reply.wait()
        except BaseException:
            if reply.abandoned:  # cancelled while waiting: leave the queue
                tell_quietly(self._inbox, Withdraw(reply=reply, reason="cancelled"))
            raise
        return reply, admitted

    def release(self, token: Reply, conn: Any = None, discarded: bool = False,
                connect_failed: bool = False) -> bool:
        """Give the slot back (with the pooled connection, if any). False once shut down."""
        return tell_quietly(self._inbox, Release(reply=token, conn=conn, discarded=discarded,
                                                 connect_failed=connect_failed))

    async def clear(self) -> None:
        """Answer every waiter with QueueCleared (holders keep their slots)."""
        await ask(self._inbox, lambda r: Clear(reply=r))

    async def snapshot(self) -> QueueSnapshot:
        return await ask(self._inbox, lambda r: GetSnapshot(reply=r))


class _Guard:
    """`async with mon.guard(...)`: breaker permit + admission slot around a block."""

    __slots__ = ("_breaker", "_queue", "_priority", "_timeout_s", "_trial", "_epoch", "_token", "_t0")

    def __init__(self, breaker: BreakerHandle, queue: QueueHandle, priority: int,
                 timeout_s: float | None) -> None:
        self._breaker, self._queue, self._priority, self._timeout_s = breaker, queue, priority, timeout_s

    async def __aenter__(self) -> _Guard:
        self._trial, self._epoch = await self._breaker.permit()
        try:
            self._token, _ = await self._queue.admit(self._priority, self._timeout_s)
        except BaseException:
            if self._trial:
                self._breaker.report("abandoned", True, self._epoch, 0.0)
            raise
        self._t0 = trio.current_time()
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        duration = trio.current_time() - self._t0
        self._queue.release(self._token)
        self._breaker.report(classify(exc, self._breaker.ignore), self._trial, self._epoch, duration)


class Monitoring:
    """The handle a host gets from `open_monitoring` / `run_monitoring`."""

    def __init__(self, config: Config, breakers: dict[str, BreakerHandle], queue: QueueHandle,
                 limiter_inbox: Mailbox, cells: dict[str, Cell], bus: EventBus) -> None:
        self.config, self.breakers, self.queue = config, breakers, queue
        self._limiter = limiter_inbox
        self._cells, self._bus = cells, bus
        self.closed = False
        self.db: Database  # set once the database (if any) is wired

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
        return _Guard(self._breaker(tier), self.queue, priority, timeout_s)

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any, priority: int = Priority.NORMAL,
                  tier: str = "database", fallback: Callable[[], Any] | None = None,
                  timeout_s: float | None = None) -> T:
        """Run `await fn(*args)` under the tier's breaker and an admission slot.

        When the breaker refuses and `fallback` is given, returns `fallback()` (awaited if it
        returns an awaitable) instead of raising `CircuitOpen`.
        """
        guard = _Guard(self._breaker(tier), self.queue, priority, timeout_s)
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
        return await ask(self._limiter, lambda r: Check(reply=r, policy=policy, key=str(key), cost=cost))

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
        return {name: ActorStatus(name=name, restarts=c.restarts, last_restart_at=c.last_restart_at,
                                  running=c.running)
                for name, c in self._cells.items()}

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


def _restart_counted(cells: dict[str, Cell], bus: EventBus) -> Callable[[Cell, BaseException], None]:
    def on_restart(cell: Cell, exc: BaseException) -> None:
        bus.emit(ActorRestarted(actor=cell.name, restarts=cell.restarts,
                                error=type(exc).__name__, at=trio.current_time()))
    return on_restart


async def run_monitoring(config: Config | None = None, *,
                         task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
    """Start the whole system in the caller's nursery; `task_status.started(Monitoring)`."""
    config = config or Config()
    now = trio.current_time()
    bus = EventBus()
    cells: dict[str, Cell] = {}
    on_restart = _restart_counted(cells, bus)
    try:
        async with trio.open_nursery() as nursery:
            # limiter, then breakers, then the queue: callers meet them in that order.
            lim_inbox = Mailbox("limiter", INBOX_SIZE)
            cells["limiter"] = Cell(limiter_mod.LimiterCore(), limiter_mod.LimiterState.initial(config, now),
                                    lim_inbox, bus.emit)
            await nursery.start(supervise, cells["limiter"], config.supervisor, on_restart)

            breakers: dict[str, BreakerHandle] = {}
            for tier, tcfg in config.tiers.items():
                inbox = Mailbox(f"breaker.{tier}", INBOX_SIZE, tally_msg=_successes)
                state = breaker_mod.BreakerState.initial(tier, tcfg, now=now,
                                                         enabled=config.circuit_breaker_enabled)
                published = Published(breaker_mod.view(state))
                cell = Cell(breaker_mod.BreakerCore(tier), state, inbox, bus.emit,
                            publish=_publisher(published))
                cells[cell.name] = cell
                breakers[tier] = BreakerHandle(tier, inbox, published, _resolve(tcfg.ignore_exceptions))
                await nursery.start(supervise, cell, config.supervisor, on_restart)

            q_inbox = Mailbox("scheduler", INBOX_SIZE)
            cells["scheduler"] = Cell(scheduler_mod.SchedulerCore(),
                                      scheduler_mod.SchedulerState.initial(config.queue), q_inbox, bus.emit)
            await nursery.start(supervise, cells["scheduler"], config.supervisor, on_restart)

            mon = Monitoring(config, breakers, QueueHandle(q_inbox, config.queue.request_timeout_s),
                             lim_inbox, cells, bus)
            dsn = await _database_url(config, nursery)
            monitor = await _start_monitor(config, dsn, bus, nursery)
            mon.db = Database(mon, config, dsn, monitor)
            try:
                task_status.started(mon)
                await trio.sleep_forever()
            finally:
                mon.closed = True
                bus.close()
    except BaseExceptionGroup as group:
        single = _single(group)
        if single is not None:  # an actor past its restart intensity: say so plainly
            raise single from None
        raise
    finally:
        if "scheduler" in cells:  # every actor has stopped: the pool's idle connections close
            _close_pool(cells["scheduler"].state)
        log.debug("monitoring stopped")


def _single(group: BaseExceptionGroup) -> BaseException | None:
    """The one real error inside nested nursery groups, if there is exactly one."""
    leaves = [e for e in _leaves(group) if not isinstance(e, trio.Cancelled)]
    return leaves[0] if len(leaves) == 1 else None


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


async def _database_url(config: Config, nursery: trio.Nursery) -> str | None:
    """DATABASE_URL, else an embedded PostgreSQL when configured, else None (no database)."""
    if config.database_url:
        return config.database_url
    if not config.database.embedded:
        return None
    return await nursery.start(_serve_embedded, config.database.embedded_data_dir)


async def _serve_embedded(data_dir: str | None, *,
                          task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
    from actors.embedded import open_embedded

    async with open_embedded(data_dir) as embedded:
        task_status.started(embedded.dsn)
        await trio.sleep_forever()


async def _start_monitor(config: Config, dsn: str | None, bus: EventBus, nursery: trio.Nursery) -> Any:
    if dsn is None:
        return None
    from actors.monitor import DatabaseMonitor

    monitor = DatabaseMonitor(config, dsn, bus.emit, probe_timeout_s=config.database.probe_timeout_s)
    await nursery.start(monitor.run)
    return monitor


def _close_pool(state: scheduler_mod.SchedulerState) -> None:
    """Idle pooled connections close with the system; held ones close when their holder is done."""
    for conn in state.pool.idle:
        conn.close_now()


def _successes(n: int) -> Successes:
    return Successes(n=n)


def _publisher(published: Published) -> Callable[[Any, float], None]:
    def publish(state: breaker_mod.BreakerState, now: float) -> None:
        v = published.value
        if v.epoch != state.epoch or v.enabled != state.enabled:
            published.set(breaker_mod.view(state))
    return publish


@asynccontextmanager
async def open_monitoring(config: Config | None = None) -> AsyncIterator[Monitoring]:
    """`async with open_monitoring(Config.from_env()) as mon:` — one nursery, one handle."""
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            mon = await nursery.start(run_monitoring, config)
            try:
                yield mon
            except BaseException as exc:  # re-raised below, outside the nursery's group
                body_error = exc
            finally:
                nursery.cancel_scope.cancel("open_monitoring exited")
    except BaseExceptionGroup as group:
        single = _single(group)
        if single is not None and (body_error is None or isinstance(body_error, trio.Cancelled)):
            raise single from None
        raise
    if body_error is not None:
        raise body_error
