"""The receivers' bodies as values: pure functions, no I/O, no clock."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime

from actors.sinks import signature, verify
from actors.sinks.alertmanager import body, endpoint, track
from actors.sinks.formats import Context, routed, slack_body, webhook_body
from messages.health import Alert

CTX = Context(service="vet", instance="web-1", dashboard_url="https://vet.example/dashboard")


def alert(state: str = "firing", **kw) -> Alert:
    fields = dict(id="p95_slow", rule="p95_slow", severity="warning", state=state, message="P95 over 3 s",
                  value=3.51234, threshold=3.0, started_at="2026-12-02T00:00:00.000Z",
                  resolved_at="2026-12-02T00:05:00.000Z" if state == "resolved" else None)
    return Alert(**{**fields, **kw})


def test_sinks_signature_is_hmac_sha256_of_the_exact_body():
    raw = b'{"version":"4"}'
    assert signature(raw, "k") == "sha256=" + hmac.new(b"k", raw, hashlib.sha256).hexdigest()
    assert verify(raw, "k", signature(raw, "k"))
    assert not verify(raw + b" ", "k", signature(raw, "k"))
    assert not verify(raw, "other", signature(raw, "k"))


def test_sinks_routing_by_min_severity():
    got = {(sev, floor): routed(alert(severity=sev), floor)
           for sev in ("info", "warning", "critical") for floor in ("info", "warning", "critical")}
    assert [k for k, v in got.items() if v] == [("info", "info"), ("warning", "info"), ("warning", "warning"),
                                                 ("critical", "info"), ("critical", "warning"),
                                                 ("critical", "critical")]


def test_sinks_alertmanager_endpoint_and_horizon():
    assert [endpoint(u) for u in ("http://am:9093", "http://am:9093/", "http://am:9093/api/v2/alerts")] == [
        "http://am:9093/api/v2/alerts"] * 3
    now = datetime(2026, 12, 2, 0, 1, tzinfo=UTC)
    firing, resolved = (json.loads(body([a], CTX, now, 60.0))[0] for a in (alert(), alert("resolved")))
    assert (firing["endsAt"], resolved["endsAt"]) == ("2026-12-02T00:05:00.000Z", "2026-12-02T00:05:00.000Z")
    assert "tier" not in firing["labels"]  # a rule without a label has no tier
    assert firing["annotations"]["description"] == "P95 over 3 s (value 3.512, threshold 3)"


def test_sinks_alertmanager_tracks_firing_until_resolved_and_never_a_point_event():
    firing = track({}, alert())
    assert list(firing) == ["p95_slow"]
    assert track(firing, alert("resolved")) == {}
    summary = alert(id="summary", rule="summary", severity="info", resolved_at="2026-12-02T00:00:00.000Z")
    assert track({}, summary) == {}


def test_sinks_webhook_resolved_body_and_slack_line():
    hook = json.loads(webhook_body(alert("resolved"), CTX))
    assert (hook["status"], hook["alerts"][0]["status"], hook["alerts"][0]["endsAt"]) == (
        "resolved", "resolved", "2026-12-02T00:05:00.000Z")
    assert hook["groupKey"] == '{}:{alertname="p95_slow"}'
    slack = json.loads(slack_body(alert(severity="critical"), CTX))
    assert slack["text"] == (":red_circle: [CRITICAL] p95_slow: P95 over 3 s — value 3.512 vs threshold 3 "
                             "(vet on web-1) <https://vet.example/dashboard|dashboard>")
    assert slack["blocks"] == [{"type": "section", "text": {"type": "mrkdwn", "text": slack["text"]}}]


def test_sinks_yes_no_rules_read_without_a_value_and_a_threshold():
    """`health_unhealthy`, `breaker_*`: the value is 1 or 0 and the threshold an internal 0.5 cut;
    "value 1 vs threshold 0.5" means nothing to a person paged at 3 a.m., so neither is shown."""
    for rule, ident in (("health_unhealthy", "health_unhealthy"), ("breaker_open_long", "breaker_open_long:db"),
                        ("breaker_activation", "breaker_activation:analytics")):
        a = alert(id=ident, rule=rule, severity="critical", message="It happened", value=1.0, threshold=0.5)
        text = json.loads(slack_body(a, CTX))["text"]
        assert text == (f":red_circle: [CRITICAL] {ident}: It happened (vet on web-1) "
                        "<https://vet.example/dashboard|dashboard>"), text
        described = json.loads(body([a], CTX, datetime(2026, 12, 2, tzinfo=UTC), 60.0))[0]["annotations"]
        assert described["description"] == "It happened", described
