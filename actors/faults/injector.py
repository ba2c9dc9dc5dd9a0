"""`mon.inject(fault)`: proxy faults and server faults in one place."""

from __future__ import annotations

import trio
from loguru import logger

from actors.faults.kinds import (
    ExhaustConnections,
    Fault,
    LockTable,
    TerminateBackends,
)
from actors.faults.proxy import FaultProxy, proxied_dsn
from actors.faults.server import (
    FaultRefused,
    exhausted_connections,
    locked_table,
    terminate_backends,
    through_pooler,
)

log = logger.bind(actor="faults")


class FaultInjector:
    """`mon.inject(fault)` / `mon.clear_faults()`: proxy faults and server faults in one place."""

    def __init__(self, proxy: FaultProxy, admin_dsn: str, application_name: str,
                 nursery: trio.Nursery, *, behind_pooler: bool | None = None,
                 pool_dsn: str | None = None) -> None:
        """`admin_dsn`: where server-side faults connect (straight to PostgreSQL, not through a
        pooler); `pool_dsn` (default `admin_dsn`): what the pool connects to, checked for a pooler."""
        self.proxy, self.admin_dsn, self.application_name = proxy, admin_dsn, application_name
        self.pool_dsn = pool_dsn or admin_dsn
        self.behind_pooler = behind_pooler
        self._nursery = nursery
        self._server: dict[str, trio.CancelScope] = {}   # server-side faults held until removed
        self.held_connections = 0

    @property
    def active(self) -> list[str]:
        return sorted(self.proxy.faults) + sorted(self._server)

    async def inject(self, fault: Fault) -> None:
        if isinstance(fault, TerminateBackends):
            await self._check_own_backends()
            await terminate_backends(self.admin_dsn, self.application_name)
        elif isinstance(fault, ExhaustConnections):
            self.remove("exhaust_connections")
            self._server["exhaust_connections"] = await self._nursery.start(self._hold, fault.leave)
        elif isinstance(fault, LockTable):
            self.remove("lock_table")
            self._server["lock_table"] = await self._nursery.start(self._lock, fault.table)
        else:
            self.proxy.add(fault)

    async def _check_own_backends(self) -> None:
        """Behind a pooler our application_name may label backends other clients share."""
        if self.behind_pooler:
            raise FaultRefused("terminate_backends refused: database.behind_pooler is set, and "
                               "behind a connection pooler backends are shared with other clients")
        if self.behind_pooler is None and await through_pooler(self.pool_dsn):
            raise FaultRefused(
                "terminate_backends refused: DATABASE_URL reaches the server through a connection "
                "pooler or relay, whose backends may be shared with other clients; terminating "
                "them could hit other services (set database.behind_pooler = false if it is a "
                "plain TCP forwarder)")

    def proxied(self, dsn: str) -> str:
        """`dsn` through the fault proxy if it names the proxy's upstream (another pool user of
        the same server, `priority_dsn`), else as it is."""
        return proxied_dsn(dsn, self.proxy) if self.proxy.fronts(dsn) else dsn

    def remove(self, kind: str) -> None:
        scope = self._server.pop(kind, None)
        if scope is not None:
            scope.cancel()
        elif kind not in ("exhaust_connections", "lock_table"):
            self.proxy.remove(kind)

    def clear(self) -> None:
        self.proxy.clear()
        for kind in list(self._server):
            self.remove(kind)

    async def _hold(self, leave: int, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            async with exhausted_connections(self.admin_dsn, leave) as held:
                self.held_connections = held
                task_status.started(scope)
                await trio.sleep_forever()
        self.held_connections = 0

    async def _lock(self, table: str, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            async with locked_table(self.admin_dsn, table):
                task_status.started(scope)
                await trio.sleep_forever()


