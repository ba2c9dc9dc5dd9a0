"""The spec's DatabaseMonitor: the prober that takes measurements and the actor shell.

The verdicts live in the pure core, `actors.monitor_core` (see its theory of operation).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from urllib.parse import quote, urlsplit

import psycopg
import trio
from loguru import logger
from psycopg.conninfo import conninfo_to_dict

from actors.monitor_core import (  # noqa: F401  (re-exported: the monitor's public names)
    CHECKS,
    COUNT_SQL,
    RECONNECT_BACKOFF_S,
    SCOPES,
    WATCHDOG_GRACE_S,
    MonitorCore,
    MonitorIn,
    MonitorSettings,
    MonitorState,
    connection_limit,
    initial_metrics,
    step,
    usage_percentage,
)
from actors.pg.connection import PgConnection
from actors.runtime.actor import SupervisedActor, supervise
from actors.runtime.mailbox import AsyncValue, Mailbox, ask, tell_quietly
from messages.config import Config
from messages.database import (
    CheckNow,
    DatabaseDown,
    DatabaseMetrics,
    DatabaseUp,
    ProbeRequested,
    ProbeResult,
    ThresholdCleared,
    ThresholdViolated,
    ViolationsObserved,
)
from messages.errors import ConfigError
from messages.events import ActorRestarted

log = logger.bind(actor="monitor")

# --- the prober: the only part that talks to PostgreSQL ------------------------------------

_SETTINGS_SQL = (
    "SELECT current_setting('max_connections')::int,"
    " current_setting('superuser_reserved_connections')::int"
    " + coalesce(current_setting('reserved_connections', true)::int, 0)")


class Secret:
    """A DSN, and the strings derived from it, that show up in no repr, traceback or log."""

    __slots__ = ("value", "secrets")

    def __init__(self, value: str) -> None:
        self.value, self.secrets = value, secrets_of(value)

    def __repr__(self) -> str:
        return "<hidden>"


def secrets_of(dsn: str) -> tuple[str, ...]:
    """The strings an error text must never contain: the DSN and its password, as written."""
    passwords: list[str] = []
    try:
        passwords.append(str(conninfo_to_dict(dsn).get("password") or ""))
    except psycopg.Error:
        pass
    try:
        passwords.append(urlsplit(dsn).password or "")
    except ValueError:
        pass
    out = {dsn, *(v for p in passwords if p for v in (p, quote(p), quote(p, safe="")))}
    return tuple(sorted(out, key=len, reverse=True))


def describe(exc: BaseException, dsn: Secret, timeout_s: float) -> str:
    """'ClassName: message' on one line, secrets scrubbed."""
    if isinstance(exc, trio.TooSlowError):
        return f"TooSlowError: no answer within {timeout_s:g}s"
    text = " ".join(str(exc).split())[:300]
    for secret in dsn.secrets:
        text = text.replace(secret, "***")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def wall_clock() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Prober:
    """Owns the monitor's one connection; reconnects when it is broken."""

    def __init__(self, dsn: Secret, timeout_s: float) -> None:
        self._dsn, self._timeout_s = dsn, timeout_s
        self._conn: PgConnection | None = None
        self._settings: tuple[int, int] | None = None

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.broken

    async def probe(self, seq: int) -> ProbeResult:
        try:
            with trio.fail_after(self._timeout_s):
                rt_ms, counts = await self._measure()
        except Exception as exc:  # any failure to measure is a verdict, not a crash
            return ProbeResult(seq=seq, ok=False, at=trio.current_time(), wall=wall_clock(),
                               connected=self.connected,
                               error=describe(exc, self._dsn, self._timeout_s))
        max_connections, reserved = self._settings or (None, None)
        return ProbeResult(seq=seq, ok=True, at=trio.current_time(), wall=wall_clock(),
                           connected=self.connected, response_time_ms=rt_ms, connection_count=counts["server"],
                           connections_by_scope=counts,
                           max_connections=max_connections, reserved_connections=reserved)

    async def _measure(self) -> tuple[float, dict[str, int]]:
        if not self.connected:
            await self._connect()
        assert self._conn is not None
        t0 = trio.current_time()
        await self._conn.execute("SELECT 1")
        rt_ms = round((trio.current_time() - t0) * 1000.0, 3)
        row = (await self._conn.execute(COUNT_SQL)).rows[0]
        return rt_ms, dict(zip(SCOPES, row, strict=True))

    async def _connect(self) -> None:
        self.close()
        t = self._timeout_s
        # No statement_timeout SET (session state, shared behind PgBouncer): `probe` bounds the
        # whole probe on the client, and a cancelled query sends the server a cancel request.
        conn = await PgConnection.connect(self._dsn.value, connect_timeout_s=t,
                                          application_name="triage-monitor",
                                          cancel_timeout_s=min(1.0, t / 4))
        try:
            row = (await conn.execute(_SETTINGS_SQL)).rows[0]
        except BaseException:
            conn.close_now()
            raise
        self._conn, self._settings = conn, (row[0], row[1])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close_now()
            self._conn = None


