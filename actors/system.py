"""Wiring: the one place mailboxes are made and actors started.

`run_monitoring(config, *, task_status)` starts every actor under its
supervisor, in dependency order, in the caller's nursery, and hands back a
`Monitoring` handle through `task_status.started`:

    limiter -> breakers (one per tier) -> scheduler (admission + pool)
    -> metrics -> database (embedded server, monitor) -> alerts -> health -> sinks

`open_monitoring(config)` is the same as an async context manager. Leaving it
answers everything pending with `ShuttingDown`, closes pooled connections and
leaves no task behind.
"""

from __future__ import annotations

import importlib
import itertools
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import trio
from loguru import logger
from msgspec.structs import replace

from actors import alerts as alerts_mod
from actors import breaker as breaker_mod
from actors import limiter as limiter_mod
from actors import metrics as metrics_mod
from actors import scheduler as scheduler_mod
from actors.guard import BreakerHandle, QueueHandle
from actors.handle import Monitoring
from actors.health import METRICS_PERIOD_S, HealthActorState, HealthCore, Sources
from actors.monitor import DatabaseMonitor
from actors.pg.database import Database
from actors.pg.embedded import open_embedded
from actors.pg.pool import Offers
from actors.pg.pool_idle import run_reaper
from actors.pg.pool_probe import PoolProbe
from actors.runtime.actor import SupervisedActor, supervise
from actors.runtime.bus import EventBus
from actors.runtime.mailbox import AsyncValue, Mailbox, tell_quietly
from actors.sinks.webhook import start_sinks
from messages.commands import Replenish, Successes, Taken
from messages.config import Config
from messages.errors import ConfigError
from messages.events import ActorRestarted, BreakerTransition
from messages.health import Changed
from messages.metrics import Count, Observations

INBOX_SIZE = 1024
_CHANGED = Changed()
METRICS_INBOX_SIZE = 256   # also the batch that wakes it: one step records <= ~256 samples (~2 ms)

log = logger.bind(actor="system")

__all__ = ["FaultWiring", "Monitoring", "open_monitoring", "run_monitoring"]

# (dsn, config, nursery) -> (the DSN the pool and the monitor use, the injector `mon.inject` uses)
FaultWiring = Callable[[str, Config, trio.Nursery], Awaitable[tuple[str, Any]]]
FAULT_LAYER = "actors.faults"
FLEET_LAYER = "actors.fleet"  # loaded by name when [fleet] is set: it needs the `fleet` extra


async def _fault_layer(dsn: str, config: Config, nursery: trio.Nursery) -> tuple[str, Any]:
    """Fault injection sits above the kernel: it is loaded by name, only when it is switched on
    and the host did not hand one in, so the kernel never imports tooling."""
    return await importlib.import_module(FAULT_LAYER).wire_faults(dsn, config, nursery)


def _resolve(dotted: tuple[str, ...]) -> tuple[type[BaseException], ...]:
    out = []
    for name in dotted:
        module, _, attr = name.rpartition(".")
        try:
            out.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError, ValueError):
            raise ConfigError("ignore_exceptions", name, "not an importable exception class") from None
    return tuple(out)


