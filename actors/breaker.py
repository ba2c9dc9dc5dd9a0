"""Circuit breaker for one tier: the pure core.

Theory of operation (resilience4j's state machine, count-based in a time window):

    CLOSED    --failure_threshold failures within monitoring_period_s-->  OPEN
    OPEN      --recovery_timeout_s elapsed (on a Permit or a Tick)------>  HALF_OPEN
    HALF_OPEN --success_threshold trial successes----------------------->  CLOSED
    HALF_OPEN --any trial failure (fresh recovery timer)---------------->  OPEN
    any       --reset()------------------------------------------------->  CLOSED
    any       --force_open(): held OPEN until reset()------------------->  OPEN

Shared with a fleet (`FleetShared(shared=True)`, sent by the fleet agent while Redis answers):

    CLOSED    --FleetQuorum: a majority of live instances report OPEN-->  OPEN
    OPEN      --recovery timeout elapsed: emits ProbeDue, stays OPEN--->  (waits)
    OPEN      --ProbeLease won for this OPEN epoch------------------->  HALF_OPEN (the one prober)
    OPEN      --FleetVerdict ok (the prober's trial succeeded)-------->  HALF_OPEN, or CLOSED
                                                                         with follow = "close"
    OPEN      --FleetVerdict failed: a fresh recovery timer---------->  OPEN
    FleetShared(shared=False) (Redis down): local again; a due recovery goes HALF_OPEN at once.

Local evidence opens a shared breaker exactly as an unshared one.

OPEN never goes straight to CLOSED except by an explicit reset (or a fleet verdict with
follow = "close"). HALF_OPEN
admits `half_open_max_calls` trials; a trial that ends without a verdict
(cancelled, an ignored exception, refused later by the queue) gives its trial
slot back, so HALF_OPEN cannot get stuck.

Every permit carries the breaker's `epoch`, which changes on each transition;
an outcome from an older epoch is counted in the totals but cannot move the
state (a slow call started before a reset must not re-open the breaker).

Callers don't ask for a permit while the breaker is CLOSED: they read the
published state and go ahead, and report the outcome afterwards. A refusal
(`refused_retry`) is decided from the published state too, when that is exact:
nothing waits in the inbox (a reset or a trial's outcome could change it). They
ask only to become a trial, or when OPEN is due for HALF_OPEN. A success in
CLOSED changes nothing but counters, so the mailbox coalesces those into one
`Successes(n)`. A failure is the slow path: it is an ask, answered once applied and published,
so the call that reaches `failure_threshold` has opened the breaker by the
time it raises to its caller, and every later admission is refused.
"""

from __future__ import annotations

import math

import msgspec
from msgspec.structs import replace

from actors.runtime.actor import Emit, Send
from messages.commands import (
    Configure,
    Done,
    FleetQuorum,
    FleetShared,
    FleetVerdict,
    ForceOpen,
    GetSnapshot,
    Outcome,
    Permit,
    Permitted,
    ProbeLease,
    Reset,
    Successes,
    Tick,
)
from messages.config import BreakerConfig, check_breaker_config
from messages.errors import CircuitOpen, ConfigError
from messages.events import BreakerTransition, ProbeDue
from messages.snapshots import BreakerSnapshot

BreakerIn = (Permit | Outcome | Successes | Reset | ForceOpen | Configure | GetSnapshot | Tick
             | FleetShared | FleetQuorum | ProbeLease | FleetVerdict)

# Retry hint when HALF_OPEN is busy with its trials: the trials decide within about this.
HALF_OPEN_BUSY_RETRY_S = 1.0


class BreakerState(msgspec.Struct, frozen=True, kw_only=True):
    tier: str
    cfg: BreakerConfig
    enabled: bool = True
    phase: str = "closed"
    forced: bool = False
    epoch: int = 0
    changed_at: float = 0.0
    retry_at: float = math.inf
    failure_times: tuple[float, ...] = ()
    trials: int = 0
    trial_successes: int = 0
    calls: int = 0
    successes: int = 0
    failures: int = 0
    ignored: int = 0
    rejections: int = 0
    openings: int = 0
    # Fleet: recovery shared with the fleet (one prober); what to do on the prober's success;
    # the recovery timeout elapsed and ProbeDue was emitted for this OPEN period.
    shared: bool = False
    follow: str = "half_open"
    probe_wanted: bool = False

    @classmethod
    def initial(cls, tier: str, cfg: BreakerConfig, *, now: float, enabled: bool = True) -> BreakerState:
        return cls(tier=tier, cfg=cfg, enabled=enabled, changed_at=now)


def _transition(s: BreakerState, to: str, now: float, reason: str, **changes) -> tuple[BreakerState, Emit]:
    event = BreakerTransition(tier=s.tier, from_state=s.phase, to_state=to, reason=reason,
                              at=now, epoch=s.epoch + 1)
    s = replace(s, phase=to, epoch=s.epoch + 1, changed_at=now, trials=0, trial_successes=0,
                failure_times=(), probe_wanted=False, **changes)
    return s, Emit(event)


