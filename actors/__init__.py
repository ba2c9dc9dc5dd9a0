"""Triage: a resilience and monitoring kernel for trio services on PostgreSQL.

    from actors import open_monitoring
    from messages.config import Config, Priority

The public names are loaded on first use (PEP 562), so `messages` can import
`messages.errors` without pulling in the whole system.
"""

from typing import TYPE_CHECKING

from loguru import logger

from messages.errors import (
    ActorCrashed,
    CircuitOpen,
    ConfigError,
    QueueCleared,
    QueueFull,
    QueueTimeout,
    RateLimited,
    Refused,
    ShuttingDown,
    TriageError,
    UnknownTier,
)

if TYPE_CHECKING:
    from actors.system import Monitoring, open_monitoring, run_monitoring

# A library stays quiet unless its host opts in: logger.enable("actors").
logger.disable("actors")

_LAZY = {"Monitoring", "open_monitoring", "run_monitoring"}


def __getattr__(name: str):
    if name in _LAZY:
        from actors import system

        return getattr(system, name)
    raise AttributeError(f"module 'actors' has no attribute {name!r}")


__all__ = [
    "ActorCrashed", "CircuitOpen", "ConfigError", "Monitoring", "QueueCleared", "QueueFull",
    "QueueTimeout", "RateLimited", "Refused", "ShuttingDown", "TriageError", "UnknownTier",
    "open_monitoring", "run_monitoring",
]
