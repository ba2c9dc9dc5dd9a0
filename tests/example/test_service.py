"""The reference service over the wire, on real tables in a schema of this test session.

Real sockets and a real PostgreSQL, so real time: every wait is for an event,
under `trio.fail_after` with a short, explicit bound.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import hypercorn.trio
import psycopg
import pytest
import trio
import trio.testing
from _http import problem, throwaway_schema
from starlette.exceptions import HTTPException

from actors import CircuitOpen, QueueFull, QueueTimeout, RateLimited, open_monitoring
from actors.http.app import create_app, hypercorn_config
from actors.http.auth import Sessions, hash_password, verify_password
from actors.http.problems import problem_for
from actors.pg.database import DatabaseUnavailable, QueryTimeout
from examples.vet_tracker.routes import ROUTES, RouteSpec
from examples.vet_tracker.schema import Queries, setup
from examples.vet_tracker.service import DemoService
from messages.config import Config, DatabaseConfig, Priority, QueueConfig
from messages.http_config import HttpConfig
from messages.outcome import outcome_of

ALICE = {"username": "alice", "password": "alice-demo-password"}


@pytest.fixture(scope="session")
def schema(database_url: str):
    """One seeded schema for the session (tests that mutate data assert relative changes)."""
    with throwaway_schema(database_url, "triage_svc") as name:
        yield name


@pytest.fixture
def fresh_schema(database_url: str):
    with throwaway_schema(database_url, "triage_svc", 4) as name:
        yield name


class Served:
    def __init__(self, client: httpx.AsyncClient, mon: Any, service: DemoService) -> None:
        self.client, self.mon, self.service = client, mon, service


@asynccontextmanager
async def serving(config: Config, schema: str, **http: Any) -> AsyncIterator[Served]:
    http_config = HttpConfig(port=0, demo_schema=schema, **http)
    async with open_monitoring(config) as mon, trio.open_nursery() as nursery:
        service = DemoService(mon, http_config)
        app = create_app(mon, http_config, service=service)
        stop = trio.Event()
        binds = await nursery.start(partial(hypercorn.trio.serve, app, hypercorn_config(http_config),
                                            shutdown_trigger=app.shutdown_trigger(stop.wait)))
        try:
            async with httpx.AsyncClient(base_url=binds[0], timeout=5) as client:
                yield Served(client, mon, service)
        finally:
            stop.set()


async def login(s: Served, creds: dict = ALICE) -> dict[str, str]:
    r = await s.client.post("/api/auth/login", json=creds)
    assert r.status_code == 200, r.text
    return {"authorization": f"Bearer {r.json()['token']}"}


def fetchval(database_url: str, query: str, params: tuple = ()) -> Any:
    with psycopg.connect(database_url) as conn:
        return conn.execute(query, params).fetchone()[0]


# -- login, sessions, rate limits -----------------------------------------------------------

async def test_service_login_issues_session_refuses_bad_password_and_bad_bodies(database_url, schema):
    async with serving(Config(database_url=database_url), schema) as s:
        ok = await s.client.post("/api/auth/login", json=ALICE)
        wrong = await s.client.post("/api/auth/login", json={**ALICE, "password": "nope"})
        nobody = await s.client.post("/api/auth/login", json={"username": "mallory", "password": "x"})
        not_json = await s.client.post("/api/auth/login", content=b"username=alice")
        missing = await s.client.post("/api/auth/login", json={"username": "alice"})
        sixth = await s.client.post("/api/auth/login", json=ALICE)
    body = ok.json()
    assert ok.status_code == 200 and body["user"] == {"id": 1, "username": "alice", "displayName": "Alice Hart (vet)"}
    assert s.service.sessions.user(body["token"]) == 1 and body["tokenType"] == "Bearer"
    assert wrong.status_code == nobody.status_code == 401
    assert problem(wrong)["detail"] == problem(nobody)["detail"]  # no hint which part was wrong
    assert not_json.status_code == 400 and missing.status_code == 422 and "password" in problem(missing)["detail"]
    assert sixth.status_code == 429 and sixth.headers["retry-after"] == "900"  # auth: 5 in any 15 min


async def test_service_route_carries_three_rate_limit_header_families(database_url, schema):
    async with serving(Config(database_url=database_url), schema) as s:
        r = await s.client.get("/api/animals")
    assert r.status_code == 200
    assert (r.headers["x-ratelimit-limit"], r.headers["x-ratelimit-remaining"]) == ("100", "99")
    assert "x-ratelimit-reset" in r.headers
    assert r.headers["ratelimit-policy"] == '"general";q=100;w=60'
    assert r.headers["ratelimit"].startswith('"general";r=99;')


async def test_service_session_keys_rate_limit_by_user_not_address(database_url, schema):
    async with serving(Config(database_url=database_url), schema) as s:
        token = (await s.client.post("/api/auth/login", json=ALICE)).json()["token"]
        anonymous = [await s.client.post("/api/administrations", json={}) for _ in range(2)]
        as_alice = await s.client.post("/api/administrations", json={}, headers={"authorization": f"Bearer {token}"})
        forged = await s.client.post("/api/administrations", json={},
                                     headers={"authorization": f"Bearer {token[:-2]}xx"})
    assert [r.headers["x-ratelimit-remaining"] for r in anonymous] == ["29", "28"]
    assert as_alice.headers["x-ratelimit-remaining"] == "29"  # user:1 has its own quota
    assert forged.headers["x-ratelimit-remaining"] == "27"    # a bad signature is just the address


async def test_service_forwarded_for_ignored_without_trusted_proxy_honoured_with_it(database_url, schema):
    def spoofed(n: int) -> dict[str, str]:
        return {"x-forwarded-for": f"203.0.113.{n}"}

    async with serving(Config(database_url=database_url), schema) as s:
        plain = [(await s.client.get("/api/animals", headers=spoofed(n))).headers["x-ratelimit-remaining"]
                 for n in range(3)]
    async with serving(Config(database_url=database_url), schema, trusted_proxies=("127.0.0.1/32",)) as s:
        proxied = [(await s.client.get("/api/animals", headers=spoofed(n))).headers["x-ratelimit-remaining"]
                   for n in range(3)]
    assert plain == ["99", "98", "97"]
    assert proxied == ["99", "99", "99"]


# -- the workload ---------------------------------------------------------------------------

async def test_service_animals_list_trpc_shape_and_query_validation(database_url, schema):
    async with serving(Config(database_url=database_url), schema) as s:
        full = await s.client.get("/api/animals")
        owner = await s.client.get("/api/animals", params={"owner": 3, "limit": 1})
        trpc = await s.client.get("/api/trpc/animals.list", params={"input": json.dumps({"limit": 2})})
        bad = await s.client.get("/api/animals", params={"limit": 1000})
        bad_trpc = await s.client.get("/api/trpc/animals.list", params={"input": "{"})
    animals = full.json()["animals"]
    assert [a["name"] for a in animals[:5]] == ["Rex", "Tom", "Bella", "Milo", "Kiwi"]
    assert full.json()["stale"] is False and "x-triage-stale" not in full.headers
    assert animals[0] == {"id": 1, "name": "Rex", "species": "dog", "bornOn": "2016-04-02",
                          "owner": {"id": 1, "name": "Dana Whitfield"}}
    assert [a["name"] for a in owner.json()["animals"]] == ["Milo"]
    assert [a["name"] for a in trpc.json()["result"]["data"]] == ["Rex", "Tom"]
    assert bad.status_code == 422 and "limit" in problem(bad)["detail"]
    assert bad_trpc.status_code == 400


async def test_service_administration_records_and_decrements_in_one_transaction(database_url, schema):
    async with serving(Config(database_url=database_url), schema) as s:
        token = (await s.client.post("/api/auth/login", json={**ALICE, "username": "bob",
                                                              "password": "bob-demo-password"})).json()["token"]
        before = fetchval(database_url, f'SELECT sum(quantity) FROM "{schema}".inventory WHERE medication_id = 3')
        r = await s.client.post("/api/administrations", headers={"authorization": f"Bearer {token}"},
                                json={"animalId": 4, "medicationId": 3, "dose": 2, "notes": "with food"})
        after = fetchval(database_url, f'SELECT sum(quantity) FROM "{schema}".inventory WHERE medication_id = 3')
        row = fetchval(database_url, f'SELECT row(animal_id, dose, recorded_by, notes)::text '
                                     f'FROM "{schema}".administrations WHERE id = %s', (r.json()["id"],))
    assert r.status_code == 201 and r.json()["recordedBy"] == 2 and r.json()["remaining"] >= 0
    assert after == before - 2
    assert row == '(4,2,2,"with food")'


async def test_service_administration_refusals_do_not_count_against_the_breaker(database_url, schema):
    async with serving(Config(database_url=database_url), schema) as s:
        auth = await login(s)
        before = fetchval(database_url, f'SELECT count(*) FROM "{schema}".administrations')

        async def give(body: dict) -> httpx.Response:
            return await s.client.post("/api/administrations", json=body, headers=auth)
        unknown_animal = await give({"animalId": 999, "medicationId": 1, "dose": 1})
        unknown_med = await give({"animalId": 1, "medicationId": 999, "dose": 1})
        no_stock = await give({"animalId": 1, "medicationId": 1, "dose": 1000})
        bad_dose = await give({"animalId": 1, "medicationId": 1, "dose": 0})
        critical = (await s.mon.snapshot()).breakers["critical"]
        after = fetchval(database_url, f'SELECT count(*) FROM "{schema}".administrations')
    assert unknown_animal.status_code == 422 and "animalId" in problem(unknown_animal)["detail"]
    assert unknown_med.status_code == 422 and "medicationId" in problem(unknown_med)["detail"]
    assert no_stock.status_code == 409 and "inventory" in problem(no_stock)["detail"]
    assert bad_dose.status_code == 422 and "dose" in problem(bad_dose)["detail"]
    assert (critical.state, critical.failures) == ("closed", 0)
    assert after == before  # nothing half-done: the 422 after the decrement was rolled back


async def test_service_adherence_report_aggregates_regimens_against_administrations(database_url, schema):
    async with serving(Config(database_url=database_url), schema) as s:
        r = await s.client.get("/api/reports/adherence", params={"days": 7})
        bad = await s.client.get("/api/reports/adherence", params={"days": 0})
    rows = r.json()["rows"]
    assert r.status_code == 200 and r.json()["days"] == 7 and len(rows) == 5
    rex = rows[0]
    assert (rex["animal"]["name"], rex["medication"]["name"], rex["expected"]) == ("Rex", "Carprofen 25 mg", 14)
    assert 0 < rex["given"] <= 14 and 0 < rex["adherencePct"] <= 100
    assert bad.status_code == 422 and "days" in problem(bad)["detail"]


async def test_service_inventory_import_batch_upserts_and_validates(database_url, schema):
    lot = {"medicationId": 2, "lot": f"IMP-{secrets.token_hex(3)}", "quantity": 40, "expiresOn": "2031-01-31"}
    async with serving(Config(database_url=database_url), schema) as s:
        auth = await login(s)

        async def post(lots: list) -> httpx.Response:
            return await s.client.post("/api/inventory/import", json=lots, headers=auth)
        first = await post([lot, {**lot, "lot": lot["lot"] + "b"}])
        again = await post([lot])
        empty = await post([])
        twice = await post([lot, lot])
        unknown = await post([{**lot, "medicationId": 999}])
        too_many = await post([lot] * 1001)
        wrong_type = await post([{**lot, "quantity": "many"}])
    quantity = fetchval(database_url, f'SELECT quantity FROM "{schema}".inventory WHERE lot = %s', (lot["lot"],))
    assert first.status_code == 201 and first.json() == {"imported": 2, "created": 2, "updated": 0}
    assert again.json() == {"imported": 1, "created": 0, "updated": 1} and quantity == 80
    assert empty.status_code == twice.status_code == unknown.status_code == wrong_type.status_code == 422
    assert "quantity" in problem(wrong_type)["detail"]
    assert too_many.status_code == 413


# -- failures mapped to HTTP ----------------------------------------------------------------

async def test_service_circuit_open_serves_stale_animals_and_503_retry_after_elsewhere(database_url, schema):
    async with serving(Config(database_url=database_url), schema) as s:
        fresh = await s.client.get("/api/animals")
        auth = await login(s)
        await s.mon.breakers["database"].force_open()
        await s.mon.breakers["critical"].force_open()
        stale = await s.client.get("/api/animals")
        never_cached = await s.client.get("/api/animals", params={"limit": 3})
        record = await s.client.post("/api/administrations", json={"animalId": 1, "medicationId": 1, "dose": 1},
                                     headers=auth)
        last_minute = (await s.mon.metrics(routes=False)).overall.windows["1m"]
    assert last_minute.stale == 1  # the fallback answer is counted as such (the dashboard's error tile)
    assert stale.status_code == 200 and stale.headers["x-triage-stale"] == "true"
    assert stale.json() == {"animals": fresh.json()["animals"], "stale": True}
    for r in (never_cached, record):
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        assert "Circuit breaker" in problem(r)["detail"]


async def test_service_queue_full_and_queue_timeout_answer_503(database_url, schema):
    for size, timeout_s in ((0, 30.0), (5, 0.2)):
        config = Config(database_url=database_url,
                        queue=QueueConfig(max_concurrent=1, max_queue_size=size, request_timeout_s=timeout_s))
        async with serving(config, schema) as s, trio.open_nursery() as holder:
            holder.start_soon(partial(s.mon.run, trio.sleep_forever, tier="batch"))
            await trio.testing.wait_all_tasks_blocked()
            with trio.fail_after(2):
                r = await s.client.get("/api/reports/adherence")
            holder.cancel_scope.cancel()
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "Server busy" in problem(r)["detail"]


async def test_service_database_error_is_500_without_sql_text(database_url, fresh_schema):
    async with serving(Config(database_url=database_url), fresh_schema) as s:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'DROP TABLE "{fresh_schema}".administrations, "{fresh_schema}".regimens')
        r = await s.client.get("/api/reports/adherence")
    assert r.status_code == 500 and problem(r)["detail"] == "Database error" and problem(r)["requestId"]
    assert "SELECT" not in r.text and "regimens" not in r.text and fresh_schema not in r.text


async def test_service_unreachable_database_answers_503_while_not_ready(fresh_schema):
    config = Config(database_url="postgresql://postgres@127.0.0.1:1/none",
                    database=DatabaseConfig(connect_timeout_s=1.0))
    async with serving(config, fresh_schema) as s:
        animals = await s.client.get("/api/animals")
        login = await s.client.post("/api/auth/login", json=ALICE)
        health = await s.client.get("/api/health")
    for r in (animals, login):
        assert r.status_code == 503 and r.headers["retry-after"] == "5" and "not ready" in problem(r)["detail"]
    assert health.status_code in (206, 503)


async def test_service_requests_recorded_by_route_template(database_url, schema):
    async with serving(Config(database_url=database_url), schema) as s:
        await s.client.get("/api/animals")
        await s.client.get("/api/reports/adherence")
        await s.client.get("/nowhere")
        await trio.testing.wait_all_tasks_blocked()  # the edge records after the response is sent
        metrics = await s.mon.metrics()
    assert {"GET /api/animals", "GET /api/reports/adherence", "GET <unmatched>"} <= set(metrics.routes)
    assert metrics.routes["GET /api/animals"].windows["1m"].requests == 1


async def test_service_setup_is_idempotent(database_url, fresh_schema):
    hashed = []

    async def hashes() -> list[str]:
        hashed.append(1)
        return [hash_password("x", salt=b"s" * 16)] * 3

    async with open_monitoring(Config(database_url=database_url)) as mon:
        q = Queries(fresh_schema)
        first = await setup(mon.db, q, hashes)
        second = await setup(mon.db, q, hashes)
    assert (first, second, len(hashed)) == (True, False, 1)
    assert fetchval(database_url, f'SELECT count(*) FROM "{fresh_schema}".animals') == 5


# -- pure pieces ----------------------------------------------------------------------------

def _marked(exc: Exception, retriable: bool) -> Exception:
    exc.retriable = retriable  # type: ignore[attr-defined]  # as mon.db marks what it raises
    return exc


@pytest.mark.parametrize(("exc", "status", "outcome"), [
    (RateLimited("auth", "ip:1.2.3.4", 3.2), 429, "rate_limited"),
    (CircuitOpen("database", 12.5), 503, "circuit_open"),
    (QueueFull("NORMAL", 200), 503, "queue_full"),
    (QueueTimeout("LOW", 30.0), 503, "queue_timeout"),
    (DatabaseUnavailable(2.0), 503, "error"),
    (QueryTimeout(5.0), 504, "unknown"),
    (_marked(psycopg.OperationalError("connection to server at 10.0.0.1 failed"), True), 503, "error"),
    (_marked(psycopg.OperationalError("server closed the connection at 10.0.0.1"), False), 502, "unknown"),
    (psycopg.OperationalError("no verdict from mon.db at 10.0.0.1"), 502, "unknown"),
    (psycopg.errors.SyntaxError("syntax error at or near SELEC"), 500, "error"),
    (HTTPException(404), 404, "ok"),
    (ValueError("boom"), 500, "error"),
])
def test_error_mapping_each_failure_gets_status_outcome_without_server_text(exc, status, outcome):
    got, detail, headers, _ = problem_for(exc)
    assert (got, outcome_of(exc)) == (status, outcome)
    assert "SELEC" not in detail and "10.0.0.1" not in detail
    if status == 503:
        assert int(headers["retry-after"]) >= 1
    else:  # only a refusal before any SQL was sent says a retry is safe
        assert "retry-after" not in headers or status == 429


def test_sessions_expire_and_bind_user_passwords_verify_only_when_correct():
    sessions = Sessions("k" * 32, ttl_s=60)
    token = sessions.issue(7, now=1000.0)
    assert sessions.user(token, now=1030.0) == 7
    assert sessions.user(token, now=1061.0) is None  # expired
    assert Sessions("j" * 32, 60).user(token, now=1030.0) is None  # another key
    assert sessions.user("v2.8." + token.split(".", 2)[2], now=1030.0) is None  # another user
    stored = hash_password("correct horse")
    assert verify_password("correct horse", stored) and not verify_password("wrong", stored)
    assert stored.startswith("scrypt$16384$8$1$") and "correct" not in stored


async def test_service_route_table_is_the_only_source_of_priority_and_tier(database_url, schema, monkeypatch):
    """Change one row of the table: the handler's guarded call follows it, nothing else to edit."""
    moved = RouteSpec("GET", "/api/reports/adherence", "heavy", Priority.CRITICAL, "batch", "adherence")
    monkeypatch.setattr(DemoService, "routes", tuple(moved if r.handler == "adherence" else r for r in ROUTES))
    async with serving(Config(database_url=database_url), schema) as s:
        real, seen = s.mon.db.fetch, []

        async def spy(query, params=None, **placement):
            seen.append(placement)
            return await real(query, params, **placement)

        monkeypatch.setattr(s.mon.db, "fetch", spy)
        ok = await s.client.get("/api/reports/adherence", params={"days": 7})
        await s.mon.breakers["batch"].force_open()
        refused = await s.client.get("/api/reports/adherence", params={"days": 7})
    assert ok.status_code == 200
    assert seen[0] == {"priority": Priority.CRITICAL, "tier": "batch"}
    assert (refused.status_code, problem(refused)["tier"], problem(refused)["outcome"]) == \
        (503, "batch", "circuit_open")
