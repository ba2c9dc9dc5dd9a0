"""Sink delivery on MockClock: back-off, what is retried, the bounded outbox, Alertmanager's
re-send cadence, severity routing and the /metrics counters. The receiver is an
`httpx.MockTransport` (no real I/O), so autojump is safe; real receivers are in
test_sinks_receivers.py."""

from __future__ import annotations

import json

import httpx
import prometheus_client
import pytest
import trio
import trio.testing

from actors import open_monitoring
from actors.http.prometheus import TriageCollector, new_registry
from actors.sinks import AlertmanagerSink, Delivery, Sinks, build_sinks, slack_sink, webhook_sink
from actors.sinks.delivery import backoff, verdict
from actors.sinks.formats import Context
from messages.config import AlertmanagerSink as AlertmanagerConfig
from messages.config import AlertsConfig, Config, SinkDelivery, SlackSink, WebhookSink
from messages.errors import ConfigError

DEFAULTS = SinkDelivery()
CTX = Context(service="vet", instance="host-1:8000", dashboard_url="http://dash.example/dashboard")


class Script:
    """A MockTransport handler answering a scripted sequence of statuses (then 200), noting when."""

    def __init__(self, *answers: int | Exception, retry_after: str | None = None) -> None:
        self.answers, self.retry_after = list(answers), retry_after
        self.calls: list[tuple[float, dict | list]] = []
        self.hang = False

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append((trio.current_time(), json.loads(request.content)))
        if self.hang:
            await trio.sleep_forever()
        answer = self.answers.pop(0) if self.answers else 200
        if isinstance(answer, Exception):
            raise answer
        headers = {"retry-after": self.retry_after} if self.retry_after else {}
        return httpx.Response(answer, headers=headers)

    def times(self) -> list[float]:
        start = self.calls[0][0]
        return [round(t - start, 3) for t, _ in self.calls]


async def deliver(script: Script, *bodies: bytes, cfg: SinkDelivery = DEFAULTS) -> Delivery:
    delivery = Delivery("test", "http://receiver.invalid/hook", cfg, transport=httpx.MockTransport(script))
    async with trio.open_nursery() as nursery:
        await nursery.start(delivery.run)
        for body in bodies:
            delivery.offer(body)
        await trio.testing.wait_all_tasks_blocked()
        while delivery.statistics().outbox or _busy(delivery, len(bodies)):
            await trio.sleep(1)
        nursery.cancel_scope.cancel()
    return delivery


def _busy(delivery: Delivery, n: int) -> bool:
    s = delivery.statistics()
    return s.delivered + sum(s.dropped.values()) < n


def test_sinks_verdict_retries_5xx_429_and_network_errors_only():
    assert [verdict(s) for s in (200, 204, 500, 503, 429, None, 400, 401, 404, 410)] == [
        "delivered", "delivered", "retry", "retry", "retry", "retry",
        "rejected", "rejected", "rejected", "rejected"]


