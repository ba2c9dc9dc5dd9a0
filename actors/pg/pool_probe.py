"""Recovery without traffic: the monitor's probe, run through the pool, is the breakers' trial.

Theory of operation. A breaker leaves HALF_OPEN only on the outcome of a trial call. A
service that gets no traffic makes none, so it would stay HALF_OPEN (and health 206)
forever. After each monitor probe, `PoolProbe.run` asks every breaker of a tier that
guards database work (`guards_database`, all four by default) that is not CLOSED for a
trial permit; if it got any, it runs `SELECT 1` *through the pool* — a pooled connection
from the admission queue, replaced by a fresh one if it is dead, connecting even while
the pool backs off (`probe=True`) — and reports that one outcome to each of them. So a
close means the pool works, not only the monitor's own connection; a failure re-opens
(a fresh recovery timer). An idle service is CLOSED within `recovery_timeout_s` plus one
probe interval (times `success_threshold` if that is more than 1).

Probes are not callers' calls: they do not show in the per-tier call metrics. Without
any breaker to try (the usual case) a probe costs nothing: no slot, no connection.
"""

from __future__ import annotations

from typing import Any

import trio
from loguru import logger

from actors.pg.connection import ConnectionLost
from messages.config import Priority
from messages.errors import CircuitOpen, Refused, breaker_verdict
from messages.snapshots import PoolCheck

log = logger.bind(actor="monitor")


class PoolProbe:
    def __init__(self, db: Any, breakers: dict[str, Any], tiers: dict[str, Any], timeout_s: float) -> None:
        self._db, self._timeout_s = db, timeout_s
        self._breakers = [breakers[t] for t, cfg in tiers.items() if cfg.guards_database and t in breakers]
        self.runs = 0

    async def _trials(self) -> list[tuple[Any, int]]:
        """A trial permit from every guarding breaker that is not CLOSED and will give one."""
        trials = []
        for breaker in self._breakers:
            if breaker.state == "closed":
                continue
            try:
                trial, epoch = await breaker.permit()
            except CircuitOpen:  # still within its recovery timeout, or its trials are taken
                continue
            except Refused:  # shutting down
                return trials
            if trial:
                trials.append((breaker, epoch))
        return trials

    async def run(self) -> None:
        """One probe: trial permits, one pooled `SELECT 1`, the outcome to every trial."""
        if not self._db.configured:
            return
        trials = await self._trials()
        if not trials:
            return
        self.runs += 1
        t0 = trio.current_time()
        exc_out: BaseException | None = None
        try:
            await self._select_1()
        except BaseException as exc:
            exc_out = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            duration = trio.current_time() - t0
            for breaker, epoch in trials:
                await breaker.report(_verdict(exc_out, breaker.ignore), True, epoch, duration)
        if exc_out is not None:
            log.info("Database pool probe failed: {error}", error=type(exc_out).__name__)

    async def _select_1(self) -> None:
        await select_1(self._db.queue, self._db.connections, self._timeout_s)


async def select_1(queue: Any, connections: Any, timeout_s: float) -> None:
    """`SELECT 1` on a pooled connection (replaced if dead; connecting even while backing off)."""
    held = connections.lease(Priority.CRITICAL)
    # Waiting for a slot is bounded by the queue (QueueTimeout: no verdict); the rest,
    # connecting and the query, by the probe timeout (TooSlowError: a failure).
    token, admitted = await queue.admit(Priority.CRITICAL, timeout_s, conn=True, probe=True)
    try:
        with trio.fail_after(timeout_s):
            conn = await held.take(admitted)
            try:
                await conn.execute("SELECT 1")
            except ConnectionLost as exc:
                if exc.statement_sent:
                    raise
                conn = await held.reconnect()  # a pooled connection that died idle
                await conn.execute("SELECT 1")
    finally:
        held.give_back(queue, token)  # the one release path, as for mon.db


async def check_pool(queue: Any, connections: Any, timeout_s: float) -> PoolCheck:
    """Close every idle pooled connection, then probe through the pool on a fresh one.

    The spec's "restart to clear the connection pool", without a restart: connections that
    went bad while idle (a failover, a server restart, a proxy's dropped state) are gone.
    """
    closed = await queue.drop_idle()
    t0 = trio.current_time()
    try:
        await select_1(queue, connections, timeout_s)
    except Exception as exc:  # the answer is the verdict; the caller's request did not fail
        error = type(exc).__name__
    else:
        error = None
    latency = trio.current_time() - t0
    log.warning("Database pool reset: {closed} idle connection(s) closed, probe {verdict}",
                closed=closed, verdict="ok" if error is None else error)
    # Replaced only when the probe proved a fresh connection works (the pool reopens lazily);
    # with the database down they were closed, not replaced.
    return PoolCheck(replaced=closed if error is None else 0, closed=closed, healthy=error is None,
                     probe_latency_s=latency, error=error)


def _verdict(exc: BaseException | None, ignore: tuple) -> str:
    """A probe refused by the queue (full, timed out, shutting down) is no verdict on the database."""
    if isinstance(exc, Refused):
        return "abandoned"
    return breaker_verdict(exc, ignore)
