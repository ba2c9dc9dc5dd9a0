"""Triage: a resilience and monitoring kernel for trio services on PostgreSQL.

    from actors import Config, Priority, open_monitoring

This module is the whole public API, in one import: the entry points, the handle, the
configuration, every error a caller can meet, and the snapshot and event values a caller
reads. Names live in small private modules and are re-exported here; their `__module__`
is rewritten to `actors` (trio's `fixup_module_metadata`), so a traceback says
`actors.CircuitOpen`, the name to catch, not where it happens to be defined.
"""

from loguru import logger

from actors.guard import FaultsDisabled
from actors.handle import Monitoring
from actors.limiter_core import UnknownPolicy
from actors.pg.connection import ConnectionLost
from actors.pg.database import (
    ConnectionLimitReached,
    DatabaseNotConfigured,
    DatabaseUnavailable,
    QueryTimeout,
)
from actors.system import FaultWiring, open_monitoring, run_monitoring
from messages.config import Config, Priority
from messages.database import (
    DatabaseDown,
    DatabaseMetrics,
    DatabaseUp,
    ThresholdCleared,
    ThresholdViolated,
)
from messages.errors import (
    ActorCrashed,
    CircuitOpen,
    ConfigError,
    InvalidArgument,
    InvalidArgumentType,
    QueueCleared,
    QueueFull,
    QueueTimeout,
    RateLimited,
    Refused,
    ShuttingDown,
    TriageError,
    UnknownTier,
)
from messages.events import ActorRestarted, BreakerTransition, MaintenanceChanged, QueueLimitChanged
from messages.health import Alert, Degradation, HealthReport
from messages.metrics import MetricsSnapshot, Percentiles, WindowStats
from messages.outcome import Outcome, outcome_of
from messages.snapshots import (
    ActorStatus,
    BreakerSnapshot,
    LimiterSnapshot,
    PolicyStats,
    PoolCheck,
    PoolSnapshot,
    QueueSnapshot,
    SystemSnapshot,
    SystemStatistics,
)

# A library stays quiet unless its host opts in: logger.enable("actors").
logger.disable("actors")

ERRORS = (
    ActorCrashed, CircuitOpen, ConfigError, ConnectionLimitReached, ConnectionLost,
    DatabaseNotConfigured, DatabaseUnavailable, FaultsDisabled, InvalidArgument,
    InvalidArgumentType, QueryTimeout, QueueCleared, QueueFull, QueueTimeout, RateLimited,
    Refused, ShuttingDown, TriageError, UnknownPolicy, UnknownTier,
)


def _fixup_module_metadata(classes: tuple[type, ...]) -> None:
    """Each error reads as its public name (`actors.CircuitOpen`) in tracebacks and reprs."""
    for cls in classes:
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__


_fixup_module_metadata(ERRORS)

__all__ = [
    # entry points, the handle, configuration
    "Config", "FaultWiring", "Monitoring", "Priority", "open_monitoring", "run_monitoring",
    # how a call ended: one vocabulary, one function
    "Outcome", "outcome_of",
    # errors
    "ActorCrashed", "CircuitOpen", "ConfigError", "ConnectionLimitReached", "ConnectionLost",
    "DatabaseNotConfigured", "DatabaseUnavailable", "FaultsDisabled", "InvalidArgument",
    "InvalidArgumentType", "QueryTimeout", "QueueCleared", "QueueFull", "QueueTimeout",
    "RateLimited", "Refused", "ShuttingDown", "TriageError", "UnknownPolicy", "UnknownTier",
    # snapshots and events
    "ActorRestarted", "ActorStatus", "Alert", "BreakerSnapshot", "BreakerTransition",
    "DatabaseDown", "DatabaseMetrics", "DatabaseUp", "Degradation", "HealthReport",
    "LimiterSnapshot", "MaintenanceChanged", "QueueLimitChanged", "MetricsSnapshot", "Percentiles", "PolicyStats", "PoolCheck",
    "PoolSnapshot", "QueueSnapshot", "SystemSnapshot", "SystemStatistics", "ThresholdCleared",
    "ThresholdViolated",
    "WindowStats",
]
