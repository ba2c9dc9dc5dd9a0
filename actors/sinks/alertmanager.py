"""The Alertmanager sink: `POST /api/v2/alerts`, and re-sent while firing.

Alertmanager resolves an alert on its own once its `endsAt` has passed. Prometheus
therefore re-sends every firing alert each `resend_delay` (1 min) with `endsAt` =
now + 4 x that delay; Triage does the same (`resend_s`), so a firing alert stays
firing while Triage runs and ends by itself a few minutes after Triage dies. A
resolve is sent once, with `endsAt` = the time it resolved. Alertmanager receives
every severity by default and routes by its own configuration.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import trio

from actors.sinks.delivery import Delivery
from actors.sinks.formats import Context, alertmanager_alert, alertmanager_body
from messages.config import AlertmanagerSink as AlertmanagerConfig
from messages.health import Alert

API = "/api/v2/alerts"


def endpoint(url: str) -> str:
    """The base URL (`http://am:9093`) or the full API URL, either way."""
    url = url.rstrip("/")
    return url if url.endswith(API) else url + API


def track(firing: dict[str, Alert], alert: Alert) -> dict[str, Alert]:
    """The alerts to re-send. A point event (firing with `resolved_at`, the summary) is not one."""
    out = dict(firing)
    if alert.state == "firing" and alert.resolved_at is None:
        out[alert.id] = alert
    else:
        out.pop(alert.id, None)
    return out


def horizon(now: datetime, resend_s: float) -> str:
    return iso(now + timedelta(seconds=4 * resend_s))


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def body(alerts: list[Alert], ctx: Context, now: datetime, resend_s: float) -> bytes:
    return alertmanager_body([
        alertmanager_alert(a, ctx, a.resolved_at if a.resolved_at else horizon(now, resend_s))
        for a in alerts])


class AlertmanagerSink:
    """Subscribes at `min_severity`, posts each alert, re-sends the firing ones."""

    def __init__(self, cfg: AlertmanagerConfig, ctx: Context,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        if not cfg.url:
            raise ValueError("AlertmanagerSink needs sinks.alertmanager.url")
        self.cfg, self.ctx = cfg, ctx
        self.delivery = Delivery("alertmanager", endpoint(cfg.url), cfg.delivery, transport=transport)
        self.firing: dict[str, Alert] = {}

    async def run(self, mon: Any, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        async with mon.subscribe(self.cfg.min_severity, buffer=self.cfg.delivery.outbox) as alerts, \
                trio.open_nursery() as nursery:
            self.delivery.subscription = alerts
            await nursery.start(self.delivery.run)
            nursery.start_soon(self._resend)
            task_status.started()
            async for alert in alerts:
                self.firing = track(self.firing, alert)
                self.delivery.offer(body([alert], self.ctx, datetime.now(UTC), self.cfg.resend_s))

    async def _resend(self) -> None:
        while True:
            await trio.sleep(self.cfg.resend_s)
            if self.firing:
                self.delivery.offer(body(list(self.firing.values()), self.ctx, datetime.now(UTC),
                                         self.cfg.resend_s))
