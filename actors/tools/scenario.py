"""Scripted fault scenarios: TOML timelines of faults and the expectations they must meet.

A scenario file:

    name = "database down and back"
    duration_s = 15                 # how long the load runs
    rate_per_s = 30                 # open-loop arrivals over the reference routes
    [config]                        # Config overrides, as in TRIAGE_CONFIG
    health_check_interval_s = 0.5
    [config.tiers.database]
    recovery_timeout_s = 2.0

    [[step]]                        # at t seconds apply or remove a fault
    at_s = 3
    apply = { kind = "down" }       # any actors.faults fault: down, latency, timeout, reset_peer,
                                    # bandwidth, slow_close, limit_data, terminate_backends,
                                    # exhaust_connections (Toxiproxy's parameter names)
    [[step]]
    at_s = 7
    remove = "down"                 # or remove = "all"

    [[expect]]                      # must hold at some instant in [at_s, at_s + within_s]
    at_s = 3
    within_s = 2
    health = "unhealthy"            # and/or: breaker = { database = "open" },
                                    #         alert_firing = "breaker_activation:database",
                                    #         alert_resolved = "...", http_status = 503

    [[expect]]                      # reached within within_s, then held for for_s without a break
    at_s = 7
    within_s = 4
    breaker_stays = { database = "closed" }
    for_s = 4

Expectations are checked against the running system itself (the health actor's
report, the breakers' published states, the alerts seen), not against logs.

A fleet: `instances = 3` starts three instances of the service (each with its own fault
proxy in front of the database, load spread over them round robin, as a load balancer
does); with `[config.fleet]` they share a Redis (each gets `instance_id = "instance-<n>"`
and the run's own random `key_prefix`, deleted afterwards). A step or an expectation names
the instances it is for, 1-based; without `instance` it is for every one of them:

    instances = 3
    [config.fleet]
    redis_url = "redis://127.0.0.1:6379/0"
    [[step]]
    at_s = 2
    instance = [1, 2]
    apply = { kind = "down" }
    [[expect]]
    at_s = 2
    within_s = 3
    instance = 3                    # opened by the fleet's quorum, without a failure of its own
    breaker = { database = "open" }
"""

from __future__ import annotations

import tomllib
from typing import Any

import msgspec
import trio

from actors.faults import AnyFault
from messages.config import _convert
from messages.events import BreakerTransition
from messages.health import Alert

POLL_S = 0.05


Instances = int | list[int] | None   # 1-based; None: every instance


def chosen(instance: Instances, n: int) -> list[int]:
    """The 0-based indexes an `instance` field names; ValueError for one outside 1..n."""
    if instance is None:
        return list(range(n))
    picked = [instance] if isinstance(instance, int) else list(instance)
    if not picked or any(not 1 <= i <= n for i in picked):
        raise ValueError(f"instance must name instances in 1..{n}, got {instance!r}")
    return [i - 1 for i in picked]


