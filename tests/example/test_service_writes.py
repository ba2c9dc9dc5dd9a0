"""The reference service's writes made production-safe: sessions, logout, JSON only, NUL and
overflow as 422, outcome unknown as 502/504, Idempotency-Key. Real PostgreSQL, real HTTP."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
import pytest
import trio
from _http import problem, throwaway_schema
from test_service import ALICE, fetchval, login, serving

from actors import open_monitoring
from examples.vet_tracker.service import DemoService
from messages.config import Config
from messages.errors import ConfigError
from messages.http_config import HttpConfig

DOSE = {"animalId": 2, "medicationId": 2, "dose": 1}
ADMINISTRATIONS = "/api/administrations"
SECRET = "two instances share this secret.."


@pytest.fixture(scope="module")
def schema(database_url: str):
    with throwaway_schema(database_url, "triage_wr") as name:
        yield name


@pytest.fixture
def fresh_schema(database_url: str):
    with throwaway_schema(database_url, "triage_wr", 4) as name:
        yield name


def count(database_url: str, schema: str) -> int:
    return fetchval(database_url, f'SELECT count(*) FROM "{schema}".administrations')


# -- 9: sessions and JSON on every write ----------------------------------------------------

async def test_writes_need_a_session_401_and_a_json_body_415(database_url, schema):
    lot = [{"medicationId": 1, "lot": "X-1", "quantity": 1, "expiresOn": "2031-01-01"}]
    async with serving(Config(database_url=database_url), schema) as s:
        before = count(database_url, schema)
        anonymous = await s.client.post(ADMINISTRATIONS, json=DOSE)
        anonymous_import = await s.client.post("/api/inventory/import", json=lot)
        auth = await login(s)
        form = await s.client.post(ADMINISTRATIONS, headers=auth, data={"animalId": "2"})
        plain = await s.client.post(ADMINISTRATIONS, headers={**auth, "content-type": "text/plain"},
                                    content=b'{"animalId": 2, "medicationId": 2, "dose": 1}')
        form_import = await s.client.post("/api/inventory/import", headers=auth, data={"lot": "X"})
        with_charset = await s.client.post(ADMINISTRATIONS, content=b'{"animalId": 2, "medicationId": 2, "dose": 1}',
                                           headers={**auth, "content-type": "application/json; charset=utf-8"})
    assert anonymous.status_code == anonymous_import.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer" and "login" in problem(anonymous)["detail"]
    assert form.status_code == plain.status_code == form_import.status_code == 415
    assert "application/json" in problem(form)["detail"]
    assert with_charset.status_code == 201
    assert count(database_url, schema) == before + 1


# -- 10: a token per login, logout revokes it --------------------------------------------------

async def test_each_login_own_token_logout_revokes_only_it_on_every_instance(database_url, schema):
    async with serving(Config(database_url=database_url), schema, session_secret=SECRET) as s, \
            serving(Config(database_url=database_url), schema, session_secret=SECRET) as other:
        a, b = await login(s), await login(s)  # the same user, the same second
        out = await s.client.post("/api/auth/logout", headers=a)
        after_a = await s.client.post(ADMINISTRATIONS, json=DOSE, headers=a)
        after_b = await s.client.post(ADMINISTRATIONS, json=DOSE, headers=b)
        again = await s.client.post("/api/auth/logout", headers=a)
        nobody = await s.client.post("/api/auth/logout")
        with trio.fail_after(3):
            await other.service.logins.read_revocations()  # what its 1 s poll does
        elsewhere = await other.client.post(ADMINISTRATIONS, json=DOSE, headers=a)
        elsewhere_b = await other.client.post(ADMINISTRATIONS, json=DOSE, headers=b)
    assert a != b
    assert out.status_code == 204
    assert after_a.status_code == 401 and after_b.status_code == 201
    assert again.status_code == nobody.status_code == 401
    assert elsewhere.status_code == 401 and elsewhere_b.status_code == 201


async def test_stale_revocation_cache_write_checks_its_session_in_the_database(database_url, schema, monkeypatch):
    monkeypatch.setattr("examples.vet_tracker.sessions.REVOCATIONS_POLL_S", 3600.0)  # no poll during the test
    async with serving(Config(database_url=database_url), schema, session_secret=SECRET) as s, \
            serving(Config(database_url=database_url), schema, session_secret=SECRET) as other:
        a, b = await login(s), await login(s)
        assert (await other.client.post("/api/auth/logout", headers=a)).status_code == 204
        cached = await s.client.post(ADMINISTRATIONS, json=DOSE, headers=a)  # its cache is fresh: not yet seen
        s.service.sessions.revocations_read_at = trio.current_time() - 6.0  # as if the poll failed for 6 s
        stale_a = await s.client.post(ADMINISTRATIONS, json=DOSE, headers=a)
        stale_b = await s.client.post(ADMINISTRATIONS, json=DOSE, headers=b)
    assert cached.status_code == 201  # within the cache's 5 s staleness
    assert stale_a.status_code == 401 and stale_b.status_code == 201


# -- 9: demo users ----------------------------------------------------------------------------

async def test_demo_users_only_in_development_or_with_demo_users(database_url, fresh_schema):
    async with serving(Config(database_url=database_url, environment="test"), fresh_schema) as s:
        none = await s.client.post("/api/auth/login", json=ALICE)
    async with serving(Config(database_url=database_url, environment="test"), fresh_schema, demo_users=True) as s:
        seeded = await s.client.post("/api/auth/login", json=ALICE)
    async with serving(Config(database_url=database_url, environment="test"), fresh_schema) as s:
        left_over = await s.client.post("/api/auth/login", json=ALICE)  # in the table, but not enabled
    assert none.status_code == 401 and seeded.status_code == 200 and left_over.status_code == 401
    async with open_monitoring(Config(environment="production")) as mon:
        with pytest.raises(ConfigError, match="DEMO_USERS.*production"):
            DemoService(mon, HttpConfig(demo_users=True))
    with pytest.raises(ConfigError, match="DEMO_USERS.*production") as refused:
        HttpConfig.from_env({"NODE_ENV": "production", "DEMO_USERS": "1"})
    assert refused.value.field == "DEMO_USERS"
    assert HttpConfig.from_env({"DEMO_USERS": "0"}).demo_users is False


# -- 15: bad input is 4xx, never 500 -----------------------------------------------------------

async def test_nul_in_any_json_string_is_422_naming_the_field(database_url, schema):
    lot = {"medicationId": 1, "lot": "N\u0000L", "quantity": 1, "expiresOn": "2031-01-01"}
    async with serving(Config(database_url=database_url), schema) as s:
        auth = await login(s)
        user = await s.client.post("/api/auth/login", json={"username": "al\u0000ice", "password": "x"})
        notes = await s.client.post(ADMINISTRATIONS, json={**DOSE, "notes": "a\u0000b"}, headers=auth)
        lots = await s.client.post("/api/inventory/import", json=[lot], headers=auth)
        escaped = await s.client.post(ADMINISTRATIONS, json={**DOSE, "notes": "literal \\u0000"}, headers=auth)
    for r, where in ((user, "$.username"), (notes, "$.notes"), (lots, "$[0].lot")):
        assert r.status_code == 422 and where in problem(r)["detail"] and problem(r)["field"] == where
    assert escaped.status_code == 201  # a backslash-u in the text is not a NUL


async def test_import_past_int4_is_422_naming_the_lot(database_url, schema):
    name = f"BIG-{secrets.token_hex(3)}"
    lot = {"medicationId": 1, "lot": name, "quantity": 1_000_000, "expiresOn": "2031-01-01"}
    async with serving(Config(database_url=database_url), schema) as s:
        auth = await login(s)
        assert (await s.client.post("/api/inventory/import", json=[lot], headers=auth)).status_code == 201
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'UPDATE "{schema}".inventory SET quantity = 2147000000 WHERE lot = %s', (name,))
        over = await s.client.post("/api/inventory/import", json=[lot], headers=auth)
    assert over.status_code == 422 and name in problem(over)["detail"] and problem(over)["lot"] == name
    assert fetchval(database_url, f'SELECT quantity FROM "{schema}".inventory WHERE lot = %s', (name,)) == 2147000000


# -- 7: Idempotency-Key -----------------------------------------------------------------------

async def test_idempotency_key_replays_first_answer_and_refuses_another_body(database_url, schema):
    key = {"idempotency-key": f'"{secrets.token_hex(8)}"'}
    async with serving(Config(database_url=database_url), schema) as s:
        auth = {**await login(s), **key}
        before = count(database_url, schema)
        first = await s.client.post(ADMINISTRATIONS, json=DOSE, headers=auth)
        retry = await s.client.post(ADMINISTRATIONS, content=b'{"dose":1, "medicationId":2, "animalId":2}',
                                    headers={**auth, "content-type": "application/json"})
        other = await s.client.post(ADMINISTRATIONS, json={**DOSE, "dose": 2}, headers=auth)
        bob = await login(s, {"username": "bob", "password": "bob-demo-password"})
        bobs = await s.client.post(ADMINISTRATIONS, json=DOSE, headers={**bob, **key})  # keys are per user
        bad = await s.client.post(ADMINISTRATIONS, json=DOSE, headers={**auth, "idempotency-key": ""})
    assert first.status_code == retry.status_code == 201 and retry.content == first.content
    assert retry.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert other.status_code == 422 and problem(other)["field"] == "Idempotency-Key"
    assert bobs.status_code == 201 and bobs.json()["id"] != first.json()["id"]
    assert bad.status_code == 400
    assert count(database_url, schema) == before + 2


async def test_idempotency_key_still_running_elsewhere_is_409(database_url, schema):
    key = secrets.token_hex(8)
    lots = [{"medicationId": 1, "lot": f"I-{key}", "quantity": 5, "expiresOn": "2031-01-01"}]
    async with serving(Config(database_url=database_url), schema) as s:
        auth = {**await login(s), "idempotency-key": key}
        with psycopg.connect(database_url) as held:  # another instance's open transaction
            held.execute("SELECT pg_advisory_xact_lock(1, hashtext(%s))", (key,))  # no session lock:
            running = await s.client.post("/api/inventory/import", json=lots, headers=auth)  # PgBouncer
            held.rollback()
        done = await s.client.post("/api/inventory/import", json=lots, headers=auth)
        replay = await s.client.post("/api/inventory/import", json=lots, headers=auth)
    assert running.status_code == 409 and "still running" in problem(running)["detail"]
    assert done.status_code == replay.status_code == 201 and replay.content == done.content
    assert fetchval(database_url, f'SELECT quantity FROM "{schema}".inventory WHERE lot = %s', (f"I-{key}",)) == 5


async def test_idempotency_keys_expire_after_the_configured_retention(database_url, schema):
    key = {"idempotency-key": secrets.token_hex(8)}
    async with serving(Config(database_url=database_url), schema, idempotency_ttl_s=3600) as s:
        auth = {**await login(s), **key}
        first = await s.client.post(ADMINISTRATIONS, json=DOSE, headers=auth)
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f"UPDATE \"{schema}\".idempotency_keys SET created_at = now() - interval '61 minutes' "
                         "WHERE key = %s", (key["idempotency-key"],))
        later = await s.client.post(ADMINISTRATIONS, json=DOSE, headers=auth)
    assert first.status_code == later.status_code == 201 and later.json()["id"] != first.json()["id"]
    assert HttpConfig.from_env({"IDEMPOTENCY_TTL": "7200000"}).idempotency_ttl_s == 7200.0


# -- 6: the reply to COMMIT is lost -------------------------------------------------------------

COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"  # the simple-query message PgConnection sends


class CommitCutter:
    """A TCP proxy to PostgreSQL that, once armed, forwards one COMMIT, lets the server answer
    it, and then cuts both connections without passing the answer on: committed, reply lost."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream, self.armed, self.cut = (host, port), False, 0

    async def serve(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client, await trio.open_tcp_stream(*self.upstream) as server, trio.open_nursery() as n:
            committed = trio.Event()
            n.start_soon(self._pump, client, server, committed, n)
            n.start_soon(self._pump_down, server, client, committed, n)

    async def _pump(self, src: trio.SocketStream, dst: trio.SocketStream, committed: trio.Event,
                    n: trio.Nursery) -> None:
        while data := await src.receive_some(65536):
            await dst.send_all(data)
            if self.armed and COMMIT in data:
                self.armed = False
                committed.set()
        n.cancel_scope.cancel()

    async def _pump_down(self, src: trio.SocketStream, dst: trio.SocketStream, committed: trio.Event,
                         n: trio.Nursery) -> None:
        while data := await src.receive_some(65536):
            if committed.is_set():  # the server's answer to COMMIT: drop it and cut
                self.cut += 1
                n.cancel_scope.cancel()
                return
            await dst.send_all(data)
        n.cancel_scope.cancel()


@asynccontextmanager
async def commit_cutter(database_url: str) -> AsyncIterator[tuple[CommitCutter, str]]:
    params = psycopg.conninfo.conninfo_to_dict(database_url)
    cutter = CommitCutter(params.get("host") or "127.0.0.1", int(params.get("port") or 5432))
    async with trio.open_nursery() as nursery:
        await nursery.start(cutter.serve)
        params.update(host="127.0.0.1", port=str(cutter.port))
        yield cutter, psycopg.conninfo.make_conninfo(**params)
        nursery.cancel_scope.cancel()


async def test_reply_lost_after_commit_is_502_outcome_unknown_and_the_key_makes_retry_safe(database_url, schema):
    key = {"idempotency-key": secrets.token_hex(8)}
    async with commit_cutter(database_url) as (cutter, dsn), serving(Config(database_url=dsn), schema) as s:
        auth = {**await login(s), **key}
        before = count(database_url, schema)
        cutter.armed = True
        lost = await s.client.post(ADMINISTRATIONS, json=DOSE, headers=auth)
        committed = count(database_url, schema)
        retry = await s.client.post(ADMINISTRATIONS, json=DOSE, headers=auth)
    body = problem(lost)
    assert cutter.cut == 1
    assert lost.status_code == 502 and body["outcome"] == "unknown" and "retry-after" not in lost.headers
    assert "unknown" in body["detail"]
    assert committed == before + 1  # it did commit: a blind retry would have recorded the dose twice
    assert retry.status_code == 201 and retry.headers["idempotent-replayed"] == "true"
    assert count(database_url, schema) == before + 1


async def test_refusals_before_any_sql_still_carry_retry_after(database_url, schema):
    async with serving(Config(database_url=database_url), schema) as s:
        auth = await login(s)
        await s.mon.breakers["critical"].force_open()
        refused = await s.client.post(ADMINISTRATIONS, json=DOSE, headers=auth)
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
    assert problem(refused)["outcome"] == "circuit_open"


def test_cli_refuses_to_start_with_demo_users_in_production(monkeypatch, capsys):
    from actors.cli import main

    monkeypatch.setenv("NODE_ENV", "production")
    monkeypatch.setenv("DEMO_USERS", "1")
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/none")  # never reached
    assert main(["serve", "--port", "0"]) == 2
    assert "DEMO_USERS" in capsys.readouterr().err
