"""One condition's state machine with a `for` duration and hysteresis, shared by alerts and health.

Theory of operation. A condition is `value > threshold`; it is clear when
`value < clear_threshold` (between the two nothing changes). Written as data:

    quiet    --value > threshold-------------------------> pending (since now)
    pending  --value <= threshold------------------------> quiet
    pending  --held for for_s----------------------------> firing    change "fired"
    firing   --value < clear_threshold-------------------> clearing (since now)
    clearing --value >= clear_threshold------------------> firing    (no change)
    clearing --clear for clear_for_s---------------------> quiet     change "resolved"

So a condition fires once after exactly `for_s` and resolves once; a value
oscillating between `clear_threshold` and `threshold` cannot make it flap. A
missing value (None) reads as cleared. `deadline()` is the next instant a
transition can happen without a new value, so a shell that wakes then makes
the durations exact on trio's MockClock.
"""

from __future__ import annotations

import math
from typing import Protocol

import msgspec
from msgspec.structs import replace


class Condition(Protocol):
    threshold: float
    clear_threshold: float
    for_s: float
    clear_for_s: float


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """A condition as plain numbers (health derives them from the configuration)."""

    threshold: float
    clear_threshold: float
    for_s: float
    clear_for_s: float


class Track(msgspec.Struct, frozen=True):
    phase: str                      # quiet | pending | firing | clearing
    since: float                    # when the phase began
    value: float = 0.0              # the last value seen
    started: float = 0.0            # when the condition last went over the threshold (pending began)

    @property
    def active(self) -> bool:
        """Firing, or firing and on its way to clear."""
        return self.phase in ("firing", "clearing")


QUIET = Track("quiet", -math.inf)


def advance(t: Track, value: float | None, c: Condition, now: float) -> tuple[Track, str | None]:
    """One instant of the state machine: the new track, and "fired", "resolved" or None."""
    hot = value is not None and value > c.threshold
    cold = value is None or value < c.clear_threshold
    v = t.value if value is None else value
    match t.phase:
        case "quiet" if hot:
            t = Track("pending", now, v, now)
            return advance(t, value, c, now) if c.for_s <= 0 else (t, None)
        case "pending" if not hot:
            return Track("quiet", now, v), None
        case "pending" if now - t.since >= c.for_s:
            return Track("firing", now, v, t.started), "fired"
        case "firing" if cold:
            t = Track("clearing", now, v, t.started)
            return advance(t, value, c, now) if c.clear_for_s <= 0 else (t, None)
        case "clearing" if not cold:
            return Track("firing", t.since, v, t.started), None
        case "clearing" if now - t.since >= c.clear_for_s:
            return Track("quiet", now, v, t.started), "resolved"
    return replace(t, value=v), None


def deadline(t: Track, c: Condition) -> float:
    """When `t` changes phase if its value stays as it is (inf: never by itself)."""
    if t.phase == "pending":
        return t.since + c.for_s
    if t.phase == "clearing":
        return t.since + c.clear_for_s
    return math.inf
