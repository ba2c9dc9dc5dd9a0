"""Fault kinds: data that decodes from TOML (`kind = "down"`), named after Toxiproxy's.

Proxy faults act on the bytes between Triage and PostgreSQL (`actors.faults.proxy`); server
faults act through PostgreSQL itself (`actors.faults.server`).
"""

from __future__ import annotations

from typing import Literal

import msgspec

FaultKind = Literal["down", "latency", "timeout", "reset_peer", "bandwidth", "slow_close", "limit_data"]


class Fault(msgspec.Struct, frozen=True, kw_only=True, tag=True, tag_field="kind"):
    """Base: one fault in the proxy (Toxiproxy's names and parameters)."""


class Down(Fault, tag="down"):
    pass


class Latency(Fault, tag="latency"):
    latency_ms: float = 1000.0
    jitter_ms: float = 0.0


class BlackHole(Fault, tag="timeout"):
    timeout_ms: float = 0.0          # 0: never close


class ResetPeer(Fault, tag="reset_peer"):
    pass


class Bandwidth(Fault, tag="bandwidth"):
    rate_kbps: float = 100.0


class SlowClose(Fault, tag="slow_close"):
    delay_ms: float = 1000.0


class LimitData(Fault, tag="limit_data"):
    bytes: int = 0


class TerminateBackends(Fault, tag="terminate_backends"):
    """Server side, one shot: pg_terminate_backend every backend of this instance's pool (its
    own application_name); refused behind a connection pooler (`FaultRefused`)."""


class ExhaustConnections(Fault, tag="exhaust_connections"):
    """Server side, until removed: hold every free connection slot but `leave`."""

    leave: int = 0


class LockTable(Fault, tag="lock_table"):
    """Server side, until removed: a session holds `table` ACCESS EXCLUSIVE (and sleeps), so
    every query touching it waits — slow queries, ended by statement_timeout or removal."""

    table: str


ProxyFault = Down | Latency | BlackHole | ResetPeer | Bandwidth | SlowClose | LimitData
AnyFault = ProxyFault | TerminateBackends | ExhaustConnections | LockTable


def kind_of(fault: Fault) -> str:
    return type(fault).__struct_config__.tag