class _Wiring:
    """What run_monitoring builds, kept together so each step is a short method."""

    def __init__(self, config: Config, nursery: trio.Nursery, faults: FaultWiring | None) -> None:
        self.config, self.nursery = config, nursery
        self.faults = faults or _fault_layer
        self.now = trio.current_time()
        self.bus = EventBus()
        self.cells: dict[str, SupervisedActor] = {}
        offset = time.time() - self.now
        self.wall: Callable[[float], float] = lambda now: now + offset
        self.injector: Any = None
        self.priority_dsn: dict[int, str] = {}   # priority -> DSN, where it is not the default
        self.offers: Offers | None = None

    def on_restart(self, cell: SupervisedActor, exc: BaseException) -> None:
        self.bus.emit(ActorRestarted(actor=cell.name, restarts=cell.restarts,
                                     error=type(exc).__name__, at=trio.current_time()))

    async def start(self, name: str, core: Any, state: Any, inbox: Mailbox,
                    publish: Callable[[Any, float], None] | None = None) -> SupervisedActor:
        cell = SupervisedActor(core, state, inbox, self.bus.emit, publish)
        self.cells[name] = cell
        await self.nursery.start(supervise, cell, self.config.supervisor, self.on_restart)
        return cell

    async def limiter(self) -> limiter_mod.LimiterHandle:
        inbox = Mailbox("limiter", INBOX_SIZE)
        cell = await self.start("limiter", limiter_mod.LimiterCore(),
                                limiter_mod.LimiterState.initial(self.config, self.now), inbox)
        return limiter_mod.LimiterHandle(inbox, cell)

    async def breakers(self) -> dict[str, BreakerHandle]:
        handles = {}
        for tier, tcfg in self.config.tiers.items():
            inbox = Mailbox(f"breaker.{tier}", INBOX_SIZE, count_msg=_successes)
            state = breaker_mod.BreakerState.initial(tier, tcfg, now=self.now,
                                                     enabled=self.config.circuit_breaker_enabled)
            published = AsyncValue(state)
            await self.start(f"breaker.{tier}", breaker_mod.BreakerCore(tier), state, inbox,
                             publish=_publish_state(published))
            handles[tier] = BreakerHandle(tier, inbox, published, _resolve(tcfg.ignore_exceptions))
        return handles

    async def scheduler(self) -> QueueHandle:
        inbox = Mailbox("scheduler", INBOX_SIZE, count_msg=_taken)
        state = replace(scheduler_mod.SchedulerState.initial(self.config.queue), offer=True)
        self.offers = Offers(inbox, state)  # the pool's offered slots, beside the scheduler
        cell = await self.start("scheduler", scheduler_mod.SchedulerCore(self.offers), state, inbox)
        inbox.put(Replenish())
        q = self.config.queue  # an idle pool shrinks to min_idle connections
        await self.nursery.start(run_reaper, self.offers, q.min_idle, q.max_idle_s)
        return QueueHandle(inbox, self.config.queue.request_timeout_s, self.offers, cell)

    async def metrics(self) -> tuple[Mailbox, AsyncValue]:
        inbox = Mailbox("metrics", METRICS_INBOX_SIZE, batch_msg=_observations)
        published = AsyncValue(None)
        state = metrics_mod.MetricsState.initial(now=self.now)
        await self.start("metrics", metrics_mod.MetricsCore(), state, inbox,
                         publish=_every(METRICS_PERIOD_S, lambda s, now: published.set(
                             metrics_mod.snapshot(s, now, routes=False))))
        self.bus.taps.append(_count_activations(inbox))
        return inbox, published

    async def database(self) -> tuple[str | None, Any]:
        dsn = self.config.database_url
        if not dsn and self.config.database.embedded:
            if self.config.environment == "production":  # its data would be lost on restart
                raise ConfigError("DATABASE_URL", None, "required when NODE_ENV=production (the "
                                  "embedded PostgreSQL is for development and tests)")
            dsn = await self.nursery.start(_serve_embedded, self.config.database.embedded_data_dir)
        if not dsn:
            return None, None
        routes = self.config.database.named_dsns()
        if self.config.faults.enabled:
            dsn, self.injector = await self.faults(dsn, self.config, self.nursery)
            proxied = getattr(self.injector, "proxied", None)
            if proxied is not None:  # other pool users of the same server meet the faults too
                routes = {p: proxied(d) for p, d in routes.items()}
        self.priority_dsn = {p: d for p, d in routes.items() if d != dsn}
        monitor = DatabaseMonitor(self.config, dsn, self.bus.emit,
                                  probe_timeout_s=self.config.database.probe_timeout_s)
        await self.nursery.start(monitor.run)
        return dsn, monitor

    async def alerts(self) -> tuple[Mailbox, AsyncValue]:
        inbox = Mailbox("alerts", INBOX_SIZE)
        published = AsyncValue(())
        state = alerts_mod.AlertState.initial(self.config.alerts, self.now, self.wall)

        def publish(s: alerts_mod.AlertState, now: float) -> None:
            if s.tracks != getattr(publish, "last", None):
                publish.last = s.tracks  # type: ignore[attr-defined]
                published.set(tuple(alerts_mod.active(s, now)))

        await self.start("alerts", alerts_mod.AlertsCore(), state, inbox, publish=publish)
        return inbox, published

    async def health(self, mon: Monitoring, monitor: Any, alerts_inbox: Mailbox,
                     alerts: AsyncValue, metrics: AsyncValue) -> AsyncValue:
        sources = Sources(  # every handle's statistics(): the last published values, no asks
            breakers=lambda: {t: b.statistics() for t, b in mon.breakers.items()},
            queue=mon.queue.statistics,
            database=(lambda: monitor.metrics.value) if monitor is not None else (lambda: None),
            metrics=lambda: metrics.value,
            limiter=mon.limiter.statistics,
            actors=mon.actors,
            maintenance=lambda: mon.in_maintenance,
            alerts=lambda: alerts.value)
        core = HealthCore(self.config, sources, alerts_inbox.put, self.wall, self.now)
        state = core.initial(self.now)
        published = AsyncValue(state.report)
        inbox = Mailbox("health", INBOX_SIZE)
        self.bus.taps.append(_changed(inbox))

        def publish(s: HealthActorState, now: float) -> None:
            if s.report is not published.value:
                published.set(s.report)

        await self.start("health", core, state, inbox, publish=publish)
        return published


def _changed(health: Mailbox) -> Callable[[Any], None]:
    """Every event may change health's inputs: tell it (it folds a burst into one evaluation)."""
    def tap(event: Any) -> None:
        tell_quietly(health, _CHANGED)
    return tap


