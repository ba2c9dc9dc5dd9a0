"""Alert rules core: fires once after exactly its duration, resolves once, never flaps."""

from __future__ import annotations

import pytest
from msgspec.structs import replace

from actors.alerts import AlertState, SignalValues, active, step, wakeup
from actors.runtime.actor import Emit, Send
from messages.commands import GetSnapshot, Tick
from messages.config import AlertRule, AlertsConfig

RULES = AlertsConfig().rules


def new(**rule_overrides) -> AlertState:
    rules = dict(RULES)
    for name, changes in rule_overrides.items():
        rules[name] = replace(rules[name], **changes)
    return AlertState.initial(AlertsConfig(rules=rules, summary_every_s=1e9), 0.0, wall=lambda now: now)


def alerts(effects) -> list:
    return [e.event for e in effects if isinstance(e, Emit)]


def run(s: AlertState, timeline: list[tuple[float, dict]]) -> tuple[AlertState, list]:
    """Feed samples at given instants, with Ticks at every wake-up in between."""
    out = []
    for at, values in timeline:
        while wakeup(s) <= at:
            t = wakeup(s)
            s, eff = step(s, Tick(), t)
            out += [(t, a) for a in alerts(eff)]
        s, eff = step(s, SignalValues(values), at)
        out += [(at, a) for a in alerts(eff)]
    return s, out


# rule name, alert id, a value that fires, a value that clears
CASES = [
    ("health_unhealthy", "health_unhealthy", 1.0, 0.0),
    ("breaker_open_long", "breaker_open_long:database", 1.0, 0.0),
    ("db_usage_critical", "db_usage_critical", 95.0, 50.0),
    ("error_rate_critical", "error_rate_critical", 0.2, 0.0),
    ("p95_slow", "p95_slow", 4.0, 1.0),
    ("queue_depth_high", "queue_depth_high", 150.0, 10.0),
    ("rate_limit_violations_high", "rate_limit_violations_high", 500.0, 0.0),
    ("breaker_activation", "breaker_activation:critical", 1.0, 0.0),
    ("memory_high", "memory_high", 95.0, 50.0),
]


@pytest.mark.parametrize(("rule", "alert_id", "hot", "cold"), CASES)
def test_alerts_each_rule_fires_after_exactly_its_duration_once(rule, alert_id, hot, cold):
    r = RULES[rule]
    s = new()
    s, out = run(s, [(10.0, {alert_id: hot}), (10.0 + r.for_s + 50, {alert_id: hot})])
    assert [(t, a.state) for t, a in out] == [(10.0 + r.for_s, "firing")]
    a = out[0][1]
    assert (a.id, a.rule, a.severity, a.threshold) == (alert_id, rule, r.severity, r.threshold)
    assert [x.id for x in active(s, 100.0)] == [alert_id]


@pytest.mark.parametrize(("rule", "alert_id", "hot", "cold"), CASES)
def test_alerts_each_rule_resolves_once_after_clear_duration(rule, alert_id, hot, cold):
    r = RULES[rule]
    s = new()
    t_fire = 10.0 + r.for_s
    s, out = run(s, [(10.0, {alert_id: hot}), (t_fire, {alert_id: hot}), (t_fire + 5, {alert_id: cold}),
                     (t_fire + 5 + r.clear_for_s + 100, {alert_id: cold})])
    assert [(t, a.state) for t, a in out] == [(t_fire, "firing"), (t_fire + 5 + r.clear_for_s, "resolved")]
    assert out[1][1].resolved_at is not None
    assert active(s, 1e6) == []


@pytest.mark.parametrize(("rule", "alert_id", "hot", "cold"), CASES)
def test_alerts_value_oscillating_around_threshold_does_not_flap(rule, alert_id, hot, cold):
    r = RULES[rule]
    s = new()
    between = (r.threshold + r.clear_threshold) / 2 if r.threshold != r.clear_threshold else None
    t = 0.0
    timeline = [(t, {alert_id: hot})]
    t += r.for_s
    timeline.append((t, {alert_id: hot}))
    for i in range(50):  # oscillate: above the threshold, then into the hysteresis band (or a blip)
        t += 1.0
        if between is not None:
            timeline.append((t, {alert_id: hot if i % 2 else between}))
        elif r.clear_for_s > 0:
            timeline.append((t, {alert_id: hot if i % 2 else cold}))  # clear blips shorter than clear_for
        else:
            timeline.append((t, {alert_id: hot}))
    s, out = run(s, timeline)
    assert [a.state for _, a in out] == ["firing"]