def _open(s: BreakerState, now: float, reason: str, *, forced: bool = False) -> tuple[BreakerState, Emit]:
    retry_at = math.inf if forced else now + s.cfg.recovery_timeout_s
    return _transition(s, "open", now, reason, retry_at=retry_at, forced=forced,
                       openings=s.openings + 1)


def _close(s: BreakerState, now: float, reason: str) -> tuple[BreakerState, Emit]:
    return _transition(s, "closed", now, reason, retry_at=math.inf, forced=False)


def _maybe_half_open(s: BreakerState, now: float) -> tuple[BreakerState, list]:
    if s.phase == "open" and now >= s.retry_at:
        if s.shared:  # one instance of the fleet probes: wait for the lease or the verdict
            if s.probe_wanted:
                return s, []
            return replace(s, probe_wanted=True), [Emit(ProbeDue(tier=s.tier, epoch=s.epoch, at=now))]
        s, event = _transition(s, "half_open", now,
                               f"recovery timeout {s.cfg.recovery_timeout_s:g}s elapsed",
                               retry_at=math.inf)
        return s, [event]
    return s, []


def refused_retry(s: BreakerState, now: float) -> float | None:
    """The retry hint (seconds) if a Permit would be refused in state `s` at `now`, else None:
    CLOSED or disabled, a free trial in HALF_OPEN, or OPEN with its recovery timeout elapsed
    (the permit moves the breaker to HALF_OPEN first). A function of the state alone, so the
    breaker's handle can refuse from the published state without a round trip."""
    if not s.enabled or s.phase == "closed":
        return None
    if s.phase == "open":
        if s.forced:
            return s.cfg.recovery_timeout_s
        if now < s.retry_at:
            return s.retry_at - now
        # Due: HALF_OPEN next, unless the fleet shares this recovery (its prober decides soon).
        return HALF_OPEN_BUSY_RETRY_S if s.shared else None
    return HALF_OPEN_BUSY_RETRY_S if s.trials >= s.cfg.half_open_max_calls else None


def _permit(s: BreakerState, msg: Permit, now: float) -> tuple[BreakerState, list]:
    if not s.enabled or s.phase == "closed":
        return s, [Send(msg.reply, Permitted(trial=False, epoch=s.epoch))]
    s, effects = _maybe_half_open(s, now)
    retry = refused_retry(s, now)
    if retry is None:  # HALF_OPEN with a trial free
        s = replace(s, trials=s.trials + 1)
        return s, [*effects, Send(msg.reply, Permitted(trial=True, epoch=s.epoch))]
    s = replace(s, rejections=s.rejections + 1)
    return s, [*effects, Send(msg.reply, CircuitOpen(s.tier, max(retry, 0.0)))]


def _count(s: BreakerState, msg: Outcome) -> BreakerState:
    r = msg.result
    if r == "success":
        return replace(s, calls=s.calls + 1, successes=s.successes + 1)
    if r == "failure":
        return replace(s, calls=s.calls + 1, failures=s.failures + 1)
    if r == "ignored":
        return replace(s, calls=s.calls + 1, ignored=s.ignored + 1)
    return s  # cancelled / abandoned calls are not calls with a verdict


def _failure_in_closed(s: BreakerState, now: float) -> tuple[BreakerState, list]:
    horizon = now - s.cfg.monitoring_period_s
    recent = tuple(t for t in s.failure_times if t > horizon) + (now,)
    recent = recent[-s.cfg.failure_threshold:]
    if len(recent) >= s.cfg.failure_threshold:
        s, event = _open(s, now, f"{len(recent)} failures within {s.cfg.monitoring_period_s:g}s")
        return s, [event]
    return replace(s, failure_times=recent), []


def _trial_outcome(s: BreakerState, msg: Outcome, now: float) -> tuple[BreakerState, list]:
    s = replace(s, trials=max(s.trials - 1, 0))
    if msg.result == "failure":
        s, event = _open(s, now, "trial call failed")
        return s, [event]
    if msg.result == "success":
        s = replace(s, trial_successes=s.trial_successes + 1)
        if s.trial_successes >= s.cfg.success_threshold:
            s, event = _close(s, now, f"{s.trial_successes} trial call(s) succeeded")
            return s, [event]
    return s, []


def _outcome(s: BreakerState, msg: Outcome, now: float) -> tuple[BreakerState, list]:
    s = _count(s, msg)
    if not s.enabled or msg.epoch != s.epoch:
        return s, []
    if msg.trial and s.phase == "half_open":
        return _trial_outcome(s, msg, now)
    if msg.result == "failure" and s.phase == "closed":
        return _failure_in_closed(s, now)
    return s, []


def _configure(s: BreakerState, msg: Configure) -> BreakerState:
    fields = {f: getattr(msg, f) for f in ("failure_threshold", "recovery_timeout_s",
                                           "monitoring_period_s", "half_open_max_calls",
                                           "success_threshold")
              if getattr(msg, f) is not None}
    cfg = replace(s.cfg, **fields)
    check_config(s.tier, cfg)
    retry_at = s.retry_at
    if s.phase == "open" and not s.forced and "recovery_timeout_s" in fields:
        retry_at = s.changed_at + cfg.recovery_timeout_s
    return replace(s, cfg=cfg, retry_at=retry_at)