def _publish_state(published: AsyncValue) -> Callable[[Any, float], None]:
    """Breaker state as a value, re-published only when a caller's fast path could care."""
    def publish(state: breaker_mod.BreakerState, now: float) -> None:
        v = published.value
        if v.epoch != state.epoch or v.enabled != state.enabled or v.phase != state.phase:
            published.set(state)
        else:
            published.value = state  # counters changed: readers see them, nobody needs waking
    return publish


def _every(period_s: float, fn: Callable[[Any, float], None]) -> Callable[[Any, float], None]:
    last = [-float("inf")]

    def publish(state: Any, now: float) -> None:
        if now - last[0] >= period_s:
            last[0] = now
            fn(state, now)
    return publish


def _count_activations(metrics: Mailbox) -> Callable[[Any], None]:
    def tap(event: Any) -> None:
        if type(event) is BreakerTransition:
            metrics.tell_lazy(event)  # counted since start, for /metrics
            if event.to_state == "open":
                metrics.tell_lazy(Count(what="breaker_activation", label=event.tier, at=event.at))
    return tap


def _observations(items: list, calls: dict) -> Observations:
    return Observations(items=items, calls=calls)


def _taken(n: int) -> Taken:
    return Taken(n=n)


def _successes(n: int) -> Successes:
    return Successes(n=n)


async def _serve_embedded(data_dir: str | None, *,
                          task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
    async with open_embedded(data_dir) as embedded:
        task_status.started(embedded.dsn)
        await trio.sleep_forever()


_instances = itertools.count(1)


def _with_instance_name(config: Config) -> Config:
    """The pool's application_name, unless configured: `triage/<host>/<pid>`, then `/2`, `/3`...
    for further systems in this process (tests run several), within PostgreSQL's 63 bytes."""
    if config.database.application_name:
        return config
    n = next(_instances)
    name = f"triage/{socket.gethostname()[:20]}/{os.getpid()}" + (f"/{n}" if n > 1 else "")
    return replace(config, database=replace(config.database, application_name=name[:63]))


async def run_monitoring(config: Config | None = None, *, faults: FaultWiring | None = None,
                         task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
    """Start the whole system in the caller's nursery; `task_status.started(Monitoring)`.

    `faults` wires fault injection in when `config.faults.enabled` (default: the fault layer's
    `actors.faults.wire_faults`, loaded then by name)."""
    config = _with_instance_name(config or Config())
    w: _Wiring | None = None
    try:
        async with trio.open_nursery() as nursery:
            w = _Wiring(config, nursery, faults)
            limiter = await w.limiter()
            breakers = await w.breakers()
            queue = await w.scheduler()
            metrics_inbox, metrics = await w.metrics()
            mon = Monitoring(config, breakers, queue, limiter, metrics_inbox, w.cells, w.bus)
            mon.metrics_snapshot = metrics
            dsn, monitor = await w.database()
            mon.db = Database(mon.guards, config, dsn, monitor, w.priority_dsn)
            if mon.db.configured:  # mon.queue.health_check() probes through the pool
                queue.attach_connections(mon.db.connections, config.database.connect_timeout_s + 5.0)
            if monitor is not None:  # HALF_OPEN breakers get their trial from the monitor's probe
                monitor.pool_probe = PoolProbe(mon.db, breakers, config.tiers, monitor.probe_timeout_s).run
            await nursery.start(mon.db.watchdog.run)
            mon.injector = w.injector
            alerts_inbox, alerts = await w.alerts()
            mon.health_report = await w.health(mon, monitor, alerts_inbox, alerts, metrics)
            if config.fleet.enabled:
                fleet = importlib.import_module(FLEET_LAYER)
                mon.fleet_handle = await nursery.start(fleet.run_fleet, config, mon, w.bus.emit)
            await start_sinks(config, mon, nursery)
            try:
                task_status.started(mon)
                await trio.sleep_forever()
            finally:
                mon.stop_accepting()
                w.bus.close()
    except BaseExceptionGroup as group:
        single = _single(group)
        if single is not None:  # an actor past its restart intensity: say so plainly
            raise single from None
        raise
    finally:
        if w is not None and w.offers is not None:  # every actor has stopped: the pool closes
            w.offers.close()
        log.debug("monitoring stopped")


def _single(group: BaseExceptionGroup) -> BaseException | None:
    """The one real error inside nested nursery groups, if there is exactly one."""
    leaves = [e for e in _leaves(group) if not isinstance(e, trio.Cancelled)]
    return leaves[0] if len(leaves) == 1 else None


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


@asynccontextmanager
async def open_monitoring(config: Config | None = None, *,
                          faults: FaultWiring | None = None) -> AsyncIterator[Monitoring]:
    """`async with open_monitoring(Config.from_env()) as mon:` — one nursery, one handle."""
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            mon = await nursery.start(partial(run_monitoring, config, faults=faults))
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
