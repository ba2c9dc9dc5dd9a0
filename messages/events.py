"""Transitions and other things that happened, for logs, alerts and health."""

from __future__ import annotations

from messages.base import Message
from messages.snapshots import BreakerPhase


class BreakerTransition(Message):
    tier: str
    from_state: BreakerPhase
    to_state: BreakerPhase
    reason: str
    at: float
    epoch: int


class ProbeDue(Message):
    """A fleet-shared breaker's recovery timeout elapsed: it waits for the probe lease (one
    instance of the fleet runs the trial) instead of going HALF_OPEN by itself."""

    tier: str
    epoch: int
    at: float


class ActorRestarted(Message):
    actor: str
    restarts: int
    error: str
    at: float


class MaintenanceChanged(Message):
    on: bool


class QueueLimitChanged(Message):
    """`mon.queue.set_limit`: the admission queue's slots from now on (None: the configured
    number again)."""

    max_concurrent: int | None
    at: float
