"""/metrics as Prometheus reads it: histograms, counters, bounded labels, and `promtool`'s checks.

A real server on loopback and a real PostgreSQL (real time, every wait bounded);
`promtool` (Debian's `prometheus` package) checks the page and docs/alerts.rules.yml.
"""

from __future__ import annotations

import random
import re
import shutil
import string
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import httpx
import hypercorn.trio
import pytest
import trio
import trio.testing
from _http import serving
from prometheus_client.parser import text_string_to_metric_families
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from actors import open_monitoring
from actors.http.app import create_app, hypercorn_config
from actors.metrics_totals import BUCKETS_S
from messages.config import AlertsConfig, Config, RatePolicy
from messages.http_config import HttpConfig

RULES = Path(__file__).resolve().parents[2] / "docs" / "alerts.rules.yml"
INSTALL_PROMTOOL = "promtool is not installed (apt-get install prometheus; scripts/test installs it)"


def promtool() -> str:
    found = shutil.which("promtool") or "/usr/bin/promtool"
    if not shutil.which(found):
        pytest.skip(INSTALL_PROMTOOL)
    return found


@asynccontextmanager
async def served(database_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, object]]:
    http = HttpConfig(port=0)
    async with open_monitoring(Config(database_url=database_url)) as mon, trio.open_nursery() as nursery:
        app = create_app(mon, http)
        stop = trio.Event()
        binds = await nursery.start(partial(hypercorn.trio.serve, app, hypercorn_config(http),
                                            shutdown_trigger=app.shutdown_trigger(stop.wait)))
        with trio.fail_after(5):  # the database has been probed: health answers 200
            await mon.health_report.wait_value(lambda r: r.status == "healthy")
        try:
            async with httpx.AsyncClient(base_url=binds[0], timeout=10) as client:
                yield client, mon
        finally:
            stop.set()


async def scrape(client: httpx.AsyncClient) -> str:
    await trio.testing.wait_all_tasks_blocked()  # the edge records after the response is sent
    r = await client.get("/metrics")
    assert r.status_code == 200
    return r.text


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


async def test_prometheus_requests_are_histograms_and_counters(database_url):
    async with served(database_url) as (client, mon):
        for _ in range(3):
            await client.get("/api/health")
        await mon.run(trio.lowlevel.checkpoint, tier="analytics")
        text = await scrape(client)
    fams = families(text)
    assert fams["triage_http_request_duration_seconds"].type == "histogram"
    labels = '{method="GET",outcome="ok",route="/api/health",status="200"}'
    assert f"triage_http_requests_total{labels} 3.0" in text
    assert f"triage_http_request_duration_seconds_count{labels} 3.0" in text
    for le in ("0.005", "0.5", "2.0", "5.0", "10.0", "+Inf"):
        assert f'triage_http_request_duration_seconds_bucket{{le="{le}",method="GET"' in text, le
    assert 'triage_guarded_calls_total{outcome="ok",tier="analytics"} 1.0' in text
    assert 'triage_guarded_call_duration_seconds_bucket{le="+Inf",outcome="ok",tier="analytics"} 1.0' in text
    assert 'triage_queue_decisions_total{decision="admitted",priority="NORMAL"} 1.0' in text
    assert "process_resident_memory_bytes" in fams or "process_cpu_seconds" in fams
    assert fams["triage_memory_limit_bytes"].samples[0].value > 0  # memory_high's denominator
    assert "triage_request_duration_seconds" not in text  # the quantile gauges are gone


async def test_prometheus_breaker_transitions_are_counted(database_url):
    async with served(database_url) as (client, mon):
        await mon.breakers["batch"].force_open()
        await mon.breakers["batch"].reset()
        with trio.fail_after(5):
            while 'to_state="closed"' not in (text := await scrape(client)):
                await mon.metrics()  # the tap tells lazily: an ask flushes the mailbox
    assert 'triage_breaker_transitions_total{from_state="closed",tier="batch",to_state="open"} 1.0' in text
    assert 'triage_breaker_transitions_total{from_state="open",tier="batch",to_state="closed"} 1.0' in text


