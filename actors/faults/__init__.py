"""Fault injection: a trio TCP proxy in front of PostgreSQL with Toxiproxy's fault names, and
server-side faults through PostgreSQL itself. Used by `mon.inject`, the scenario runner and
the tests; never imported by the kernel."""

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

__all__ = [
    "AnyFault", "Bandwidth", "BlackHole", "Down", "ExhaustConnections", "Fault", "FaultInjector",
    "FaultKind", "FaultProxy", "FaultRefused", "Latency", "LimitData", "LockTable", "ProxyFault",
    "ResetPeer", "SlowClose", "TerminateBackends", "exhausted_connections", "kind_of",
    "locked_table", "proxied_dsn", "terminate_backends", "through_pooler",
]
