"""The HTTP edge over the wire: hypercorn's trio worker on loopback, a real httpx client.

Real sockets and a real PostgreSQL, so real time: every wait is for an event,
under `trio.fail_after` with a short, explicit bound.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from functools import partial
from typing import Any

import httpx
import hypercorn.trio
import pytest
import trio
import trio.testing
from _http import problem, serving, throwaway_schema, wait_status
from loguru import logger
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from actors import CircuitOpen, QueueCleared, QueueFull, open_monitoring, run_monitoring
from actors.http.app import create_app, hypercorn_config
from actors.logs import Redactor, setup_logging
from messages.config import Config, QueueConfig
from messages.errors import ConfigError
from messages.http_config import HttpConfig, LogConfig

TOKEN = "h" * 40
ADMIN = "a" * 40


@pytest.fixture(scope="session")
def demo_schema(database_url: str):
    with throwaway_schema(database_url, "triage_web") as name:
        yield name


# -- health ---------------------------------------------------------------------------------

async def test_health_development_basic_and_detailed_answer_from_report(database_url):
    async with serving(Config(database_url=database_url)) as s:
        await wait_status(s.mon, "healthy")
        basic = await s.client.get("/api/health")
        detailed = await s.client.get("/api/health", params={"detailed": "true"})
    assert basic.status_code == 200 and basic.headers["cache-control"] == "no-store"
    assert set(basic.json()) == {"status", "timestamp", "uptime", "database", "queue"}
    assert basic.json()["status"] == "healthy"
    body = detailed.json()
    assert {"components", "metrics", "alerts", "degradation"} <= set(body)
    assert body["components"]["circuitBreakers"]["database"]["state"] == "CLOSED"
    assert "server" not in basic.headers


async def test_health_status_codes_follow_report_and_configured_degraded_code(database_url):
    async with serving(Config(database_url=database_url)) as s:
        await wait_status(s.mon, "healthy")
        await s.mon.breakers["critical"].force_open()
        await wait_status(s.mon, "degraded")
        degraded = await s.client.get("/api/health")
        await s.mon.breakers["database"].force_open()
        await wait_status(s.mon, "unhealthy")
        unhealthy = await s.client.get("/api/health")
    assert (degraded.status_code, degraded.json()["status"]) == (206, "degraded")
    assert (unhealthy.status_code, unhealthy.json()["status"]) == (503, "unhealthy")

    async with serving(Config(database_url=database_url), HttpConfig(port=0, degraded_status_code=200)) as s:
        await s.mon.breakers["critical"].force_open()
        await wait_status(s.mon, "degraded")
        r = await s.client.get("/api/health")
    assert (r.status_code, r.json()["status"]) == (200, "degraded")


async def test_health_production_without_token_is_minimal_with_token_is_full(database_url):
    config = Config(database_url=database_url, environment="production")
    http = HttpConfig(port=0, health_token=TOKEN, admin_token=ADMIN)
    async with serving(config, http) as s:
        anonymous = [await s.client.get("/api/health", params=p) for p in ({}, {"detailed": "true"})]
        wrong = await s.client.get("/api/health?detailed=true", headers={"authorization": "Bearer " + "x" * 40})
        token = await s.client.get("/api/health?detailed=true", headers={"authorization": f"Bearer {TOKEN}"})
        admin = await s.client.get("/api/health", headers={"authorization": f"Bearer {ADMIN}"})
        metrics = await s.client.get("/metrics")
        stream = await s.client.get("/api/alerts/stream")
    for r in (*anonymous, wrong):
        assert set(r.json()) == {"status", "timestamp"} and r.headers["cache-control"] == "no-store"
    assert "components" in token.json()
    assert set(admin.json()) == {"status", "timestamp", "uptime", "database", "queue"}
    assert metrics.status_code == 403 and stream.status_code == 403


async def test_health_production_allow_listed_network_sees_details(database_url):
    config = Config(database_url=database_url, environment="production")
    async with serving(config, HttpConfig(port=0, allow_networks=("127.0.0.0/8",))) as s:
        r = await s.client.get("/api/health?detailed=true")
    assert "components" in r.json()
    async with serving(config, HttpConfig(port=0, allow_networks=("10.0.0.0/8",))) as s:
        r = await s.client.get("/api/health?detailed=true")
    assert set(r.json()) == {"status", "timestamp"}


def test_http_config_short_token_refuses_to_start_without_showing_it():
    with pytest.raises(ConfigError) as info:
        HttpConfig.from_env({"HEALTH_TOKEN": "short-secret"})
    assert info.value.field == "HEALTH_TOKEN" and "short-secret" not in str(info.value)
    with pytest.raises(ConfigError, match="ADMIN_TOKEN"):
        HttpConfig.from_env({"ADMIN_TOKEN": "x" * 31})
    with pytest.raises(ConfigError, match="TRUSTED_PROXIES"):
        HttpConfig.from_env({"TRUSTED_PROXIES": "10.0.0.0/8, not-a-net"})
    http = HttpConfig.from_env({"HEALTH_TOKEN": TOKEN, "PORT": "8080", "BODY_TIMEOUT": "2500",
                                "HEALTH_ALLOW_NETWORKS": "10.0.0.0/8,192.168.0.0/16"})
    assert (http.port, http.body_timeout_s, http.effective_admin_token) == (8080, 2.5, TOKEN)
    assert http.allow_networks == ("10.0.0.0/8", "192.168.0.0/16") and TOKEN not in repr(http)


async def test_health_answers_within_a_second_while_queue_is_full(database_url):
    config = Config(database_url=database_url, queue=QueueConfig(max_concurrent=1, max_queue_size=2))
    async with serving(config) as s, trio.open_nursery() as holders:
        for _ in range(3):
            holders.start_soon(partial(s.mon.run, trio.sleep_forever, tier="analytics"))
        await trio.testing.wait_all_tasks_blocked()
        queue = await s.mon.queue.snapshot()
        assert (queue.in_flight, queue.depth) == (1, 2)
        with pytest.raises(QueueFull):
            await s.mon.run(trio.sleep, 0, tier="analytics")
        with trio.fail_after(1):
            for _ in range(20):
                r = await s.client.get("/api/health?detailed=true")
                assert r.status_code in (200, 206)
        holders.cancel_scope.cancel()


# -- metrics and alerts ---------------------------------------------------------------------

async def test_metrics_scrape_shows_every_component_from_own_registry(database_url):
    async with serving(Config(database_url=database_url)) as s:
        await wait_status(s.mon, "healthy")  # the database has been probed
        await s.client.get("/api/health")
        await s.mon.breakers["batch"].force_open()
        with trio.fail_after(5):
            await s.mon.health_report.wait_value(
                lambda rep: any(a.id == "breaker_activation:batch" for a in rep.alerts))
        await trio.testing.wait_all_tasks_blocked()  # the edge records after the response is sent
        r = await s.client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = r.text
    for line in ('triage_breaker_state{state="open",tier="batch"} 1.0',
                 'triage_queue_depth{priority="CRITICAL"} 0.0', "triage_queue_in_flight 0.0",
                 'triage_ratelimit_decisions_total{decision="allowed",policy="general"}',
                 "triage_db_up 1.0", "triage_db_response_time_seconds", "triage_db_usage_ratio",
                 'triage_http_requests_total{method="GET",outcome="ok",route="/api/health",status="200"}',
                 'triage_http_request_duration_seconds_bucket{le="+Inf",method="GET",outcome="ok",route="/api/health"',
                 'triage_alert_firing{id="breaker_activation:batch",rule="breaker_activation",severity="warning"} 1.0',
                 'triage_health_status{status="degraded"} 1.0'):
        assert line in text, line
    assert "python_gc" not in text  # not the global registry


async def test_alerts_stream_sends_alerts_and_heartbeats_and_ends_on_disconnect(database_url):
    http = HttpConfig(port=0, sse_heartbeat_s=0.2)
    async with serving(Config(database_url=database_url), http) as s:
        with trio.fail_after(5):
            stream = await trio.open_tcp_stream(*s.address)  # raw: see every byte as it comes
            await stream.send_all(b"GET /api/alerts/stream HTTP/1.1\r\nhost: x\r\n\r\n")
            seen = await _read_until(stream, b": connected")
            assert seen.startswith(b"HTTP/1.1 200") and b"content-type: text/event-stream" in seen
            await s.app.sse_clients.wait_value(lambda n: n == 1)
            await s.mon.breakers["critical"].force_open()
            seen = await _read_until(stream, b"data: ")
            seen += await _read_until(stream, b"\n\n")
            seen += await _read_until(stream, b": heartbeat\n\n")
            await stream.aclose()
            await s.app.sse_clients.wait_value(lambda n: n == 0)
    event = seen.split(b"event: alert\n", 1)[1]
    alert = json.loads(event.split(b"data: ", 1)[1].split(b"\n", 1)[0])
    assert (alert["id"], alert["state"], alert["severity"]) == ("breaker_activation:critical", "firing", "warning")


async def _read_until(stream: trio.SocketStream, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = await stream.receive_some(4096)
        assert chunk, data
        data += chunk
    return data


# -- admin ----------------------------------------------------------------------------------

async def test_admin_without_token_401_wrong_token_403_disabled_403(database_url):
    async with serving(Config(database_url=database_url), HttpConfig(port=0, admin_token=ADMIN)) as s:
        missing = await s.client.post("/api/admin/queue/clear")
        wrong = await s.client.post("/api/admin/queue/clear", headers={"authorization": "Bearer nope"})
        health_token = await s.client.post("/api/admin/queue/clear", headers={"authorization": f"Bearer {TOKEN}"})
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
    assert wrong.status_code == 403 and health_token.status_code == 403
    problem(missing), problem(wrong)
    async with serving(Config(database_url=database_url)) as s:
        disabled = await s.client.post("/api/admin/maintenance", json={"enabled": True},
                                       headers={"authorization": f"Bearer {ADMIN}"})
    assert disabled.status_code == 403 and "disabled" in problem(disabled)["detail"]


async def test_admin_breakers_queue_and_maintenance_act_on_the_system(database_url):
    auth = {"authorization": f"Bearer {TOKEN}"}  # ADMIN_TOKEN unset: HEALTH_TOKEN is the admin token
    config = Config(database_url=database_url, queue=QueueConfig(max_concurrent=1, max_queue_size=5))
    async with serving(config, HttpConfig(port=0, health_token=TOKEN)) as s:
        opened = await s.client.post("/api/admin/breakers/analytics/open", headers=auth)
        with pytest.raises(CircuitOpen):
            await s.mon.run(trio.sleep, 0, tier="analytics")
        reset = await s.client.post("/api/admin/breakers/analytics/reset", headers=auth)
        unknown = await s.client.post("/api/admin/breakers/nope/reset", headers=auth)

        refused: list[BaseException] = []

        async def wait_in_queue() -> None:
            try:
                await s.mon.run(trio.sleep, 0)
            except QueueCleared as exc:
                refused.append(exc)
        async with trio.open_nursery() as waiters:
            waiters.start_soon(partial(s.mon.run, trio.sleep_forever))
            await trio.testing.wait_all_tasks_blocked()
            for _ in range(2):
                waiters.start_soon(wait_in_queue)
            await trio.testing.wait_all_tasks_blocked()
            cleared = await s.client.post("/api/admin/queue/clear", headers=auth)
            waiters.cancel_scope.cancel()

        bad = await s.client.post("/api/admin/maintenance", headers=auth, content=b"{oops")
        missing_field = await s.client.post("/api/admin/maintenance", headers=auth, json={})
        on = await s.client.post("/api/admin/maintenance", headers=auth, json={"enabled": True})
        with trio.fail_after(5):
            await s.mon.health_report.wait_value(
                lambda rep: any(d.reason == "maintenance mode" for d in rep.degradation))
        blocked = await s.client.get("/anything")
        health = await s.client.get("/api/health")
        off = await s.client.post("/api/admin/maintenance", headers=auth, json={"enabled": False})
        after = await s.client.get("/anything")
    assert opened.json() == {"tier": "analytics", "state": "open", "forced": True}
    assert reset.json() == {"tier": "analytics", "state": "closed"}
    assert unknown.status_code == 404 and "analytics" in problem(unknown)["detail"]
    assert cleared.json() == {"cleared": 2} and len(refused) == 2
    assert bad.status_code == 400 and missing_field.status_code == 422 and "enabled" in problem(missing_field)["detail"]
    assert on.json() == {"maintenance": True} and off.json() == {"maintenance": False}
    assert blocked.status_code == 503 and blocked.headers["retry-after"] == "60"
    assert "maintenance" in problem(blocked)["detail"]
    assert health.status_code == 206 and health.json()["status"] == "degraded"
    assert after.status_code == 404


# -- hardening ------------------------------------------------------------------------------

async def boom(request: Request) -> PlainTextResponse:
    raise RuntimeError("SELECT password FROM users -- secret detail")


async def echo(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(len(await request.body())))


async def test_errors_unknown_route_404_wrong_method_405_crash_500_all_json(database_url, logged):
    routes = (Route("/boom", boom), Route("/echo", echo, methods=["POST"]))
    async with serving(Config(database_url=database_url), routes=routes) as s:
        missing = await s.client.get("/no/such/route")
        method = await s.client.delete("/api/health")
        crash = await s.client.get("/boom")
    assert (missing.status_code, problem(missing)["title"]) == (404, "Not Found")
    assert method.status_code == 405 and "GET" in method.headers["allow"]
    problem(method)
    body = problem(crash)
    request_id = body.pop("requestId")
    assert body == {"type": "about:blank", "title": "Internal Server Error", "status": 500,
                    "detail": "Internal error"}
    assert "SELECT" not in crash.text and "Traceback" not in crash.text
    assert "server" not in crash.headers and crash.headers["x-request-id"] == request_id
    crashes = [r for r in logged if r["level"].name == "ERROR"]
    assert len(crashes) == 1 and crashes[0]["extra"]["route"] == "/boom"
    assert crashes[0]["extra"]["request_id"] == request_id and len(request_id) >= 16


async def test_content_length_with_transfer_encoding_is_400_and_connection_closed(database_url):
    routes = (Route("/echo", echo, methods=["POST"]),)
    async with serving(Config(database_url=database_url), routes=routes) as s:
        with trio.fail_after(3):
            stream = await trio.open_tcp_stream(*s.address)
            await stream.send_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n"
                                  b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n"
                                  b"GET /api/health HTTP/1.1\r\nhost: x\r\n\r\n")
            answer = await _read_to_eof(stream)  # ends only if the server closes
            await stream.aclose()
    assert answer.startswith(b"HTTP/1.1 400") and b"connection: close" in answer.lower()
    assert answer.count(b"HTTP/1.1 ") == 1  # the smuggled second request is never answered


async def test_body_over_cap_413_before_reading_and_when_streamed(database_url):
    routes = (Route("/echo", echo, methods=["POST"]),)
    async with serving(Config(database_url=database_url), HttpConfig(port=0, max_body_bytes=1024),
                       routes=routes) as s:
        with trio.fail_after(3):
            stream = await trio.open_tcp_stream(*s.address)
            await stream.send_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000000\r\n\r\n")
            head = await _read_head(stream)
            await stream.aclose()

        async def chunks():
            for _ in range(4):
                yield b"x" * 512
        chunked = await s.client.post("/echo", content=chunks())
        fits = await s.client.post("/echo", content=b"x" * 1024)
    assert head.startswith(b"HTTP/1.1 413") and b"connection: close" in head.lower()
    assert chunked.status_code == 413 and problem(chunked)["limit"] == 1024
    assert (fits.status_code, fits.text) == (200, "1024")


async def test_body_trickled_past_deadline_is_cut_off_408(database_url):
    routes = (Route("/echo", echo, methods=["POST"]),)
    async with serving(Config(database_url=database_url), HttpConfig(port=0, body_timeout_s=0.5),
                       routes=routes) as s, trio.open_nursery() as nursery:
        stream = await trio.open_tcp_stream(*s.address)
        await stream.send_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n")

        async def trickle() -> None:
            for _ in range(100):
                await stream.send_all(b"x")
                await trio.sleep(0.05)  # the client's pace, not a wait for an event
        nursery.start_soon(trickle)
        t0 = trio.current_time()
        with trio.fail_after(3):
            head = await _read_head(stream)
        nursery.cancel_scope.cancel()
        await stream.aclose()
    assert head.startswith(b"HTTP/1.1 408")
    assert 0.4 < trio.current_time() - t0 < 2.0


async def _read_to_eof(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(4096):
        data += chunk
    return data


async def _read_head(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
    return data


# -- graceful shutdown ----------------------------------------------------------------------

async def test_shutdown_lets_in_flight_finish_refuses_new_and_cuts_off_past_grace(database_url):
    entered, release = trio.Event(), trio.Event()
    stuck_entered = trio.Event()

    async def slow(request: Request) -> PlainTextResponse:
        entered.set()
        await release.wait()
        return PlainTextResponse("finished")

    async def stuck(request: Request) -> PlainTextResponse:
        stuck_entered.set()
        await trio.sleep_forever()

    results: dict[str, httpx.Response] = {}
    routes = (Route("/slow", slow), Route("/stuck", stuck))
    async with serving(Config(database_url=database_url), HttpConfig(port=0, grace_s=0.5), routes=routes) as s:
        async with httpx.AsyncClient(base_url=s.url, timeout=5) as other, trio.open_nursery() as nursery:
            async def get(path: str, client: httpx.AsyncClient) -> None:
                results[path] = await client.get(path)
            nursery.start_soon(get, "/slow", s.client)
            nursery.start_soon(get, "/stuck", other)
            events = await trio.open_tcp_stream(*s.address)
            await events.send_all(b"GET /api/alerts/stream HTTP/1.1\r\nhost: x\r\n\r\n")
            with trio.fail_after(3):
                await entered.wait()
                await stuck_entered.wait()
                await _read_until(events, b": connected")
            s.stop.set()
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(OSError):
                await trio.open_tcp_stream(*s.address)  # no longer accepting
            with trio.fail_after(3):
                ended = await _read_to_eof(events)  # the stream ends at once, cleanly
            await events.aclose()
            release.set()
    assert ended.endswith(b"0\r\n\r\n")
    assert (results["/slow"].status_code, results["/slow"].text) == (200, "finished")
    assert results["/stuck"].status_code == 503 and "shutting down" in problem(results["/stuck"])["detail"]


# -- embedding, as the README shows it ------------------------------------------------------

async def test_readme_open_monitoring_around_serve_answers_health(database_url):
    config, http = Config(database_url=database_url), HttpConfig(port=0)
    stop = trio.Event()
    async with trio.open_nursery() as test:
        async def host(*, task_status=trio.TASK_STATUS_IGNORED) -> None:
            # --- README: one ---
            async with open_monitoring(config) as mon:
                app = create_app(mon, http)
                await hypercorn.trio.serve(app, hypercorn_config(http),
                                           shutdown_trigger=app.shutdown_trigger(stop.wait),
                                           task_status=task_status)
        binds = await test.start(host)
        async with httpx.AsyncClient(base_url=binds[0]) as client:
            assert (await client.get("/api/health")).status_code in (200, 206)
        stop.set()


async def test_readme_both_started_in_one_nursery_answer_health(database_url):
    config, http = Config(database_url=database_url), HttpConfig(port=0)
    stop = trio.Event()
    # --- README: two ---
    async with trio.open_nursery() as nursery:
        mon = await nursery.start(run_monitoring, config)
        app = create_app(mon, http)
        binds = await nursery.start(partial(hypercorn.trio.serve, app, hypercorn_config(http),
                                            shutdown_trigger=app.shutdown_trigger(stop.wait)))
        async with httpx.AsyncClient(base_url=binds[0]) as client:
            assert (await client.get("/api/health")).status_code in (200, 206)
        stop.set()  # the server drains and returns; then stop the monitoring system
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()


# -- the console script ---------------------------------------------------------------------

async def test_cli_serve_answers_then_stops_cleanly_on_sigterm(database_url, demo_schema):
    env = {**os.environ, "DATABASE_URL": database_url, "TRIAGE_DEMO_SCHEMA": demo_schema,
           "LOG_FORMAT": "json", "HEALTH_TOKEN": TOKEN}
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "actors.cli", "serve", "--port", "0"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with trio.fail_after(20):
            lines = _Lines(proc.stderr)
            url = None
            while url is None:
                record = json.loads(await lines.next())
                if record["message"].startswith("Running on "):
                    url = record["message"].split()[2]
            async with httpx.AsyncClient(base_url=url) as client:
                animals = await client.get("/api/animals")
                health = await client.get("/api/health", headers={"authorization": f"Bearer {TOKEN}"})
            proc.send_signal(signal.SIGTERM)
            rest = await lines.rest()
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
        with trio.move_on_after(5, shield=True):
            await proc.wait()
        proc.stderr.close()
    assert animals.status_code == 200 and health.status_code in (200, 206)
    assert TOKEN not in rest and "Stopped" in rest


class _Lines:
    def __init__(self, stream: Any) -> None:
        self.stream, self.buffer = stream, b""

    async def next(self) -> str:
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise EOFError(self.buffer.decode())
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()

    async def rest(self) -> str:
        while chunk := await self.stream.receive_some(65536):
            self.buffer += chunk
        return self.buffer.decode()


# -- logging --------------------------------------------------------------------------------

def test_logging_secrets_in_text_are_redacted():
    redact = Redactor([TOKEN])
    line = redact(f"token {TOKEN} dsn postgresql://app:s3cret@db/x password=hunter2 "
                  "Authorization: Bearer abc.def")
    assert line == ("token *** dsn postgresql://app:***@db/x password=*** Authorization: Bearer ***")


def test_logging_json_sink_writes_fields_without_variable_values(tmp_path):
    import io

    out = io.StringIO()
    try:
        setup_logging(LogConfig(format="json", file=str(tmp_path / "app.log")), secrets=[TOKEN], stream=out,
                      intercept_std=False)
        logger.bind(actor="web", tier="critical").info("Circuit breaker {tier} OPEN", tier="critical")
        try:
            secret = TOKEN  # noqa: F841 — a diagnosing traceback would print it
            raise ValueError("bad")
        except ValueError:
            logger.exception("failed with {t}", t=TOKEN)
    finally:
        logger.remove()
        logger.configure(patcher=lambda record: None)
        logger.add(sys.stderr)
        logger.disable("actors")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert (first["message"], first["actor"], first["tier"], first["level"]) == \
        ("Circuit breaker critical OPEN", "web", "critical", "INFO")
    assert second["message"] == "failed with ***" and "ValueError: bad" in second["exception"]
    assert TOKEN not in out.getvalue() and (tmp_path / "app.log").read_text().count("\n") == 2


@pytest.fixture
def logged():
    records: list[dict] = []
    logger.enable("actors")
    sink = logger.add(lambda m: records.append(m.record), level="INFO")
    try:
        yield records
    finally:
        logger.remove(sink)
        logger.disable("actors")


async def test_app_own_route_reaches_mon_through_app_state(database_url):
    """A host's route passed to create_app reaches the handle as request.app.state.mon (as
    README's `triage serve --app` factory section says)."""
    async def hello(request):
        mon = request.app.state.mon
        return JSONResponse({"one": await mon.db.fetchval("select 1")})

    routes = (Route("/hello", hello, methods=["GET"]),)
    async with serving(Config(database_url=database_url), routes=routes) as s:
        r = await s.client.get("/hello")
    assert (r.status_code, r.json()) == (200, {"one": 1})