def test_alerts_pending_that_clears_early_never_fires():
    s = new()
    s, out = run(s, [(0.0, {"p95_slow": 4.0}), (59.0, {"p95_slow": 1.0}), (500.0, {"p95_slow": 1.0})])
    assert out == []


def test_alerts_missing_signal_reads_as_cleared():
    s = new()
    s, out = run(s, [(0.0, {"breaker_activation:batch": 1.0}), (1.0, {})])
    assert [a.state for _, a in out] == ["firing", "resolved"]


def test_alerts_disabled_rule_never_fires():
    s = new(queue_depth_high={"enabled": False})
    s, out = run(s, [(0.0, {"queue_depth_high": 500.0}), (1000.0, {"queue_depth_high": 500.0})])
    assert out == []


def test_alerts_info_summary_is_periodic_and_never_active():
    s = AlertState.initial(AlertsConfig(summary_every_s=60.0), 0.0, wall=lambda now: now)
    assert wakeup(s) == 60.0
    s, eff = step(s, SignalValues({}, {"p95_5m_s": 0.12}), 10.0)
    assert alerts(eff) == []
    s, eff = step(s, Tick(), 60.0)
    (summary,) = alerts(eff)
    assert summary.severity == "info" and "p95_5m_s=0.12" in summary.message
    assert active(s, 61.0) == [] and wakeup(s) == 120.0


def test_alerts_snapshot_lists_active_alerts():
    s = new()
    s, _ = run(s, [(0.0, {"breaker_activation:critical": 1.0})])
    s, eff = step(s, GetSnapshot(reply="r"), 1.0)
    (send,) = [e for e in eff if isinstance(e, Send)]
    assert [a.id for a in send.value] == ["breaker_activation:critical"]


def test_alerts_rule_config_hysteresis_is_respected():
    rule = AlertRule(severity="warning", threshold=10, clear_threshold=5, for_s=0, clear_for_s=0)
    s = AlertState.initial(AlertsConfig(rules={"queue_depth_high": rule}, summary_every_s=1e9), 0.0,
                           wall=lambda now: now)
    s, out = run(s, [(0, {"queue_depth_high": 11}), (1, {"queue_depth_high": 7}),
                     (2, {"queue_depth_high": 9}), (3, {"queue_depth_high": 4})])
    assert [(t, a.state) for t, a in out] == [(0, "firing"), (3, "resolved")]


@pytest.mark.parametrize(("alert_id", "firing", "resolved"), [
    ("breaker_activation:database", "Circuit breaker database activated", "Circuit breaker database recovered"),
    ("breaker_open_long:batch", "Circuit breaker batch open for more than 300 s",
     "Circuit breaker batch no longer open"),
    ("db_usage_critical", "Database connection usage over 90 %", "Database connection usage back under 85 %"),
    ("memory_high", "Process memory over 90 % of its limit", "Process memory back under 85 % of its limit"),
    ("error_rate_critical", "Error rate over 5 %", "Error rate back under 4 %"),
    ("p95_slow", "Response time P95 over 3 s", "Response time P95 back under 2.5 s"),
    ("health_unhealthy", "Health endpoint returning 503 (unhealthy)",
     "Health endpoint no longer unhealthy (no more 503)"),
])
def test_alerts_resolved_alert_says_it_is_resolved_not_the_firing_text(alert_id, firing, resolved):
    s = new()
    s, out = run(s, [(0.0, {alert_id: 1e6}), (1000.0, {alert_id: 1e6}), (1001.0, {alert_id: 0.0}),
                     (5000.0, {alert_id: 0.0})])
    assert [(a.state, a.message) for _, a in out] == [("firing", firing), ("resolved", resolved)]
    assert out[1][1].started_at == out[0][1].started_at
