"""Orchestrator probes (live/ready) and the emergency admin routes (issue #12 items 8 and 17),
over real HTTP against a real PostgreSQL (real time, every wait bounded)."""

from __future__ import annotations

import os
import subprocess
import sys

import trio
import trio.testing
from _http import problem, serving, wait_status
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from actors import CircuitOpen
from actors.faults import Down, FaultProxy, proxied_dsn
from actors.http.admin import json_response
from actors.pg.connection import PgConnection
from messages.config import BreakerConfig, Config, DatabaseConfig, QueueConfig, RatePolicy
from messages.http_config import HttpConfig

ADMIN = "a" * 40
AUTH = {"authorization": f"Bearer {ADMIN}"}


def admin_http(**kw) -> HttpConfig:
    return HttpConfig(port=0, admin_token=ADMIN, **kw)


async def test_probes_live_stays_200_through_a_database_outage_while_ready_says_503(database_url):
    async with FaultProxy.for_dsn(database_url) as proxy:
        cfg = Config(database_url=proxied_dsn(database_url, proxy), health_check_interval_s=0.2,
                     tiers={**Config().tiers, "database": BreakerConfig(failure_threshold=2)})
        async with serving(cfg) as s:
            await wait_status(s.mon, "healthy")
            healthy = (await s.client.get("/api/health/live"), await s.client.get("/api/health/ready"))
            proxy.add(Down())
            with trio.fail_after(10):
                while True:
                    try:
                        await s.mon.db.fetchval("select 1")
                    except CircuitOpen:
                        break
                    except Exception:
                        pass
            await wait_status(s.mon, "unhealthy")
            live, ready = await s.client.get("/api/health/live"), await s.client.get("/api/health/ready")
            health = await s.client.get("/api/health")
    assert [r.status_code for r in healthy] == [200, 200]
    assert healthy[1].json() == {"status": "healthy"}
    assert (live.status_code, live.json()) == (200, {"status": "live"})
    assert (ready.status_code, ready.json()) == (503, {"status": "unhealthy"})
    assert health.status_code == 503
    assert live.headers["cache-control"] == "no-store"


async def test_probes_ready_200_when_degraded_and_503_while_draining(database_url):
    async with serving(Config(database_url=database_url)) as s:
        await wait_status(s.mon, "healthy")
        await s.mon.breakers["critical"].force_open()
        await wait_status(s.mon, "degraded")
        degraded = await s.client.get("/api/health/ready")
        s.app.begin_drain()
        draining = await s.client.get("/api/health/ready")
        live = await s.client.get("/api/health/live")
    assert (degraded.status_code, degraded.json()) == (200, {"status": "degraded"})
    assert (draining.status_code, draining.json()) == (503, {"status": "draining"})
    assert live.status_code == 200


async def test_admin_new_routes_need_the_admin_token(database_url):
    async with serving(Config(database_url=database_url), admin_http()) as s:
        answers = [await s.client.post(path, json=body) for path, body in (
            ("/api/admin/pool/reset", None), ("/api/admin/queue/limit", {"max_concurrent": 1}),
            ("/api/admin/breakers/database/configure", {"failure_threshold": 3}))]
        wrong = await s.client.post("/api/admin/pool/reset", headers={"authorization": "Bearer nope"})
    assert [r.status_code for r in answers] == [401, 401, 401]
    assert wrong.status_code == 403
    assert s.mon.queue.statistics().configured_max_concurrent is None  # nothing was done


async def test_admin_queue_limit_reduces_slots_shows_in_health_and_restores(database_url):
    config = Config(database_url=database_url, queue=QueueConfig(max_concurrent=3, max_queue_size=5))
    async with serving(config, admin_http(health_token="h" * 40)) as s, trio.open_nursery() as nursery:
        release = trio.Event()
        for _ in range(3):
            nursery.start_soon(s.mon.run, release.wait)
        await trio.testing.wait_all_tasks_blocked()
        reduced = await s.client.post("/api/admin/queue/limit", headers=AUTH, json={"max_concurrent": 1})
        in_flight = s.mon.queue.statistics().in_flight
        detail_auth = {"authorization": "Bearer " + "h" * 40}
        with trio.fail_after(5):
            await s.mon.health_report.wait_value(lambda r: r.components["queue"].get("limitReduced"))
        health = (await s.client.get("/api/health", params={"detailed": "true"}, headers=detail_auth)).json()
        zero = await s.client.post("/api/admin/queue/limit", headers=AUTH, json={"max_concurrent": 0})
        above = await s.client.post("/api/admin/queue/limit", headers=AUTH, json={"max_concurrent": 9})
        text = await s.client.post("/api/admin/queue/limit", headers=AUTH, json={"max_concurrent": "2"})
        missing = await s.client.post("/api/admin/queue/limit", headers=AUTH, json={})
        release.set()
        restored = await s.client.post("/api/admin/queue/limit", headers=AUTH, json={"max_concurrent": None})
    assert reduced.json() == {"maxConcurrent": 1, "configuredMaxConcurrent": 3, "limitReduced": True}
    assert in_flight == 3                                   # nobody was cut
    queue = health["components"]["queue"]
    assert (queue["maxConcurrent"], queue["limitReduced"], queue["configuredMaxConcurrent"]) == (1, True, 3)
    for bad in (zero, above, text, missing):
        assert bad.status_code == 422
        assert "max_concurrent" in problem(bad)["detail"]
        assert "None" not in problem(bad)["detail"]  # JSON's words: null
    assert "from 1 to 3 (the configured value), or null" in problem(zero)["detail"]
    assert restored.json() == {"maxConcurrent": 3, "configuredMaxConcurrent": 3, "limitReduced": False}