async def test_prometheus_labels_stay_bounded_under_random_paths_and_methods(database_url):
    rng = random.Random(12)
    word = lambda n: "".join(rng.choices(string.ascii_lowercase, k=n))  # noqa: E731
    async with served(database_url) as (client, _):
        baseline = len(list(_samples(await scrape(client))))
        for _ in range(1000):
            await client.get(f"/{word(8)}/{word(5)}")
        for _ in range(50):
            await client.request(word(6).upper(), "/api/health")
        text = await scrape(client)
    samples = [s for s in _samples(text) if s.name.startswith("triage_http_request")]
    methods = {s.labels["method"] for s in samples}
    routes = {s.labels["route"] for s in samples}
    assert methods == {"GET", "OTHER"}, methods
    assert routes == {"<unmatched>", "/api/health", "/metrics"}, routes
    # one label set per (route, method, status, outcome): buckets + sum + count + total
    per_set = len(BUCKETS_S) + 1 + 3
    label_sets = {tuple(sorted((k, v) for k, v in s.labels.items() if k != "le")) for s in samples}
    assert len(samples) == per_set * len(label_sets) and len(label_sets) <= 6, label_sets
    assert len(list(_samples(text))) - baseline < 200  # not 18 a method, nor one set a path


def _samples(text: str):
    for family in text_string_to_metric_families(text):
        yield from family.samples


async def test_prometheus_promtool_check_metrics_has_no_lint_warning(database_url):
    tool = promtool()
    async with served(database_url) as (client, mon):
        await client.get("/api/health")
        await client.get("/nowhere")
        await mon.run(trio.lowlevel.checkpoint, tier="database")
        await mon.breakers["batch"].force_open()
        text = await scrape(client)
    done = subprocess.run([tool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), \
        (done.stdout.decode() + done.stderr.decode())


def test_prometheus_alert_rules_pass_promtool_check_rules():
    tool = promtool()
    done = subprocess.run([tool, "check", "rules", str(RULES)], capture_output=True, timeout=30)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    assert b"SUCCESS" in done.stdout


def test_prometheus_alert_rules_cover_the_built_in_rules():
    """Every built-in rule but the info summary has a PromQL twin of the same name."""
    names = set(re.findall(r"^\s*- alert: (\w+)$", RULES.read_text(), re.MULTILINE))
    built_in = set(AlertsConfig().rules) - {"summary"}
    assert built_in <= names, built_in - names


async def test_prometheus_refusals_the_edge_answers_keep_their_route(database_url):
    """A 429 (the limiter answers before routing) and a maintenance 503 (the edge answers) are
    counted under the route asked for, not as `<unmatched>` noise; unknown paths stay one value."""
    async def hello(request):
        return PlainTextResponse("hi")

    policies = {**Config().policies, "general": RatePolicy(limit=1, window_s=600.0)}
    routes = (Route("/hello/{name}", hello, methods=["GET"]),)
    async with serving(Config(database_url=database_url, policies=policies), routes=routes) as s:
        for name in ("a", "b", "c"):
            await s.client.get(f"/hello/{name}")
        await s.client.get("/nowhere")
        await s.mon.maintenance(True)
        await s.client.get("/hello/d")
        text = await scrape(s.client)
        stats = (await s.mon.metrics()).routes
    total = 'triage_http_requests_total{{method="GET",outcome="{}",route="{}",status="{}"}} {}'
    assert total.format("ok", "/hello/{name}", 200, "1.0") in text
    assert total.format("rate_limited", "/hello/{name}", 429, "2.0") in text
    assert total.format("ok", "/hello/{name}", 503, "1.0") in text
    assert total.format("rate_limited", "<unmatched>", 429, "1.0") in text  # /nowhere: no route
    assert "GET /hello/{name}" in stats


def test_a_scrape_page_is_encoded_with_the_collector_paused_and_resumed_as_it_was():
    """The page's samples are all alive while it is built: a collection meanwhile would walk
    them holding the GIL. The encoder runs with the collector off, which then resumes as it
    was (still off if it was off, on after an encoder that raised)."""
    import gc

    from actors.http.prometheus import _encode_uncollected

    seen: list[bool] = []

    def encoder(page: object) -> bytes:
        seen.append(gc.isenabled())
        return b"page"

    def failing(page: object) -> bytes:
        seen.append(gc.isenabled())
        raise ValueError("broken family")

    assert gc.isenabled()
    assert _encode_uncollected(encoder, object()) == b"page"
    assert gc.isenabled()
    with pytest.raises(ValueError, match="broken family"):
        _encode_uncollected(failing, object())
    assert gc.isenabled()
    gc.disable()
    try:
        _encode_uncollected(encoder, object())
        assert not gc.isenabled()  # left off, as the caller had it
    finally:
        gc.enable()
    assert seen == [False, False, False]
