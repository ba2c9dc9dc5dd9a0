"""Typed errors: every refusal a caller can meet, with what it needs to answer a client.

Everything raised *before* an operation ran (rate limited, circuit open, queue
full, queue timeout, queue cleared, shutting down) derives from `Refused`, so a
caller knows nothing was sent and a retry is safe.
"""

from __future__ import annotations

from messages.outcome import Outcome


class TriageError(Exception):
    """Base of every error Triage raises on purpose."""

    outcome = Outcome.ERROR  # how a call that raised it ended (see `messages.outcome`)


class ConfigError(TriageError):
    """A configuration value is invalid: names the variable or field and why."""

    def __init__(self, field: str, value: object, why: str) -> None:
        self.field, self.value, self.why = field, value, why
        shown = "" if value is None else f"={value!r}"
        super().__init__(f"{field}{shown}: {why}")


class InvalidArgument(TriageError, ValueError):
    """A caller passed a value out of range (priority=99, cost=0): nothing was done."""


class InvalidArgumentType(TriageError, TypeError):
    """A caller passed a value of the wrong type (priority="HIGH", cost=2.5): nothing was done."""


class Refused(TriageError):
    """The operation was not started; retrying later is safe."""

    retry_after_s: float | None = None
    retriable = True  # nothing was sent (as `mon.db`'s errors say it)


class RateLimited(Refused):
    outcome = Outcome.RATE_LIMITED

    def __init__(self, policy: str, key: str, retry_after_s: float, decision: object = None) -> None:
        self.policy, self.key, self.retry_after_s, self.decision = policy, key, retry_after_s, decision
        if retry_after_s == float("inf"):  # the request costs more than the whole quota
            super().__init__(f"Rate limit exceeded for policy {policy!r}: the request's cost exceeds "
                             "the limit, so it can never be allowed")
            return
        super().__init__(f"Rate limit exceeded for policy {policy!r}; retry after {retry_after_s:.3f}s")


class CircuitOpen(Refused):
    outcome = Outcome.CIRCUIT_OPEN

    def __init__(self, tier: str, retry_after_s: float) -> None:
        self.tier, self.retry_after_s = tier, retry_after_s
        super().__init__(f"Circuit breaker {tier!r} is open; retry after {retry_after_s:.3f}s")


class QueueFull(Refused):
    outcome = Outcome.QUEUE_FULL

    def __init__(self, priority: object, depth: int, displaced: bool = False) -> None:
        self.priority, self.depth, self.displaced = priority, depth, displaced
        self.retry_after_s = 1.0
        how = "displaced by a higher-priority request" if displaced else "refused"
        super().__init__(f"Queue overflow: {_prio(priority)} request {how} (depth {depth})")


class QueueTimeout(Refused):
    outcome = Outcome.QUEUE_TIMEOUT

    def __init__(self, priority: object, waited_s: float) -> None:
        self.priority, self.waited_s = priority, waited_s
        self.retry_after_s = 1.0
        super().__init__(f"Queue timeout: {_prio(priority)} request not admitted within {waited_s:.3f}s")


class QueueCleared(Refused):
    outcome = Outcome.QUEUE_FULL

    def __init__(self, priority: object) -> None:
        self.priority = priority
        super().__init__(f"Queue cleared while a {_prio(priority)} request was waiting")


class ShuttingDown(Refused):
    outcome = Outcome.SHUTTING_DOWN

    def __init__(self, what: str = "monitoring") -> None:
        super().__init__(f"{what} is shutting down")


class UnknownTier(TriageError, KeyError):
    def __init__(self, tier: str, known: tuple[str, ...]) -> None:
        self.tier = tier
        super().__init__(f"unknown breaker tier {tier!r}; known: {', '.join(known)}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class ActorCrashed(TriageError):
    """An actor failed while handling this request; the actor was restarted."""

    def __init__(self, actor: str) -> None:
        self.actor = actor
        super().__init__(f"actor {actor!r} crashed while handling the request")


def _prio(priority: object) -> str:
    return getattr(priority, "name", str(priority))


def breaker_verdict(exc: BaseException | None, ignore: tuple[type[BaseException], ...]) -> str:
    """The breaker's verdict on how a call ended."""
    if exc is None:
        return "success"
    if not isinstance(exc, Exception):
        return "cancelled"          # trio.Cancelled, KeyboardInterrupt: no verdict on the tier
    if isinstance(exc, Refused) or isinstance(exc, ignore):
        return "ignored"            # a refusal elsewhere, or the caller's own bad query
    return "failure"