async def _pids(admin: PgConnection, name: str) -> set[int]:
    result = await admin.execute(f"select pid from pg_stat_activity where application_name = '{name}'")
    return {row[0] for row in result.rows}


async def test_admin_pool_reset_replaces_idle_connections_and_answers_the_probe(direct_database_url):
    name = f"triage-reset-{os.getpid()}"
    config = Config(database_url=direct_database_url, database=DatabaseConfig(application_name=name))
    async with serving(config, admin_http()) as s, \
            await PgConnection.connect(direct_database_url) as admin:
        pooled = await s.mon.db.fetchval("select pg_backend_pid()")
        assert pooled in await _pids(admin, name)
        reset = await s.client.post("/api/admin/pool/reset", headers=AUTH)
        with trio.fail_after(5):  # the server ends a backend just after its socket closes
            while pooled in await _pids(admin, name):
                await trio.sleep(0.01)
        fresh = await s.mon.db.fetchval("select pg_backend_pid()")
        now = await _pids(admin, name)
    body = reset.json()
    assert reset.status_code == 200
    assert body["replaced"] >= 1 and body["replaced"] == body["closed"]
    assert body["healthy"] is True and body["error"] is None
    assert body["probeLatencyMs"] > 0
    assert fresh != pooled and fresh in now and pooled not in now


async def test_admin_pool_reset_with_the_database_down_answers_503_unhealthy(database_url):
    async with FaultProxy.for_dsn(database_url) as proxy:
        cfg = Config(database_url=proxied_dsn(database_url, proxy),
                     database=DatabaseConfig(connect_timeout_s=1.0))
        async with serving(cfg, admin_http()) as s:
            assert await s.mon.db.fetchval("select 1") == 1
            proxy.add(Down())
            reset = await s.client.post("/api/admin/pool/reset", headers=AUTH)
    assert reset.status_code == 503
    body = reset.json()
    assert body["healthy"] is False and body["error"]
    assert body["closed"] >= 1
    assert body["replaced"] == 0  # closed, not replaced: nothing could connect


async def test_admin_breaker_configure_applies_fields_and_422_names_a_bad_one(database_url):
    async with serving(Config(database_url=database_url), admin_http()) as s:
        ok = await s.client.post("/api/admin/breakers/analytics/configure", headers=AUTH,
                                 json={"failure_threshold": 2, "recovery_timeout_s": 5})
        snap = await s.mon.breakers["analytics"].snapshot()
        zero = await s.client.post("/api/admin/breakers/analytics/configure", headers=AUTH,
                                   json={"failure_threshold": 0})
        text = await s.client.post("/api/admin/breakers/analytics/configure", headers=AUTH,
                                   json={"recovery_timeout_s": "soon"})
        unknown = await s.client.post("/api/admin/breakers/analytics/configure", headers=AUTH,
                                      json={"threshold": 3})
        tier = await s.client.post("/api/admin/breakers/nope/configure", headers=AUTH, json={})
        after = await s.mon.breakers["analytics"].snapshot()
    assert ok.status_code == 200
    assert ok.json() == {"tier": "analytics", "state": "closed",
                         "configured": {"failure_threshold": 2, "recovery_timeout_s": 5.0}}
    assert (snap.failure_threshold, snap.recovery_timeout_s) == (2, 5.0)
    assert zero.status_code == 422 and problem(zero)["field"] == "$.failure_threshold"
    assert text.status_code == 422 and "recovery_timeout_s" in problem(text)["detail"]
    assert unknown.status_code == 422 and "threshold" in problem(unknown)["detail"]
    assert tier.status_code == 404
    assert after.failure_threshold == 2  # the refused bodies changed nothing


