"""Built-in alert sinks: structured log lines, and a webhook that never blocks the system.

Both are ordinary subscribers (`mon.subscribe`), so a slow sink loses alerts
(counted) rather than stalling the alert actor.

Webhook: each alert is POSTed as JSON to `ALERT_WEBHOOK_URL`; a failed POST
(connection error, timeout, non-2xx) is retried with exponential backoff (0.5 s,
1 s, 2 s… up to `webhook_retries` times) before it is given up and counted.
Deliveries run one at a time, in order, from a bounded queue.
"""

from __future__ import annotations

from typing import Any

import msgspec
import trio
from loguru import logger

from messages.config import Config
from messages.health import Alert

WEBHOOK_BUFFER = 256


async def log_alerts(mon: Any, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
    log = logger.bind(actor="alerts")
    async with mon.subscribe("info", buffer=WEBHOOK_BUFFER) as alerts:
        task_status.started()
        async for alert in alerts:
            level = {"critical": "ERROR", "warning": "WARNING"}.get(alert.severity, "INFO")
            if alert.state == "resolved" and alert.rule != "summary":
                level = "INFO"
            log.log(level, "Alert {state}: {message}", state=alert.state, message=alert.message,
                    alert_id=alert.id, rule=alert.rule, severity=alert.severity, value=alert.value,
                    threshold=alert.threshold, started_at=alert.started_at, resolved_at=alert.resolved_at)


class WebhookSink:
    """POSTs alerts to one URL; `delivered`, `failed` and the subscription's `dropped` count."""

    def __init__(self, url: str, timeout_s: float = 5.0, retries: int = 5,
                 backoff_s: float = 0.5) -> None:
        self.url, self.timeout_s, self.retries, self.backoff_s = url, timeout_s, retries, backoff_s
        self.delivered = self.failed = 0
        self.subscription: Any = None

    async def run(self, mon: Any, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        import httpx

        async with mon.subscribe("info", buffer=WEBHOOK_BUFFER) as alerts, \
                httpx.AsyncClient(timeout=self.timeout_s) as client:
            self.subscription = alerts
            task_status.started()
            async for alert in alerts:
                await self._deliver(client, alert)

    async def _deliver(self, client: Any, alert: Alert) -> None:
        body = msgspec.json.encode(alert)
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                response = await client.post(self.url, content=body,
                                             headers={"content-type": "application/json"})
                if 200 <= response.status_code < 300:
                    self.delivered += 1
                    return
                why = f"HTTP {response.status_code}"
            except Exception as exc:  # connection refused, timeout, bad URL: all retried
                why = type(exc).__name__
            if attempt < self.retries:
                await trio.sleep(delay)
                delay = min(delay * 2, 30.0)
        self.failed += 1
        logger.bind(actor="alerts").warning("Alert webhook gave up after {n} attempts: {why}",
                                            n=self.retries + 1, why=why, alert_id=alert.id)


async def start_sinks(config: Config, mon: Any, nursery: trio.Nursery) -> None:
    await nursery.start(log_alerts, mon)
    if config.alerts.webhook_url:
        sink = WebhookSink(config.alerts.webhook_url, config.alerts.webhook_timeout_s,
                           config.alerts.webhook_retries)
        mon.webhook = sink
        await nursery.start(sink.run, mon)
