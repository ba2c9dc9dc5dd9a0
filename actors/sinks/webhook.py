"""The built-in alert sinks, and `start_sinks`, which the system calls once it is up.

- the log: every alert, one structured line (loguru), whatever else is configured;
- Alertmanager (`actors.sinks.alertmanager`): every severity, re-sent while firing;
- Slack's incoming webhook and the generic webhook (Alertmanager's webhook format,
  optional headers, an HMAC-SHA256 signature): warning and critical by default.

Each is an ordinary subscriber (`mon.subscribe` at the sink's `min_severity`) with its
own `Delivery` (bounded outbox, retries), so a slow or dead receiver loses alerts,
counted, and never stalls the alert actor or another sink.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import trio
from loguru import logger

from actors.sinks.alertmanager import AlertmanagerSink
from actors.sinks.delivery import Delivery, SinkStatistics
from actors.sinks.formats import Context, signature, slack_body, webhook_body
from messages.config import Config, SinksConfig
from messages.config import WebhookSink as WebhookConfig
from messages.health import Alert

LOG_BUFFER = 256


async def log_alerts(mon: Any, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
    log = logger.bind(actor="alerts")
    async with mon.subscribe("info", buffer=LOG_BUFFER) as alerts:
        task_status.started()
        async for alert in alerts:
            level = {"critical": "ERROR", "warning": "WARNING"}.get(alert.severity, "INFO")
            if alert.state == "resolved" and alert.rule != "summary":
                level = "INFO"
            log.log(level, "Alert {state}: {message}", state=alert.state, message=alert.message,
                    alert_id=alert.id, rule=alert.rule, severity=alert.severity, value=alert.value,
                    threshold=alert.threshold, started_at=alert.started_at, resolved_at=alert.resolved_at)


class HttpSink:
    """A subscriber that turns each alert into one body (`render`) and hands it to `delivery`."""

    def __init__(self, min_severity: str, render: Callable[[Alert], bytes], delivery: Delivery) -> None:
        self.min_severity, self.render, self.delivery = min_severity, render, delivery

    async def run(self, mon: Any, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        async with mon.subscribe(self.min_severity, buffer=self.delivery.cfg.outbox) as alerts, \
                trio.open_nursery() as nursery:
            self.delivery.subscription = alerts
            await nursery.start(self.delivery.run)
            task_status.started()
            async for alert in alerts:
                self.delivery.offer(self.render(alert))


def slack_sink(cfg: Any, ctx: Context, transport: httpx.AsyncBaseTransport | None = None) -> HttpSink:
    delivery = Delivery("slack", cfg.url, cfg.delivery, transport=transport)
    return HttpSink(cfg.min_severity, lambda alert: slack_body(alert, ctx), delivery)


def webhook_sink(cfg: WebhookConfig, ctx: Context,
                 transport: httpx.AsyncBaseTransport | None = None) -> HttpSink:
    secret, header = cfg.secret, cfg.signature_header
    sign = (lambda body: {header: signature(body, secret)}) if secret else None
    delivery = Delivery("webhook", cfg.url or "", cfg.delivery, headers=cfg.headers, sign=sign,
                        transport=transport)
    return HttpSink(cfg.min_severity, lambda alert: webhook_body(alert, ctx), delivery)


class Sinks:
    """The running receivers; `statistics()` is what `/metrics` shows (trio's convention)."""

    def __init__(self, sinks: dict[str, Any]) -> None:
        self.sinks = sinks

    def __getitem__(self, name: str) -> Any:
        return self.sinks[name]

    def statistics(self) -> tuple[SinkStatistics, ...]:
        return tuple(s.delivery.statistics() for s in self.sinks.values())


def context(s: SinksConfig) -> Context:
    return Context(service=s.service, instance=s.instance or socket.gethostname(), dashboard_url=s.dashboard_url)


def webhook_config(config: Config) -> WebhookConfig:
    """`[sinks.webhook]`, or the older `[alerts] webhook_url` with its timeout and retries."""
    hook, old = config.sinks.webhook, config.alerts
    if hook.url or not old.webhook_url:
        return hook
    delivery = msgspec.structs.replace(hook.delivery, timeout_s=old.webhook_timeout_s, retries=old.webhook_retries)
    return msgspec.structs.replace(hook, url=old.webhook_url, delivery=delivery)


def build_sinks(config: Config) -> Sinks:
    s, ctx, hook = config.sinks, context(config.sinks), webhook_config(config)
    sinks: dict[str, Any] = {}
    if s.alertmanager.url:
        sinks["alertmanager"] = AlertmanagerSink(s.alertmanager, ctx)
    if s.slack.url:
        sinks["slack"] = slack_sink(s.slack, ctx)
    if hook.url:
        sinks["webhook"] = webhook_sink(hook, ctx)
    return Sinks(sinks)


async def start_sinks(config: Config, mon: Any, nursery: trio.Nursery) -> None:
    await nursery.start(log_alerts, mon)
    sinks = build_sinks(config)
    mon.sinks = sinks
    for sink in sinks.sinks.values():
        await nursery.start(sink.run, mon)