def test_cli_serve_exits_non_zero_when_the_actor_system_dies(database_url, tmp_path):
    """Liveness: a system past its restart intensity ends `triage serve` (the orchestrator restarts it)."""
    (tmp_path / "triage.toml").write_text("[supervisor]\nmax_restarts = 1\nbackoff_s = 0.01\n")
    env = {**os.environ, "DATABASE_URL": database_url, "TRIAGE_CONFIG": str(tmp_path / "triage.toml"),
           "PYTHONPATH": os.pathsep.join([os.getcwd(), os.path.dirname(__file__)])}
    proc = subprocess.run([sys.executable, "-m", "actors.cli", "serve", "--port", "0",
                           "--app", "crashing_app:create"], env=env, capture_output=True, timeout=60)
    assert proc.returncode == 1, proc.stderr.decode()[-2000:]
    assert b"limiter" in proc.stderr


async def test_admin_routes_answer_while_the_clients_quota_is_spent(database_url):
    """The emergency procedures are for a flood: an operator behind the same address (a NAT, a
    bastion, the load balancer) whose `general` quota the flood spent still gets through."""
    async def hello(request):
        return PlainTextResponse("hi")

    policies = {**Config().policies, "general": RatePolicy(limit=2, window_s=600.0)}
    config = Config(database_url=database_url, policies=policies)
    routes = (Route("/hello", hello, methods=["GET"]),)
    async with serving(config, admin_http(), routes=routes) as s:
        flood = [(await s.client.get("/hello")).status_code for _ in range(4)]
        opened = await s.client.post("/api/admin/breakers/analytics/open", headers=AUTH)
        reset = await s.client.post("/api/admin/breakers/analytics/reset", headers=AUTH)
        limit = await s.client.post("/api/admin/queue/limit", headers=AUTH, json={"max_concurrent": 4})
        maint = await s.client.post("/api/admin/maintenance", headers=AUTH, json={"enabled": False})
        wrong = await s.client.post("/api/admin/queue/clear", headers={"authorization": "Bearer " + "b" * 40})
        still = await s.client.get("/hello")
    assert flood == [200, 200, 429, 429]
    assert [r.status_code for r in (opened, reset, limit, maint)] == [200, 200, 200, 200]
    assert opened.json()["state"] == "open" and reset.json()["state"] == "closed"
    assert wrong.status_code == 403          # exempt from the limiter, not from the token
    assert still.status_code == 429          # the client's quota is untouched by admin calls


async def test_admin_422_names_the_field_for_a_wrong_type_an_unknown_or_a_missing_field(database_url):
    """README: a bad body is a problem body, 422 naming the field -- in `field`, as for a value out
    of range, whichever way the body does not fit."""
    cases = [("/api/admin/breakers/database/configure", {"failure_threshold": "ten"}, "$.failure_threshold"),
             ("/api/admin/breakers/database/configure", {"failure_treshold": 10}, "$.failure_treshold"),
             ("/api/admin/queue/limit", {}, "$.max_concurrent"),
             ("/api/admin/queue/limit", {"max_concurrent": "4"}, "$.max_concurrent"),
             ("/api/admin/maintenance", {"enabled": "yes"}, "$.enabled")]
    async with serving(Config(database_url=database_url), admin_http()) as s:
        answers = [await s.client.post(path, headers=AUTH, json=body) for path, body, _ in cases]
    for r, (_, body, field) in zip(answers, cases, strict=True):
        assert r.status_code == 422, (body, r.text)
        assert problem(r).get("field") == field, (body, r.text)


def test_json_response_header_fields_are_starlettes_own():
    """`json_response` builds its fields directly (`JSONBody`): the same fields, in the same
    order, as Starlette's `Response` with the JSON media type and ``Cache-Control: no-store``."""
    for status, data in ((200, {"animals": [], "stale": False}), (201, [1, 2]), (422, {"a": "é"})):
        ours = json_response(data, status)
        theirs = Response(ours.body, status_code=status, media_type="application/json",
                          headers={"cache-control": "no-store"})
        assert (ours.status_code, ours.raw_headers, ours.body) == (theirs.status_code, theirs.raw_headers,
                                                                   theirs.body)
        assert ours.headers["content-type"] == "application/json"
    stale = json_response({}, headers={"x-triage-stale": "true"})  # extra fields: Starlette's path
    assert stale.raw_headers[:2] == [(b"cache-control", b"no-store"), (b"x-triage-stale", b"true")]