# --- the shell: the spec's DatabaseMonitor -------------------------------------------------


class _Subscription:
    __slots__ = ("callback", "running")

    def __init__(self, callback: Callable[[list[str], DatabaseMetrics], object]) -> None:
        self.callback, self.running = callback, False


class DatabaseMonitor:
    """`await nursery.start(monitor.run)`; read `monitor.metrics`; `await monitor.check_now()`.

    The spec's `startMonitoring(interval, callback)` is `run()` (interval from
    `config.health_check_interval_s`) plus `on_violation(callback)`. Events
    leave through `emit`, which must not block; transitions are also logged
    here (database problems with the word "Database", as the spec greps).
    Calls made before `run()` starts wait for it; after it ends they raise
    ShuttingDown.
    """

    def __init__(self, config: Config, dsn: str, emit: Callable[[object], None], *,
                 probe_timeout_s: float | None = None) -> None:
        interval = config.health_check_interval_s
        timeout = min(5.0, interval) if probe_timeout_s is None else probe_timeout_s
        if not timeout > 0:
            raise ConfigError("probe_timeout_s", probe_timeout_s, "must be > 0")
        self._settings = MonitorSettings(interval_s=interval, probe_timeout_s=timeout,
                                         thresholds=config.thresholds,
                                         connection_scope=config.health.connection_scope)
        self._supervisor = config.supervisor
        self._dsn, self._emit = Secret(dsn), emit
        self._inbox = Mailbox("monitor", 64)
        self._subs: list[_Subscription] = []
        self._probes: trio.MemorySendChannel | None = None
        self._nursery: trio.Nursery | None = None
        self.callbacks_skipped = 0      # an async callback still running when the next probe came
        # Run after each probe, one at a time: the breakers' trial through the pool (set by the
        # system, see `actors.pg.pool_probe`), so an idle service recovers without traffic.
        self.pool_probe: Callable[[], Awaitable[None]] | None = None
        self._pool_probing = False
        self.metrics = AsyncValue(initial_metrics(config.thresholds, config.health.connection_scope))

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Probe and judge until cancelled; leaves no task and no connection behind."""
        if self._nursery is not None or self._inbox.closed:
            raise RuntimeError("DatabaseMonitor.run() can be called only once")
        state = MonitorState.initial(self._settings, now=trio.current_time())
        cell = SupervisedActor(MonitorCore(), state, self._inbox, self._route, publish=self._publish)
        send, receive = trio.open_memory_channel[ProbeRequested](4)
        async with send, receive, trio.open_nursery() as nursery:
            self._probes, self._nursery = send, nursery
            nursery.start_soon(self._probe_loop, receive)
            await nursery.start(supervise, cell, self._supervisor, self._on_restart)
            task_status.started()

    async def check_now(self) -> DatabaseMetrics:
        """Probe now (or join the probe in flight) and return the fresh metrics.

        While the database is unreachable and within the reconnect backoff, returns
        the current (unhealthy) metrics at once. ShuttingDown once the monitor is stopped.
        """
        return await ask(self._inbox, lambda r: CheckNow(reply=r))

    def on_violation(self, callback: Callable[[list[str], DatabaseMetrics], object]) -> Callable[[], None]:
        """Call `callback(names, metrics)` after each successful probe that has violations.

        A sync callback runs inside the monitor (keep it quick); an async one runs in the
        monitor's nursery, at most one at a time per subscription (overlaps are skipped and
        counted in `callbacks_skipped`). Exceptions are logged, never fatal. Returns an
        unsubscribe function.
        """
        sub = _Subscription(callback)
        self._subs.append(sub)

        def unsubscribe() -> None:
            if sub in self._subs:
                self._subs.remove(sub)
        return unsubscribe

    # ---- shell internals ----------------------------------------------------------------

    async def _probe_loop(self, requests: trio.MemoryReceiveChannel) -> None:
        prober = Prober(self._dsn, self._settings.probe_timeout_s)
        try:
            async for request in requests:
                tell_quietly(self._inbox, await prober.probe(request.seq))
                self._start_pool_probe()
        finally:
            prober.close()

    @property
    def probe_timeout_s(self) -> float:
        return self._settings.probe_timeout_s

    def _start_pool_probe(self) -> None:
        if self.pool_probe is None or self._pool_probing or self._nursery is None:
            return
        self._pool_probing = True
        self._nursery.start_soon(self._run_pool_probe, self.pool_probe)

    async def _run_pool_probe(self, probe: Callable[[], Awaitable[None]]) -> None:
        try:
            await probe()
        except Exception as exc:  # a bug in the probe must not stop the monitor
            log.opt(exception=exc).error("Database pool probe crashed")
        finally:
            self._pool_probing = False

    def _route(self, event: object) -> None:
        if type(event) is ProbeRequested:
            assert self._probes is not None
            with contextlib.suppress(trio.WouldBlock):  # only after a watchdog write-off
                self._probes.send_nowait(event)
        elif type(event) is ViolationsObserved:
            self._notify(event)
        else:
            _log_event(event)
            self._emit(event)

    def _publish(self, state: MonitorState, now: float) -> None:
        if state.metrics is not self.metrics.value:
            self.metrics.set(state.metrics)

    def _on_restart(self, cell: SupervisedActor, exc: BaseException) -> None:
        self._emit(ActorRestarted(actor=cell.name, restarts=cell.restarts,
                                  error=type(exc).__name__, at=trio.current_time()))

    def _notify(self, event: ViolationsObserved) -> None:
        for sub in list(self._subs):
            if sub.running:
                self.callbacks_skipped += 1
                continue
            try:
                result = sub.callback(list(event.names), event.metrics)
            except Exception as exc:
                log.opt(exception=exc).error("Database violation callback failed")
                continue
            if inspect.isawaitable(result):
                sub.running = True
                assert self._nursery is not None
                self._nursery.start_soon(self._await_callback, sub, result)

    @staticmethod
    async def _await_callback(sub: _Subscription, awaitable: Awaitable[object]) -> None:
        try:
            await awaitable
        except Exception as exc:
            log.opt(exception=exc).error("Database violation callback failed")
        finally:
            sub.running = False


def _log_event(event: object) -> None:
    match event:
        case DatabaseDown():
            log.warning("Database health check error: {error}", error=event.error)
        case DatabaseUp():
            log.info("Database reachable again")
        case ThresholdViolated():
            log.warning("Database threshold {name} violated: {value:g} > {threshold:g}",
                        name=event.name, value=event.value, threshold=event.threshold)
        case ThresholdCleared():
            log.info("Database threshold {name} cleared: {value:g} <= {threshold:g}",
                     name=event.name, value=event.value, threshold=event.threshold)
