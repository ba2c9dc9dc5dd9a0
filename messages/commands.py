"""What callers ask actors, and the replies they get.

A `reply` field holds the one-shot `actors.runtime.mailbox.Reply` of a parked caller;
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
    """What became of a call the breaker let through.

    A failure is sent with a `reply` (answered `Done` once applied and published), so the
    caller that reaches the threshold has opened the breaker before it raises.
    """

    result: OutcomeKind
    epoch: int
    trial: bool = False
    duration_s: float = 0.0
    reply: Any = None


class Successes(Message):
    """`n` successful calls in the CLOSED state, coalesced by the mailbox."""

    n: int


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


class FleetShared(Message):
    """The fleet agent: this tier's recovery is shared with the fleet (Redis answers and the
    tier is in `[fleet] share_breakers`), or it is local again (Redis down)."""

    shared: bool
    # After the prober's success: "half_open" (a trial of this instance's own) or "close".
    follow: str = "half_open"


class FleetQuorum(Message):
    """What the fleet reports for this tier: `open` live peers (this instance not counted)
    report OPEN, out of `live` live instances (this one counted)."""

    open: int
    live: int
    # The breaker's epoch the count was made against: a count from before a transition (say,
    # the recovery that just closed it) is stale and ignored.
    epoch: int = -1


class ProbeLease(Message):
    """This instance won the tier's probe lease for the OPEN period `epoch`: it runs the trial."""

    epoch: int


class FleetVerdict(Message):
    """The prober `by` published its verdict: its trial succeeded (`ok`) or failed."""

    ok: bool
    by: str = ""


# --- admission queue -----------------------------------------------------------------------


class Admit(Message):
    reply: Any
    priority: int
    at: float
    deadline: float = float("inf")   # not admitted by then: QueueTimeout
    conn: bool = False               # wants a pooled database connection with its slot
    probe: bool = False              # a breaker's trial call: may connect even while backing off


class Admitted(Message):
    waited_s: float
    conn: Any = None                 # an idle pooled connection, if one was asked for and free
    connect: bool = False            # none idle: the caller may open one (counted as open)
    unavailable_s: float = 0.0       # connecting is backing off: retry after this long
    limited: bool = False            # ... because the server refused: it is at its connection limit


class Release(Message):
    """A holder is done. With a pooled connection: give it back, or say it was discarded."""

    reply: Any
    conn: Any = None                 # returned to the idle pool
    discarded: bool = False          # the holder's connection was closed (or never opened)
    connect_failed: bool = False     # opening a connection failed: back off
    connect_limited: bool = False    # ... refused by the server's connection limit (53300)


class Withdraw(Message):
    """A waiter or holder left: its caller was cancelled (or its slot was never taken)."""

    reply: Any
    reason: Literal["cancelled", "timeout"] = "cancelled"


class Reclaim(Message):
    """The shell takes back an offered slot nobody used (an arrival must ask meanwhile)."""

    token: Any
    lease: Any


class Taken(Message):
    """`n` offered slots were taken by callers (coalesced by the mailbox)."""

    n: int


class Replenish(Message):
    """Offer the free slots, if nobody waits (sent once at start)."""


class Clear(Message):
    reply: Any = None


class SetLimit(Message):
    """Temporarily fewer slots (holders above the new limit finish); None: the configured value."""

    reply: Any = None
    max_concurrent: int | None = None


class DropIdle(Message):
    """Close every idle pooled connection (offered ones too): the pool reconnects on demand."""

    reply: Any = None


# --- limiter -------------------------------------------------------------------------------


class Check(Message):
    reply: Any
    policy: str
    key: str
    cost: int = 1


class PeekRate(Message):
    """What a cost-1 `Check` would answer now, spending nothing (`mon.peek_rate`)."""
    reply: Any
    policy: str
    key: str


class ResetKeys(Message):
    reply: Any = None
    policy: str | None = None
    key: str | None = None


class Done(Message):
    """Acknowledges an admin command."""


class Dropped(Message):
    """Answers `DropIdle`: how many idle connections were closed."""

    conns: int