def test_sinks_backoff_doubles_caps_and_honours_retry_after():
    cfg = SinkDelivery(backoff_s=0.5, backoff_max_s=4.0)
    assert [backoff(n, cfg) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert (backoff(0, cfg, "3"), backoff(0, cfg, "600"), backoff(2, cfg, "soon")) == (3.0, 4.0, 2.0)


async def test_sinks_delivery_retries_with_backoff_then_delivers(autojump_clock):
    script = Script(500, 429, httpx.ConnectError("refused"))
    delivery = await deliver(script, b"{}")
    assert script.times() == [0.0, 0.5, 1.5, 3.5]
    s = delivery.statistics()
    assert (s.delivered, s.retries, s.dropped, s.outbox) == (1, 3, {}, 0)


async def test_sinks_delivery_never_retries_other_4xx(autojump_clock):
    script = Script(400, 404)
    delivery = await deliver(script, b"{}", b"{}")
    assert len(script.calls) == 2  # one attempt each
    s = delivery.statistics()
    assert (s.delivered, s.retries, s.dropped) == (0, 0, {"rejected": 2})


async def test_sinks_delivery_429_waits_for_retry_after(autojump_clock):
    script = Script(429, retry_after="7")
    await deliver(script, b"{}")
    assert script.times() == [0.0, 7.0]


async def test_sinks_delivery_gives_up_after_retries(autojump_clock):
    script = Script(*[503] * 10)
    delivery = await deliver(script, b"{}", cfg=SinkDelivery(retries=2))
    assert script.times() == [0.0, 0.5, 1.5]
    s = delivery.statistics()
    assert (s.delivered, s.retries, s.dropped) == (0, 2, {"gave_up": 1})


async def test_sinks_outbox_is_bounded_and_drops_the_oldest(autojump_clock):
    script = Script()
    script.hang = True  # a receiver that accepts the connection and never answers
    delivery = Delivery("test", "http://receiver.invalid/hook", SinkDelivery(outbox=3),
                        transport=httpx.MockTransport(script))
    async with trio.open_nursery() as nursery:
        await nursery.start(delivery.run)
        delivery.offer(b'{"n": 0}')
        await trio.testing.wait_all_tasks_blocked()  # body 0 is in flight, the outbox is empty
        for n in range(1, 11):
            delivery.offer(b'{"n": %d}' % n)
        s = delivery.statistics()
        assert (s.outbox, s.dropped) == (3, {"outbox_full": 7})
        script.hang = False
        nursery.cancel_scope.cancel()


async def test_sinks_alertmanager_resends_while_firing_then_resolves_once(autojump_clock):
    script = Script()
    cfg = AlertmanagerConfig(url="http://am.invalid:9093", resend_s=60.0)
    sink = AlertmanagerSink(cfg, CTX, transport=httpx.MockTransport(script))
    async with open_monitoring(Config(alerts=AlertsConfig(summary_every_s=3600.0))) as mon:
        async with trio.open_nursery() as nursery:
            await nursery.start(sink.run, mon)
            await mon.breakers["batch"].force_open()
            await trio.sleep(150)  # firing: sent at 0, re-sent at 60 and 120
            await mon.breakers["batch"].reset()
            await trio.sleep(200)  # resolved: sent once, never re-sent
            nursery.cancel_scope.cancel()
    assert [len(body) for _, body in script.calls] == [1, 1, 1, 1]
    assert [round(t - script.calls[0][0]) for t, _ in script.calls][:3] == [0, 60, 120]
    first, *_, last = (body[0] for _, body in script.calls)
    assert first["labels"] == {"alertname": "breaker_activation", "severity": "warning", "rule": "breaker_activation",
                               "instance": "host-1:8000", "service": "vet", "tier": "batch"}
    assert (first["generatorURL"], first["endsAt"] > first["startsAt"]) == (CTX.dashboard_url, True)
    assert set(first["annotations"]) == {"summary", "description"}
    assert first["startsAt"] <= last["endsAt"] < first["endsAt"]  # the resolve time, before the horizon
    assert last["labels"] == first["labels"]


async def test_sinks_routing_slack_and_webhook_skip_info_alertmanager_takes_it(autojump_clock):
    scripts = {name: Script() for name in ("alertmanager", "slack", "webhook")}
    sinks = {
        "alertmanager": AlertmanagerSink(AlertmanagerConfig(url="http://am.invalid"), CTX,
                                         transport=httpx.MockTransport(scripts["alertmanager"])),
        "slack": slack_sink(SlackSink(url="http://slack.invalid/x"), CTX,
                            transport=httpx.MockTransport(scripts["slack"])),
        "webhook": webhook_sink(WebhookSink(url="http://hook.invalid/x"), CTX,
                                transport=httpx.MockTransport(scripts["webhook"])),
    }
    async with open_monitoring(Config(alerts=AlertsConfig(summary_every_s=5.0))) as mon:
        async with trio.open_nursery() as nursery:
            for sink in sinks.values():
                await nursery.start(sink.run, mon)
            await trio.sleep(6)  # the info-level trend summary
            await mon.breakers["batch"].force_open()  # a warning
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
    severities = {name: [_severity(body) for _, body in s.calls] for name, s in scripts.items()}
    assert severities == {"alertmanager": ["info", "warning"], "slack": ["warning"], "webhook": ["warning"]}


def _severity(body: dict | list) -> str:
    if isinstance(body, list):
        return body[0]["labels"]["severity"]
    if "alerts" in body:
        return body["alerts"][0]["labels"]["severity"]
    return body["text"].split("[")[1].split("]")[0].lower()


async def test_sinks_routing_is_configurable_per_sink(autojump_clock):
    script = Script()
    sink = slack_sink(SlackSink(url="http://slack.invalid/x", min_severity="critical"), CTX,
                      transport=httpx.MockTransport(script))
    async with open_monitoring(Config(alerts=AlertsConfig(summary_every_s=3600.0))) as mon:
        async with trio.open_nursery() as nursery:
            await nursery.start(sink.run, mon)
            await mon.breakers["critical"].force_open()  # warning now, critical after 5 minutes
            await trio.sleep(301)
            nursery.cancel_scope.cancel()
    assert [body["text"].split(" ")[1] for _, body in script.calls] == ["[CRITICAL]"]


def test_sinks_counters_in_metrics():
    class Mon:
        sinks = Sinks({"slack": slack_sink(SlackSink(url="http://slack.invalid/x"), CTX)})

    delivery = Mon.sinks["slack"].delivery
    delivery.cfg = SinkDelivery(outbox=1)
    delivery.offer(b"{}")
    delivery.offer(b"{}")  # the first is dropped: outbox_full
    text = prometheus_client.generate_latest(new_registry(TriageCollector(Mon()))).decode()
    assert 'triage_alert_sink_deliveries_total{sink="slack"} 0.0' in text
    assert 'triage_alert_sink_retries_total{sink="slack"} 0.0' in text
    assert 'triage_alert_sink_dropped_total{reason="outbox_full",sink="slack"} 1.0' in text
    assert 'triage_alert_sink_outbox{sink="slack"} 1.0' in text


def test_sinks_built_from_config_env_and_toml():
    env = {"ALERTMANAGER_URL": "http://am:9093", "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/x",
           "ALERT_WEBHOOK_URL": "https://hook.example/in", "ALERT_WEBHOOK_SECRET": "s3cret",
           "ALERT_WEBHOOK_AUTHORIZATION": "Bearer t0ken", "TRIAGE_DASHBOARD_URL": "http://dash:8000/dashboard"}
    cfg = Config.from_env({**env, "TRIAGE_EMBEDDED_DB": "1"})
    assert (cfg.sinks.alertmanager.url, cfg.sinks.webhook.secret, cfg.sinks.webhook.headers) == (
        "http://am:9093", "s3cret", {"Authorization": "Bearer t0ken"})
    assert set(build_sinks(cfg).sinks) == {"alertmanager", "slack", "webhook"}
    toml = Config.from_toml('[sinks.slack]\nurl = "https://hooks.slack.com/x"\nmin_severity = "critical"\n'
                            '[sinks.webhook]\nurl = "http://h/x"\nheaders = {X-Team = "db"}\n'
                            '[sinks.webhook.delivery]\nretries = 1\noutbox = 16\n')
    assert (toml.sinks.slack.min_severity, toml.sinks.webhook.headers, toml.sinks.webhook.delivery.outbox) == (
        "critical", {"X-Team": "db"}, 16)
    for shown in (repr(cfg), repr(cfg.sinks), str(cfg.sinks.webhook), repr(cfg.sinks.slack)):
        assert [s for s in ("s3cret", "t0ken", "services/T/B/x", "hook.example") if s in shown] == []
    assert "url='set'" in repr(cfg.sinks.slack)


def test_sinks_bad_url_names_the_field_never_the_value():
    with pytest.raises(ConfigError) as info:
        Config.from_toml('[sinks.slack]\nurl = "ftp://hooks.slack.com/services/T/B/SECRET"\n')
    assert info.value.field == "sinks.slack.url"
    assert "SECRET" not in str(info.value)
