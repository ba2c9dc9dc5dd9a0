"""The health rules that can degrade, held and cleared with hysteresis: the pure core.

Theory of operation. Four rules read a number that moves with load, so
judged on one reading they would flip the status on a single slow probe or a
burst: database response time, database connection usage, error rate and
queue depth. Each goes through the alert rules' state machine
(`actors.hysteresis`): the status degrades once the value has been over its
threshold for `for_s`, and recovers once it has been under
`threshold x clear_ratio` for `clear_for_s` (`Config.health.rules`). A rule
degrades the status while its track is firing or clearing.

    rule           value (None: nothing to judge)                threshold
    response_time  the last probe's SELECT 1 round trip, ms      MAX_RESPONSE_TIME
    usage          the last probe's usage % (connection_scope)   MAX_DB_USAGE_PERCENTAGE
    error_rate     the last minute's, with >= min_requests rated  health.max_error_rate
    queue_depth    requests waiting for a slot                    50

A failed probe measures nothing, so the database rules read None there
(unreachable is its own, immediate rule). `for_s` / `clear_for_s` None mean
two health-check intervals: a probe's value is held for one interval, so one
probe alone can never flip the status.
"""

from __future__ import annotations

import math
from typing import Any

from actors.hysteresis import QUIET, Limits, Track, advance, deadline
from messages.config import Config, HealthConfig
from messages.health import Degradation

QUEUE_DEPTH_DEGRADED = 50

# rule -> (component, the reason while degraded)
TEXT = {
    "response_time": ("database", "database response time over threshold"),
    "usage": ("database", "database connection usage over threshold"),
    "error_rate": ("errors", "error rate over threshold"),
    "queue_depth": ("queue", "queue depth over threshold"),
}


def limits(cfg: Config) -> dict[str, Limits]:
    """Each enabled rule's threshold, clear threshold and durations, from the configuration."""
    th, h = cfg.thresholds, cfg.health
    thresholds = {"response_time": th.max_response_time_ms, "usage": th.max_usage_percentage,
                  "error_rate": h.max_error_rate, "queue_depth": float(QUEUE_DEPTH_DEGRADED)}
    held = 2.0 * cfg.health_check_interval_s
    out = {}
    for name, threshold in thresholds.items():
        r = h.rules.get(name) or HealthConfig().rules[name]   # a Config built in code may omit one
        if r.enabled:
            out[name] = Limits(threshold=threshold, clear_threshold=threshold * r.clear_ratio,
                               for_s=held if r.for_s is None else r.for_s,
                               clear_for_s=held if r.clear_for_s is None else r.clear_for_s)
    return out


def values(inputs: Any, cfg: Config) -> dict[str, float | None]:
    """Each rule's current value (see the table in the module doc)."""
    db = inputs.database
    measured = db is not None and db.is_healthy
    w = inputs.metrics.overall.windows.get("1m") if inputs.metrics is not None else None
    enough = w is not None and w.requests - w.excluded >= cfg.health.min_requests
    return {"response_time": db.response_time_ms if measured else None,
            "usage": db.usage_percentage if measured else None,
            "error_rate": w.error_rate if enough else None,
            "queue_depth": float(inputs.queue.depth)}


def step(tracks: dict[str, Track], vals: dict[str, float | None], lims: dict[str, Limits],
         now: float) -> dict[str, Track]:
    """Every rule one instant on; quiet rules are not kept."""
    out = {}
    for name, lim in lims.items():
        t, _ = advance(tracks.get(name, QUIET), vals.get(name), lim, now)
        if t.phase != "quiet":
            out[name] = t
    return out


def wakeup(tracks: dict[str, Track], lims: dict[str, Limits]) -> float:
    """The next instant a rule changes phase by itself (a `for` or clear duration ends)."""
    return min((deadline(t, lims[n]) for n, t in tracks.items() if n in lims), default=math.inf)


def reasons(tracks: dict[str, Track], lims: dict[str, Limits]) -> list[Degradation]:
    out = []
    for name, t in tracks.items():
        if not t.active or name not in lims:
            continue
        component, text = TEXT[name]
        lim = lims[name]
        value = round(t.value, 4) if name == "error_rate" else t.value
        if name == "queue_depth":
            value = int(value)
        if t.value > lim.threshold:
            out.append(Degradation(reason=text, component=component, severity="degraded",
                                   value=value, threshold=lim.threshold))
        else:  # back under the threshold: it must get under the clear one, for clear_for_s
            out.append(Degradation(reason=f"{text}, recovering", component=component, severity="degraded",
                                   value=value, threshold=lim.clear_threshold))
    return out


def view(tracks: dict[str, Track], vals: dict[str, float | None], lims: dict[str, Limits],
         now: float) -> dict[str, Any]:
    """Every rule's state for the detailed report: phase, value, thresholds, durations."""
    out = {}
    for name, lim in lims.items():
        t = tracks.get(name, QUIET)
        out[name] = {"state": t.phase, "value": vals.get(name), "threshold": lim.threshold,
                     "clear_threshold": lim.clear_threshold, "for_s": lim.for_s,
                     "clear_for_s": lim.clear_for_s,
                     "in_state_s": None if t.phase == "quiet" else round(now - t.since, 3)}
    return out
