"""What callers ask actors, and the replies they get.

A `reply` field holds the one-shot `actors.mailbox.Reply` of a parked caller;
the pure cores treat it as an opaque token and only ever hand it back in a
`Send` effect.
"""

from __future__ import annotations

from typing import Any, Literal

from messages.base import Message

OutcomeKind = Literal["success", "failure", "ignored", "cancelled", "abandoned"]


# --- common to every actor -----------------------------------------------------------------


class GetSnapshot(Message):
    reply: Any


class Tick(Message):
    """Time passed: the shell sends it when the core's next wake-up instant arrives."""


class Crash(Message):
    """Fault injection: the actor raises while handling it (tests the supervisor)."""

    reply: Any = None


# --- breaker -------------------------------------------------------------------------------


class Permit(Message):
    reply: Any


class Permitted(Message):
    trial: bool
    epoch: int


class Outcome(Message):
    """What became of a call the breaker let through."""

    result: OutcomeKind
    epoch: int
    trial: bool = False
    duration_s: float = 0.0


class Reset(Message):
    reply: Any = None


class ForceOpen(Message):
    reply: Any = None


class Configure(Message):
    """Change a tier at runtime; None leaves a field as it is."""

    reply: Any = None
    failure_threshold: int | None = None
    recovery_timeout_s: float | None = None
    monitoring_period_s: float | None = None
    half_open_max_calls: int | None = None
    success_threshold: int | None = None


# --- admission queue -----------------------------------------------------------------------


class Admit(Message):
    reply: Any
    priority: int
    at: float


class Admitted(Message):
    waited_s: float


class Release(Message):
    reply: Any


class Withdraw(Message):
    """A waiter left: its caller was cancelled or its queue deadline passed."""

    reply: Any
    reason: Literal["cancelled", "timeout"] = "cancelled"


class Clear(Message):
    reply: Any = None


# --- limiter -------------------------------------------------------------------------------


class Check(Message):
    reply: Any
    policy: str
    key: str
    cost: int = 1


class ResetKeys(Message):
    reply: Any = None
    policy: str | None = None
    key: str | None = None


class Done(Message):
    """Acknowledges an admin command."""