class Step(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    at_s: float
    apply: AnyFault | None = None
    remove: str | None = None
    instance: Instances = None


class Expect(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    at_s: float
    within_s: float = 1.0
    health: str | list[str] | None = None     # one status, or any of several
    http_status: int | None = None
    breaker: dict[str, str] = {}
    alert_firing: str | None = None
    alert_resolved: str | None = None
    # Reached at some instant in the window, then held without a break for `for_s` from that
    # instant on: "recovered" means "from then on", not "at some instant".
    breaker_stays: dict[str, str] = {}
    for_s: float = 0.0
    instance: Instances = None

    def __post_init__(self) -> None:
        if self.breaker_stays and not self.for_s > 0:
            raise ValueError("breaker_stays needs for_s > 0")

    def describe(self) -> str:
        parts = [f"health = {self.health!r}"] if self.health else []
        parts += [f"http_status = {self.http_status}"] if self.http_status else []
        parts += [f"breaker.{t} = {s!r}" for t, s in self.breaker.items()]
        parts += [f"alert {self.alert_firing!r} firing"] if self.alert_firing else []
        parts += [f"alert {self.alert_resolved!r} resolved"] if self.alert_resolved else []
        stays = [f"breaker.{t} stays {s!r} for {self.for_s:g} s" for t, s in self.breaker_stays.items()]
        where = "" if self.instance is None else f"instance {self.instance}: "
        return where + " and ".join(parts + stays) + f" within {self.within_s:g} s of t={self.at_s:g}"


class ScenarioFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    description: str = ""
    duration_s: float
    rate_per_s: float = 20.0
    config: dict[str, Any] = {}
    instances: int = 1
    step: list[Step] = []
    expect: list[Expect] = []

    def __post_init__(self) -> None:
        if not isinstance(self.instances, int) or not 1 <= self.instances <= 16:
            raise ValueError(f"instances must be in 1..16, got {self.instances!r}")
        for item in (*self.step, *self.expect):
            chosen(item.instance, self.instances)


def load(path: str) -> ScenarioFile:
    with open(path, "rb") as f:
        return msgspec.convert(tomllib.load(f), ScenarioFile)


def config_for(scenario: ScenarioFile, database_url: str | None,
               faults_database_url: str | None = None, *, index: int = 0,
               key_prefix: str | None = None) -> Any:
    """The Config of instance `index` (0-based): the scenario's, with faults on; in a fleet,
    its own instance id and the run's key prefix. `faults_database_url`: where server-side
    faults connect (straight to PostgreSQL when `database_url` goes through PgBouncer);
    None: `database_url`."""
    raw = {**scenario.config, "faults": {"enabled": True, "database_url": faults_database_url}}
    if database_url:
        raw["database_url"] = database_url
    raw["database"] = {**raw.get("database", {}), "embedded": database_url is None}
    if "fleet" in raw:
        raw["fleet"] = {**raw["fleet"], "instance_id": f"instance-{index + 1}",
                        **({"key_prefix": key_prefix} if key_prefix else {})}
    return _convert(raw)


class Observer:
    """Everything seen while the scenario runs: transitions, alerts, and per-second health."""

    def __init__(self, mon: Any, start: float, label: str = "") -> None:
        self.mon, self.start, self.label = mon, start, label
        self.lines: list[tuple[float, str]] = []
        self.alerts: list[Alert] = []
        self.transitions: list[tuple[float, str, str]] = []  # (t, tier, to_state)

    def note(self, text: str) -> None:
        self.lines.append((trio.current_time() - self.start, f"{self.label}{text}"))

    async def watch_events(self) -> None:
        async with self.mon.events(1024) as events:
            async for ev in events:
                if isinstance(ev, BreakerTransition):
                    self.transitions.append((ev.at - self.start, ev.tier, ev.to_state))
                    self.note(f"breaker {ev.tier}: {ev.from_state.upper()} -> {ev.to_state.upper()} ({ev.reason})")
                elif isinstance(ev, Alert) and ev.rule != "summary":
                    self.alerts.append(ev)
                    self.note(f"alert {ev.severity} {ev.state}: {ev.id} — {ev.message}")

    async def sample_health(self) -> None:
        last = None
        while True:
            r = self.mon.health_report.value
            code = r.http_status()
            if (r.status, code) != last:
                self.note(f"health {r.status} (HTTP {code})"
                          + (f": {'; '.join(d.reason for d in r.degradation)}" if r.degradation else ""))
                last = (r.status, code)
            await trio.sleep(POLL_S)

    def holds(self, e: Expect) -> bool:
        r = self.mon.health_report.value
        if e.health and r.status not in ([e.health] if isinstance(e.health, str) else e.health):
            return False
        if e.http_status and r.http_status() != e.http_status:
            return False
        wanted = {**e.breaker, **e.breaker_stays}
        if any(self.mon.breakers[t].state != s for t, s in wanted.items()):
            return False
        if e.alert_firing and not any(a.id == e.alert_firing and a.state == "firing" for a in self.alerts):
            return False
        return not (e.alert_resolved and not any(
            a.id == e.alert_resolved and a.state == "resolved" for a in self.alerts))


async def check(observer: Observer, e: Expect, results: list[tuple[Expect, bool, float | None]]) -> None:
    await trio.sleep_until(observer.start + e.at_s)
    reached = None
    with trio.move_on_at(observer.start + e.at_s + e.within_s):
        while not observer.holds(e):
            await trio.sleep(POLL_S)
        reached = trio.current_time() - observer.start
    if reached is None:
        results.append((e, False, None))
        observer.note(f"expect FAIL: {e.describe()}")
        return
    broken = await stays(observer, e, reached) if e.breaker_stays else None
    results.append((e, broken is None, reached))
    if broken is None:
        observer.note(f"expect PASS: {e.describe()}")
    else:
        observer.note(f"expect FAIL: {e.describe()} (reached at t={reached:.2f}, left at t={broken:.2f})")


async def stays(observer: Observer, e: Expect, reached: float) -> float | None:
    """Watch `breaker_stays` for `for_s` from `reached`; the instant a breaker left its state, or None.

    Transitions are read from the event stream as well as polled, so a flip shorter than a
    poll (CLOSED -> OPEN -> HALF_OPEN -> CLOSED in 50 ms) still counts as a break.
    """
    until = observer.start + reached + e.for_s
    seen = len(observer.transitions)
    while trio.current_time() < until:
        await trio.sleep(min(POLL_S, max(until - trio.current_time(), 0.0)))
        for t, tier, to in observer.transitions[seen:]:
            if tier in e.breaker_stays and to != e.breaker_stays[tier] and t <= reached + e.for_s:
                return t
        seen = len(observer.transitions)
        now = trio.current_time() - observer.start
        if any(observer.mon.breakers[t].state != s for t, s in e.breaker_stays.items()):
            return now
    return None


async def run_steps(observer: Observer, steps: list[Step]) -> None:
    mon = observer.mon
    for step in sorted(steps, key=lambda s: s.at_s):
        await trio.sleep_until(observer.start + step.at_s)
        if step.apply is not None:
            await mon.inject(step.apply)
            observer.note(f"fault applied: {msgspec.json.encode(step.apply).decode()}")
        if step.remove == "all":
            await mon.clear_faults()
            observer.note("faults cleared")
        elif step.remove:
            await mon.remove_fault(step.remove)
            observer.note(f"fault removed: {step.remove}")
