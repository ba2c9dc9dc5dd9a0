"""Fault injection: a trio TCP proxy in front of PostgreSQL with Toxiproxy's fault names, and
server-side faults through PostgreSQL itself. Used by `mon.inject`, the scenario runner and
the tests; never imported by the kernel (it is handed `wire_faults`, or loads it by name
when `faults.enabled` and nobody handed it one)."""

import trio

from actors.faults.injector import FaultInjector
from actors.faults.kinds import (
    AnyFault,
    Bandwidth,
    BlackHole,
    Down,
    ExhaustConnections,
    Fault,
    FaultKind,
    Latency,
    LimitData,
    LockTable,
    ProxyFault,
    ResetPeer,
    SlowClose,
    TerminateBackends,
    kind_of,
)
from actors.faults.proxy import FaultProxy, proxied_dsn
from actors.faults.server import (
    FaultRefused,
    exhausted_connections,
    locked_table,
    terminate_backends,
    through_pooler,
)
from messages.config import Config


async def wire_faults(dsn: str, config: Config, nursery: trio.Nursery) -> tuple[str, FaultInjector]:
    """The kernel's fault hook (`run_monitoring(..., faults=wire_faults)`): a proxy in front of
    `dsn`, run in `nursery`; the pool and the monitor connect through the DSN returned.
    Server-side faults connect to `faults.database_url` if set (straight to PostgreSQL when
    `dsn` goes through PgBouncer), else to `dsn`."""
    proxy = FaultProxy.for_dsn(dsn)
    await nursery.start(proxy.run)
    injector = FaultInjector(proxy, config.faults.database_url or dsn, config.database.application_name,
                             nursery, behind_pooler=config.database.behind_pooler, pool_dsn=dsn)
    return proxied_dsn(dsn, proxy), injector

__all__ = [
    "AnyFault", "Bandwidth", "BlackHole", "Down", "ExhaustConnections", "Fault", "FaultInjector",
    "FaultKind", "FaultProxy", "FaultRefused", "Latency", "LimitData", "LockTable", "ProxyFault",
    "ResetPeer", "SlowClose", "TerminateBackends", "exhausted_connections", "kind_of",
    "locked_table", "proxied_dsn", "terminate_backends", "through_pooler", "wire_faults",
]
