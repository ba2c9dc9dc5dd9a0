"""Alert subscribers and the generic webhook sink, against a real HTTP server on loopback."""

from __future__ import annotations

import json

import trio
import trio.testing
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve

from actors import open_monitoring
from messages.config import AlertsConfig, Config, SinkDelivery, SinksConfig, WebhookSink


class Receiver:
    """A tiny ASGI app that records POSTed JSON; fails the first `fail_first` requests with 500."""

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[dict] = []
        self.attempts = 0
        self.fail_first = fail_first
        self.got = trio.Event()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                await send({"type": msg["type"] + ".complete"})
                if msg["type"] == "lifespan.shutdown":
                    return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        self.attempts += 1
        status = 500 if self.attempts <= self.fail_first else 204
        if status == 204:
            self.bodies.append(json.loads(body))
            self.got.set()
            self.got = trio.Event()
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def start_receiver(nursery: trio.Nursery, app: Receiver) -> str:
    cfg = HyperConfig()
    cfg.bind = ["127.0.0.1:0"]
    cfg.accesslog = cfg.errorlog = None
    binds = await nursery.start(serve, app, cfg)
    return binds[0] + "/hook"


async def wait_for(receiver: Receiver, n: int) -> None:
    while len(receiver.bodies) < n:
        await receiver.got.wait()


async def test_sinks_webhook_posts_firing_and_resolved_with_retries():
    receiver = Receiver(fail_first=2)
    async with trio.open_nursery() as nursery:
        url = await start_receiver(nursery, receiver)
        hook = WebhookSink(url=url, delivery=SinkDelivery(backoff_s=0.01))
        cfg = Config(alerts=AlertsConfig(summary_every_s=3600.0), sinks=SinksConfig(webhook=hook))
        async with open_monitoring(cfg) as mon:
            with trio.fail_after(10):
                await mon.breakers["batch"].force_open()
                await wait_for(receiver, 1)
                await mon.breakers["batch"].reset()
                await wait_for(receiver, 2)
                while mon.sinks.statistics()[0].delivered < 2:  # counted once the response is back
                    await trio.testing.wait_all_tasks_blocked()
            stats = mon.sinks.statistics()[0]
            assert (stats.sink, stats.delivered, stats.retries, stats.dropped) == ("webhook", 2, 2, {})
        nursery.cancel_scope.cancel()
    firing, resolved = receiver.bodies
    one = firing["alerts"][0]
    assert (firing["version"], firing["status"], one["labels"]["alertname"], one["labels"]["tier"],
            one["labels"]["severity"]) == ("4", "firing", "breaker_activation", "batch", "warning")
    assert (resolved["status"], resolved["alerts"][0]["endsAt"] != "0001-01-01T00:00:00Z") == ("resolved", True)
    assert receiver.attempts == 4  # two 500s retried, then two deliveries


async def test_sinks_webhook_gives_up_after_retries_and_counts(autojump_clock):
    # the older [alerts] webhook_url / webhook_retries still configure the webhook sink
    cfg = Config(alerts=AlertsConfig(webhook_url="http://127.0.0.1:1/hook", webhook_retries=2,
                                     summary_every_s=3600.0))
    async with open_monitoring(cfg) as mon:
        await mon.breakers["batch"].force_open()
        while not mon.sinks["webhook"].delivery.statistics().dropped:
            await trio.sleep(0.5)
        stats = mon.sinks["webhook"].delivery.statistics()
        assert (stats.delivered, stats.retries, stats.dropped) == (0, 2, {"gave_up": 1})


async def test_sinks_subscribe_filters_by_severity(autojump_clock):
    async with open_monitoring(Config()) as mon:
        async with mon.subscribe(min_severity="critical") as critical, mon.subscribe("warning") as warning:
            await mon.breakers["critical"].force_open()
            alert = await warning.receive()
            assert (alert.rule, alert.severity) == ("breaker_activation", "warning")
            await trio.sleep(301)  # OPEN for more than 5 minutes: the critical one
            alert = await critical.receive()
            assert (alert.id, alert.severity, alert.state) == ("breaker_open_long:critical", "critical", "firing")


async def test_sinks_slow_subscriber_loses_alerts_counted_and_never_stalls(autojump_clock):
    async with open_monitoring(Config()) as mon:
        async with mon.subscribe("warning", buffer=1) as slow:
            for _ in range(3):
                await mon.breakers["analytics"].force_open()
                await mon.breakers["analytics"].reset()
                await trio.sleep(2)
            assert slow.delivered == 1 and slow.dropped >= 3
            assert await mon.run(trio.sleep, 0) is None  # the system still answers
