"""Alert rules: the pure core of the alert actor.

Theory of operation. The health actor sends a `SignalValues` after every
evaluation: the current value of every alert signal, keyed by alert id
(`rule` or `rule:label`, e.g. `breaker_activation:critical`). Each id moves
through the state machine of `actors.hysteresis` (quiet -> pending -> firing
-> clearing -> quiet): an alert fires once after exactly `for_s` over its
`threshold`, and resolves once after `clear_for_s` under its `clear_threshold`
-- with its own text ("Circuit breaker database recovered"), not the firing
one. A signal missing from a sample reads as cleared. The shell wakes the
core with a `Tick` at the next pending or clearing deadline, so durations
are exact on trio's MockClock.

The info-level summary ("trends") is emitted every `summary_every_s`; it is
a report, not a condition: it is never active.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from typing import Any

import msgspec
from msgspec.structs import replace

from actors.hysteresis import Track, advance, deadline
from actors.runtime.actor import Emit, Send
from messages.commands import GetSnapshot, Tick
from messages.config import AlertRule, AlertsConfig
from messages.health import SEVERITY_RANK, Alert

SUMMARY = "summary"

MESSAGES = {
    "health_unhealthy": "Health endpoint returning 503 (unhealthy)",
    "breaker_open_long": "Circuit breaker {label} open for more than {for_s:g} s",
    "db_usage_critical": "Database connection usage over {threshold:g} %",
    "error_rate_critical": "Error rate over {pct:g} %",
    "p95_slow": "Response time P95 over {threshold:g} s",
    "queue_depth_high": "Queue depth over {threshold:g} items",
    "rate_limit_violations_high": "Rate limit violations over {threshold:g} per hour",
    "breaker_activation": "Circuit breaker {label} activated",
    "memory_high": "Process memory over {threshold:g} % of its limit",
}

# What a resolved alert says: that it is over, not the firing text again.
RESOLVED_MESSAGES = {
    "health_unhealthy": "Health endpoint no longer unhealthy (no more 503)",
    "breaker_open_long": "Circuit breaker {label} no longer open",
    "db_usage_critical": "Database connection usage back under {clear:g} %",
    "error_rate_critical": "Error rate back under {clear_pct:g} %",
    "p95_slow": "Response time P95 back under {clear:g} s",
    "queue_depth_high": "Queue depth back under {clear:g} items",
    "rate_limit_violations_high": "Rate limit violations back under {clear:g} per hour",
    "breaker_activation": "Circuit breaker {label} recovered",
    "memory_high": "Process memory back under {clear:g} % of its limit",
}


class SignalValues(msgspec.Struct, frozen=True):
    """Signal values at one instant: alert id -> value (plus the summary's figures)."""

    values: dict[str, float]
    summary: dict[str, Any] = {}


class AlertState(msgspec.Struct, frozen=True, kw_only=True):
    cfg: AlertsConfig
    wall: Any                       # now -> epoch seconds (a pure function of now)
    tracks: dict[str, Track] = {}
    values: dict[str, float] = {}   # the last sample
    summary: dict[str, Any] = {}
    next_summary_at: float = math.inf
    fired: int = 0
    resolved: int = 0

    @classmethod
    def initial(cls, cfg: AlertsConfig, now: float, wall: Callable[[float], float]) -> AlertState:
        return cls(cfg=cfg, wall=wall, next_summary_at=now + cfg.summary_every_s)


def _rule_of(alert_id: str) -> tuple[str, str | None]:
    rule, _, label = alert_id.partition(":")
    return rule, label or None


def _message(rule: str, label: str | None, r: AlertRule, state: str = "firing") -> str:
    texts = RESOLVED_MESSAGES if state == "resolved" else MESSAGES
    default = f"{rule} resolved" if state == "resolved" else rule
    return texts.get(rule, default).format(label=label or "", threshold=r.threshold, for_s=r.for_s,
                                           pct=r.threshold * 100, clear=r.clear_threshold,
                                           clear_pct=r.clear_threshold * 100)


def iso(wall: float) -> str:
    """A wall-clock instant as people read it: ISO 8601, milliseconds, UTC."""
    return dt.datetime.fromtimestamp(wall, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _alert(s: AlertState, alert_id: str, t: Track, state: str, now: float) -> Alert:
    rule, label = _rule_of(alert_id)
    r = s.cfg.rules[rule]
    return Alert(id=alert_id, rule=rule, severity=r.severity, state=state,
                 message=_message(rule, label, r, state), value=t.value, threshold=r.threshold,
                 started_at=iso(s.wall(t.started)),
                 resolved_at=iso(s.wall(now)) if state == "resolved" else None)


def _advance(s: AlertState, alert_id: str, t: Track, value: float | None,
             now: float) -> tuple[Track, list]:
    """One id's state machine (actors.hysteresis) for one instant."""
    t, change = advance(t, value, s.cfg.rules[_rule_of(alert_id)[0]], now)
    if change == "fired":
        return t, [Emit(_alert(s, alert_id, t, "firing", now))]
    if change == "resolved":
        return t, [Emit(_alert(s, alert_id, t, "resolved", now))]
    return t, []


def _evaluate(s: AlertState, now: float) -> tuple[AlertState, list]:
    tracks, effects = {}, []
    # Causes before consequences: within one instant, warnings are emitted before criticals.
    ids = sorted(set(s.tracks) | set(s.values),
                 key=lambda i: (SEVERITY_RANK[s.cfg.rules[_rule_of(i)[0]].severity]
                                if _rule_of(i)[0] in s.cfg.rules else 9, i))
    for alert_id in ids:
        rule = _rule_of(alert_id)[0]
        if rule not in s.cfg.rules or not s.cfg.rules[rule].enabled:
            continue
        t, out = _advance(s, alert_id, s.tracks.get(alert_id, Track("quiet", now)), s.values.get(alert_id), now)
        effects += out
        if t.phase != "quiet":
            tracks[alert_id] = t
    fired = sum(1 for e in effects if e.event.state == "firing")
    s = replace(s, tracks=tracks, fired=s.fired + fired, resolved=s.resolved + len(effects) - fired)
    return s, effects


def _summary(s: AlertState, now: float) -> tuple[AlertState, list]:
    if now < s.next_summary_at:
        return s, []
    stamp = iso(s.wall(now))
    parts = ", ".join(f"{k}={v}" for k, v in s.summary.items()) or "no traffic yet"
    alert = Alert(id=SUMMARY, rule=SUMMARY, severity="info", state="firing", message=f"Trends: {parts}",
                  value=s.summary, threshold=None, started_at=stamp, resolved_at=stamp)
    return replace(s, next_summary_at=now + s.cfg.summary_every_s), [Emit(alert)]


def active(s: AlertState, now: float) -> list[Alert]:
    """Alerts firing now (a clearing one is still firing until it resolves)."""
    return [_alert(s, i, t, "firing", now) for i, t in sorted(s.tracks.items())
            if t.phase in ("firing", "clearing")]


def step(s: AlertState, msg: Any, now: float) -> tuple[AlertState, list]:
    match msg:
        case SignalValues():
            s, effects = _evaluate(replace(s, values=msg.values, summary=msg.summary or s.summary), now)
            s, more = _summary(s, now)
            return s, effects + more
        case Tick():
            s, effects = _evaluate(s, now)
            s, more = _summary(s, now)
            return s, effects + more
        case GetSnapshot():
            return s, [Send(msg.reply, active(s, now))]
    raise TypeError(f"alerts cannot handle {type(msg).__name__}")


def wakeup(s: AlertState) -> float:
    deadlines = [deadline(t, s.cfg.rules[_rule_of(alert_id)[0]]) for alert_id, t in s.tracks.items()]
    return min([s.next_summary_at, *deadlines])


class AlertsCore:
    name = "alerts"
    step = staticmethod(step)
    wakeup = staticmethod(wakeup)

    @staticmethod
    def parked(s: AlertState) -> tuple:
        return ()

    @staticmethod
    def undelivered(reply: Any, value: Any) -> None:
        return None
