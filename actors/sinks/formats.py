"""What each receiver reads: pure functions from an `Alert` to the bytes its API accepts.

No I/O and no clock: the wall-clock instants (`now`, `ends_at`) come in as ISO 8601
strings, so every body is a value a test can compare.

- Alertmanager's v2 API (`POST /api/v2/alerts`): a list of postable alerts. A firing
  alert carries `endsAt` in the future (Prometheus' rule: now + 4 x the re-send
  interval) and is re-sent before then; a resolved one carries its `resolved_at`.
- Alertmanager's webhook body (version 4), for the generic webhook: one group of one
  alert, so a receiver written for Alertmanager reads it unchanged.
- Slack's incoming webhook: `text` (the notification line) plus one `section` block.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from typing import Any

import msgspec

from messages.health import SEVERITY_RANK, Alert

ZERO_TIME = "0001-01-01T00:00:00Z"   # Alertmanager's "no end" in webhook bodies
SLACK_TEXT_MAX = 3000                # a section block's text limit
ICONS = {"critical": ":red_circle:", "warning": ":warning:", "info": ":information_source:"}


class Context(msgspec.Struct, frozen=True, kw_only=True):
    """Who speaks: the `service` and `instance` labels and the dashboard link."""

    service: str = "triage"
    instance: str = "localhost"
    dashboard_url: str | None = None


def routed(alert: Alert, min_severity: str) -> bool:
    """Severity routing: a sink takes alerts at or above its `min_severity`."""
    return SEVERITY_RANK[alert.severity] >= SEVERITY_RANK[min_severity]


def labels(alert: Alert, ctx: Context) -> dict[str, str]:
    """Alertmanager labels: identity only (values that change would split the alert)."""
    out = {"alertname": alert.rule, "severity": alert.severity, "rule": alert.rule,
           "instance": ctx.instance, "service": ctx.service}
    _, _, label = alert.id.partition(":")
    if label:  # per-tier rules (`breaker_activation:batch`)
        out["tier"] = label
    return out


# Yes/no rules: the value is 1 or 0 and the threshold an internal 0.5 cut, so "value 1 vs
# threshold 0.5" tells a person nothing; their message says it all.
YES_NO_RULES = frozenset({"health_unhealthy", "breaker_open_long", "breaker_activation"})


def annotations(alert: Alert) -> dict[str, str]:
    if alert.rule in YES_NO_RULES:
        return {"summary": alert.message, "description": alert.message}
    return {"summary": alert.message,
            "description": f"{alert.message} (value {show(alert.value)}, threshold {show(alert.threshold)})"}


def show(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={show(v)}" for k, v in value.items()) or "-"
    return "-" if value is None else str(value)


def alertmanager_alert(alert: Alert, ctx: Context, ends_at: str) -> dict[str, Any]:
    """One postable alert; `ends_at` is the resolve time, or the horizon while firing."""
    out = {"labels": labels(alert, ctx), "annotations": annotations(alert),
           "startsAt": alert.started_at, "endsAt": ends_at}
    if ctx.dashboard_url:
        out["generatorURL"] = ctx.dashboard_url
    return out


def alertmanager_body(alerts: list[dict[str, Any]]) -> bytes:
    return msgspec.json.encode(alerts)


def webhook_body(alert: Alert, ctx: Context) -> bytes:
    """Alertmanager's webhook payload (version 4) for a group of one alert."""
    item = alertmanager_alert(alert, ctx, alert.resolved_at if alert.state == "resolved" and alert.resolved_at
                              else ZERO_TIME)
    item["status"] = alert.state
    item["fingerprint"] = hashlib.sha256(alert.id.encode()).hexdigest()[:16]
    item.setdefault("generatorURL", "")
    group = {"alertname": alert.rule}
    return msgspec.json.encode({
        "version": "4", "groupKey": f'{{}}:{{alertname="{alert.rule}"}}', "truncatedAlerts": 0,
        "status": alert.state, "receiver": ctx.service, "groupLabels": group,
        "commonLabels": item["labels"], "commonAnnotations": item["annotations"],
        "externalURL": ctx.dashboard_url or "", "alerts": [item]})


def slack_line(alert: Alert, ctx: Context) -> str:
    """One line a person can read: severity, rule, value vs threshold (not for a yes/no rule),
    dashboard link."""
    resolved = alert.state == "resolved"
    icon, state = (":white_check_mark:", "RESOLVED") if resolved else (ICONS[alert.severity], alert.severity.upper())
    measured = "" if alert.rule in YES_NO_RULES else \
        f" — value {show(alert.value)} vs threshold {show(alert.threshold)}"
    line = f"{icon} [{state}] {alert.id}: {alert.message}{measured} ({ctx.service} on {ctx.instance})"
    if ctx.dashboard_url:
        line += f" <{ctx.dashboard_url}|dashboard>"
    return line[:SLACK_TEXT_MAX]


def slack_body(alert: Alert, ctx: Context) -> bytes:
    line = slack_line(alert, ctx)
    return msgspec.json.encode({"text": line,
                                "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": line}}]})


def signature(body: bytes, secret: str) -> str:
    """The signature header's value: `sha256=` + hex HMAC-SHA256 of the exact body bytes."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: str, header: str) -> bool:
    """What a receiver does (constant-time compare), here so the README's recipe is tested."""
    return hmac.compare_digest(signature(body, secret), header)
