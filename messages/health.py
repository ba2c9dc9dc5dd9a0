"""Health reports and alerts: what the health and alert actors publish.

JSON views use the spec's camelCase names (`isHealthy`, `responseTime`,
`circuitBreakers`…) so its `jq` recipes work as written.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

from messages.base import Message

Status = Literal["healthy", "degraded", "unhealthy"]
Severity = Literal["info", "warning", "critical"]
SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}


class Changed(Message):
    """Health's inbox: something another actor publishes changed (an event on the bus)."""


class Degradation(Message):
    """One reason the status is not healthy, with the value and threshold behind it."""

    reason: str
    component: str
    severity: Status            # the status this reason alone implies
    value: Any = None
    threshold: Any = None


class Alert(Message):
    id: str                     # rule, plus ":label" when a rule fires per tier
    rule: str
    severity: Severity
    state: Literal["firing", "resolved"]
    message: str
    value: Any
    threshold: Any
    started_at: str             # ISO 8601 UTC
    resolved_at: str | None = None


class HealthReport(Message):
    status: Status
    timestamp: str              # ISO 8601 UTC
    uptime_ms: int
    database: str               # healthy | degraded | unhealthy | unknown | not_configured
    queue: str                  # healthy | degraded
    components: dict[str, Any]
    metrics: dict[str, Any]
    alerts: list[Alert]
    degradation: list[Degradation]
    at: float                   # trio.current_time() when evaluated

    def http_status(self, degraded_code: int = 206) -> int:
        """healthy 200, degraded 206 (configurable: some load balancers accept only 200), unhealthy 503."""
        return {"healthy": 200, "degraded": degraded_code, "unhealthy": 503}[self.status]

    def basic(self) -> dict[str, Any]:
        return {"status": self.status, "timestamp": self.timestamp, "uptime": self.uptime_ms,
                "database": self.database, "queue": self.queue}

    def detailed(self) -> dict[str, Any]:
        return {**self.basic(), "components": camel(self.components), "metrics": camel(self.metrics),
                "alerts": camel(msgspec.to_builtins(self.alerts)),
                "degradation": camel(msgspec.to_builtins(self.degradation))}

    def minimal(self) -> dict[str, Any]:
        """What production shows without a token: the spec's data-minimised view."""
        return {"status": self.status, "timestamp": self.timestamp}


_CAMEL = re.compile(r"_([a-z0-9])")


def camel(value: Any) -> Any:
    """snake_case keys to camelCase, recursively (dict keys that are data, like tier names, stay)."""
    if isinstance(value, dict):
        return {(_CAMEL.sub(lambda m: m.group(1).upper(), k) if isinstance(k, str) else k): camel(v)
                for k, v in value.items() if k != "kind"}
    if isinstance(value, list | tuple):
        return [camel(v) for v in value]
    return value
