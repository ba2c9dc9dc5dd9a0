"""The sinks against real receivers on loopback, on real time with short bounded waits:
a real Alertmanager process (Debian's prometheus-alertmanager), a receiver that checks
Slack's incoming-webhook contract, and an Alertmanager-webhook receiver that checks the
Authorization header and the HMAC-SHA256 signature."""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import subprocess
import time

import httpx
import pytest
import trio
import trio.testing
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve

from actors import open_monitoring
from actors.tools.procs import free_port
from messages.config import (
    AlertmanagerSink,
    AlertsConfig,
    Config,
    SinkDelivery,
    SinksConfig,
    SlackSink,
    WebhookSink,
)

ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
DASHBOARD = "http://127.0.0.1:8000/dashboard"
QUIET = AlertsConfig(summary_every_s=3600.0)


@pytest.fixture
def alertmanager(tmp_path):
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager") or ALERTMANAGER
    if not shutil.which(binary):
        pytest.skip("Alertmanager is not installed (apt-get install prometheus-alertmanager)")
    (tmp_path / "am.yml").write_text("route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n")
    port = free_port()
    proc = subprocess.Popen([binary, f"--config.file={tmp_path / 'am.yml'}", f"--storage.path={tmp_path / 'data'}",
                             "--cluster.listen-address=", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while not _ready(url):  # a process we started: poll its readiness endpoint, bounded
            assert proc.poll() is None and time.monotonic() < deadline, "alertmanager did not become ready"
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


async def am_alerts(client: httpx.AsyncClient, url: str, alertname: str) -> list[dict]:
    response = await client.get(f"{url}/api/v2/alerts", params={"filter": f'alertname="{alertname}"'})
    response.raise_for_status()
    return response.json()


async def until(probe, done, *, timeout_s: float = 10.0):
    """Poll an external process's API until `done(value)`; fail after `timeout_s`."""
    with trio.fail_after(timeout_s):
        while not done(value := await probe()):
            await trio.sleep(0.05)
    return value


async def test_sinks_alertmanager_real_process_receives_and_resolves(alertmanager):
    # endsAt = now + 4 x 0.5 s: without the re-sends Alertmanager would resolve it after 2 s
    am = AlertmanagerSink(url=alertmanager, resend_s=0.5)
    sinks = SinksConfig(alertmanager=am, dashboard_url=DASHBOARD, instance="test-1")
    async with open_monitoring(Config(alerts=QUIET, sinks=sinks)) as mon, httpx.AsyncClient() as client:
        async def seen():
            return await am_alerts(client, alertmanager, "breaker_activation")

        await mon.breakers["batch"].force_open()
        (alert,) = await until(seen, lambda found: len(found) == 1)
        assert alert["labels"] == {"alertname": "breaker_activation", "severity": "warning", "rule": "breaker_activation",
                                   "instance": "test-1", "service": "triage", "tier": "batch"}
        assert alert["annotations"]["summary"] == "Circuit breaker batch activated"
        assert (alert["generatorURL"], alert["status"]["state"]) == (DASHBOARD, "active")
        delivery = mon.sinks["alertmanager"].delivery

        async def delivered():
            return delivery.statistics().delivered

        await until(delivered, lambda n: n >= 7)  # 3 s of re-sends: past the first horizon
        (again,) = await seen()
        assert (again["status"]["state"], again["startsAt"], again["endsAt"] > alert["endsAt"]) == (
            "active", alert["startsAt"], True)
        await mon.breakers["batch"].reset()
        await until(seen, lambda found: found == [])
        assert delivery.statistics().retries == 0


class Recorder:
    """An ASGI receiver: `check(headers, body)` returns (status, text); bodies and headers kept."""

    def __init__(self, check) -> None:
        self.check = check
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        self.got = trio.Event()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while (msg := await receive())["type"] != "lifespan.shutdown":
                await send({"type": msg["type"] + ".complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        status, text = self.check(headers, body)
        self.requests.append((headers, body))
        self.statuses.append(status)
        self.got.set()
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": text.encode()})

    async def wait(self, n: int) -> None:
        with trio.fail_after(10):
            while len(self.requests) < n:
                await self.got.wait()
                self.got = trio.Event()


async def start(nursery: trio.Nursery, app: Recorder) -> str:
    cfg = HyperConfig()
    cfg.bind = ["127.0.0.1:0"]
    cfg.accesslog = cfg.errorlog = None
    return (await nursery.start(serve, app, cfg))[0] + "/services/T000/B000/XXXX"


def slack_contract(headers: dict[str, str], body: bytes) -> tuple[int, str]:
    """What Slack's incoming webhook checks; its own answers (200 "ok", 400 "invalid_payload")."""
    try:
        payload = json.loads(body)
    except ValueError:
        return 400, "invalid_payload"
    text, blocks = payload.get("text"), payload.get("blocks", [])
    ok = headers.get("content-type", "").startswith("application/json") and isinstance(text, str) and text.strip()
    for block in blocks:
        inner = block.get("text", {}) if block.get("type") == "section" else None
        ok = ok and inner is not None and inner.get("type") in ("mrkdwn", "plain_text") \
            and 0 < len(inner.get("text", "")) <= 3000
    return (200, "ok") if ok else (400, "invalid_payload")


async def test_sinks_slack_body_is_accepted_and_reads_as_one_line():
    receiver = Recorder(slack_contract)
    async with trio.open_nursery() as nursery:
        url = await start(nursery, receiver)
        sinks = SinksConfig(slack=SlackSink(url=url), dashboard_url=DASHBOARD, instance="test-1")
        async with open_monitoring(Config(alerts=QUIET, sinks=sinks)) as mon:
            await mon.breakers["analytics"].force_open()
            await receiver.wait(1)
            await mon.breakers["analytics"].reset()
            await receiver.wait(2)
        nursery.cancel_scope.cancel()
    assert receiver.statuses == [200, 200]
    firing, resolved = (json.loads(body)["text"] for _, body in receiver.requests)
    assert firing == (":warning: [WARNING] breaker_activation:analytics: Circuit breaker analytics activated"
                      f" (triage on test-1) <{DASHBOARD}|dashboard>")  # a yes/no rule: no "value 1 vs 0.5"
    assert resolved.startswith(":white_check_mark: [RESOLVED] breaker_activation:analytics: Circuit breaker analytics recovered")
    assert "\n" not in firing


SECRET = "webhook-secret-for-tests"


def signed(headers: dict[str, str], body: bytes) -> tuple[int, str]:
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    if headers.get("authorization") != "Bearer team-token":
        return 401, "unauthorized"
    if not hmac.compare_digest(headers.get("x-triage-signature", ""), expected):
        return 403, "bad signature"
    return 200, "ok"


async def test_sinks_webhook_alertmanager_format_signed_with_headers():
    receiver = Recorder(signed)
    async with trio.open_nursery() as nursery:
        url = await start(nursery, receiver)
        hook = WebhookSink(url=url, secret=SECRET, headers={"Authorization": "Bearer team-token", "X-Team": "db"})
        sinks = SinksConfig(webhook=hook, dashboard_url=DASHBOARD, instance="test-1")
        async with open_monitoring(Config(alerts=QUIET, sinks=sinks)) as mon:
            await mon.breakers["batch"].force_open()
            await receiver.wait(1)
        nursery.cancel_scope.cancel()
    assert receiver.statuses == [200]
    headers, body = receiver.requests[0]
    payload = json.loads(body)
    assert headers["x-team"] == "db"
    assert {k: payload[k] for k in ("version", "status", "receiver", "groupLabels", "externalURL", "truncatedAlerts")} == {
        "version": "4", "status": "firing", "receiver": "triage", "groupLabels": {"alertname": "breaker_activation"},
        "externalURL": DASHBOARD, "truncatedAlerts": 0}
    (alert,) = payload["alerts"]
    assert payload["commonLabels"] == alert["labels"]
    assert (alert["status"], alert["labels"]["tier"], alert["endsAt"], alert["generatorURL"]) == (
        "firing", "batch", "0001-01-01T00:00:00Z", DASHBOARD)
    assert set(alert) >= {"startsAt", "annotations", "fingerprint"}


async def test_sinks_webhook_4xx_is_not_retried_against_a_real_receiver():
    receiver = Recorder(signed)  # no secret configured: every request is refused with 401
    async with trio.open_nursery() as nursery:
        url = await start(nursery, receiver)
        hook = WebhookSink(url=url, delivery=SinkDelivery(backoff_s=0.01))
        async with open_monitoring(Config(alerts=QUIET, sinks=SinksConfig(webhook=hook))) as mon:
            await mon.breakers["batch"].force_open()
            await receiver.wait(1)
            delivery = mon.sinks["webhook"].delivery
            with trio.fail_after(5):
                while not delivery.statistics().dropped:  # counted once the 401 is back
                    await trio.testing.wait_all_tasks_blocked()
            assert delivery.statistics().dropped == {"rejected": 1}
        nursery.cancel_scope.cancel()
    assert receiver.statuses == [401]