def _fleet(s: BreakerState, msg: FleetShared | FleetQuorum | ProbeLease | FleetVerdict,
           now: float) -> tuple[BreakerState, list]:
    """What the fleet agent reports (see the module's second diagram)."""
    match msg:
        case FleetShared():
            s = replace(s, shared=msg.shared, follow=msg.follow, probe_wanted=False)
            return _maybe_half_open(s, now)  # local again: a due recovery starts now
    if not s.enabled or not s.shared or s.forced:
        return s, []
    match msg:
        case FleetQuorum() if (s.phase == "closed" and msg.open >= msg.live // 2 + 1
                               and msg.epoch in (-1, s.epoch)):
            s, event = _open(s, now, f"fleet quorum ({msg.open} of {msg.live} open)")
            return s, [event]
        case ProbeLease() if s.phase == "open" and msg.epoch == s.epoch:
            s, event = _transition(s, "half_open", now,
                                   "probe lease won: this instance runs the fleet's trial",
                                   retry_at=math.inf)
            return s, [event]
        case FleetVerdict() if s.phase == "open" and msg.ok:
            reason = f"fleet probe by {msg.by or 'a peer'} succeeded"
            if s.follow == "close":
                s, event = _close(s, now, reason)
            else:
                s, event = _transition(s, "half_open", now, reason, retry_at=math.inf)
            return s, [event]
        case FleetVerdict() if s.phase == "open":  # the trial failed: a fresh recovery timer
            return replace(s, retry_at=now + s.cfg.recovery_timeout_s, probe_wanted=False), []
    return s, []


def check_config(tier: str, cfg: BreakerConfig) -> None:
    check_breaker_config(f"tiers.{tier}", cfg)


def snapshot(s: BreakerState, now: float, restarts: int = 0) -> BreakerSnapshot:
    horizon = now - s.cfg.monitoring_period_s
    return BreakerSnapshot(
        tier=s.tier, state=s.phase, enabled=s.enabled, forced=s.forced, epoch=s.epoch,
        failures_in_window=sum(1 for t in s.failure_times if t > horizon),
        failure_threshold=s.cfg.failure_threshold, recovery_timeout_s=s.cfg.recovery_timeout_s,
        monitoring_period_s=s.cfg.monitoring_period_s, changed_at=s.changed_at,
        time_in_state_s=max(now - s.changed_at, 0.0),
        retry_after_s=max(s.retry_at - now, 0.0) if s.phase == "open" and not s.forced else 0.0,
        trials_in_flight=s.trials, calls=s.calls, successes=s.successes, failures=s.failures,
        ignored=s.ignored, rejections=s.rejections, openings=s.openings, restarts=restarts,
        fleet_shared=s.shared, awaiting_probe=s.probe_wanted)


def step(s: BreakerState, msg: BreakerIn, now: float) -> tuple[BreakerState, list]:
    """No I/O, no trio: the whole behaviour of a breaker."""
    match msg:
        case Outcome():
            s, effects = _outcome(s, msg, now)
            if msg.reply is not None:  # a failure: the caller waits until it is applied
                effects = [*effects, Send(msg.reply, Done())]
            return s, effects
        case Successes():
            return replace(s, calls=s.calls + msg.n, successes=s.successes + msg.n), []
        case Permit():
            return _permit(s, msg, now)
        case Tick():
            return _maybe_half_open(s, now)
        case Reset():
            if s.phase == "closed":
                return replace(s, failure_times=()), [Send(msg.reply, Done())]
            s, event = _close(s, now, "manual reset")
            return s, [event, Send(msg.reply, Done())]
        case ForceOpen():
            s, event = _open(s, now, "forced open", forced=True)
            return s, [event, Send(msg.reply, Done())]
        case Configure():
            try:
                s = _configure(s, msg)
            except ConfigError as exc:
                return s, [Send(msg.reply, exc)]
            return s, [Send(msg.reply, Done())]
        case GetSnapshot():
            return s, [Send(msg.reply, snapshot(s, now))]
        case FleetShared() | FleetQuorum() | ProbeLease() | FleetVerdict():
            return _fleet(s, msg, now)
    raise TypeError(f"breaker cannot handle {type(msg).__name__}")


class BreakerCore:
    """The core as the shell sees it."""

    def __init__(self, tier: str) -> None:
        self.name = f"breaker.{tier}"

    step = staticmethod(step)

    @staticmethod
    def wakeup(s: BreakerState) -> float:
        return s.retry_at if s.phase == "open" and not s.probe_wanted else math.inf

    @staticmethod
    def parked(s: BreakerState) -> tuple:
        return ()

    @staticmethod
    def undelivered(reply: object, value: object) -> Outcome | None:
        """A permit nobody took: a trial slot goes back."""
        if type(value) is Permitted and value.trial:
            return Outcome(result="abandoned", trial=True, epoch=value.epoch)
        return None
