"""The operational listener (`ops_port`): health, live, ready and metrics over real HTTP,
answered by its own thread -- also while the main event loop is blocked."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from functools import partial

import pytest
import trio
from _http import serving

from actors.http.ops import serve_ops
from messages.config import Config
from messages.errors import ConfigError
from messages.http_config import HttpConfig


def blocking_get(url: str) -> tuple[int, bytes]:
    """A plain client in a plain thread: it needs nothing from the main trio loop."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def get(url: str) -> tuple[int, bytes]:
    return await trio.to_thread.run_sync(blocking_get, url)


async def test_ops_listener_answers_the_operational_routes():
    http = HttpConfig(port=0, ops_port=0)
    async with serving(Config(), http) as s, trio.open_nursery() as nursery:
        binds = await nursery.start(serve_ops, s.app, http)
        ops = binds[0]
        health = await get(ops + "/api/health")
        detailed = await get(ops + "/api/health?detailed=true")
        main_health = await s.client.get("/api/health")
        live = await get(ops + "/api/health/live")
        ready = await get(ops + "/api/health/ready")
        metrics = await get(ops + "/metrics")
        other = await get(ops + "/api/animals")
        nursery.cancel_scope.cancel()
    assert ops != s.url
    assert health[0] == main_health.status_code
    assert json.loads(health[1]).keys() == main_health.json().keys()
    assert "components" in json.loads(detailed[1])
    assert live == (200, b'{"status":"live"}')
    assert ready[0] == 200 and json.loads(ready[1])["status"] in ("healthy", "degraded")
    assert metrics[0] == 200 and b"triage_" in metrics[1]
    assert other[0] == 404 and "/api/health" in json.loads(other[1])["detail"]


async def test_ops_listener_reports_a_stalled_main_loop():
    http = HttpConfig(port=0, ops_port=0)
    async with serving(Config(), http) as s, trio.open_nursery() as nursery:
        binds = await nursery.start(partial(serve_ops, s.app, http, stall_s=0.3))
        answers: dict[str, tuple[int, bytes]] = {}

        def probe_later() -> None:
            time.sleep(0.6)  # by then the main loop has been blocked for longer than stall_s
            answers["live"] = blocking_get(binds[0] + "/api/health/live")
            answers["health"] = blocking_get(binds[0] + "/api/health")

        prober = threading.Thread(target=probe_later)
        prober.start()
        time.sleep(1.2)  # the main loop blocked: no task of it runs, the heartbeat neither
        await trio.to_thread.run_sync(prober.join)
        with trio.fail_after(5):
            while (after := await get(binds[0] + "/api/health/live"))[0] != 200:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert answers["live"] == (503, b'{"status":"stalled"}')
    assert answers["health"][0] == 503
    assert after == (200, b'{"status":"live"}')  # the loop runs again: live again


async def test_ops_listener_needs_the_triage_app():
    async def bare(scope, receive, send):  # pragma: no cover - never served
        raise AssertionError

    with pytest.raises(ConfigError, match="TRIAGE_OPS_PORT"):
        await serve_ops(bare, HttpConfig(port=0, ops_port=0))


def test_ops_port_must_differ_from_port():
    with pytest.raises(ConfigError, match="TRIAGE_OPS_PORT"):
        HttpConfig.from_env({"PORT": "3000", "TRIAGE_OPS_PORT": "3000"})
    assert HttpConfig.from_env({"TRIAGE_OPS_PORT": "3001"}).ops_port == 3001
