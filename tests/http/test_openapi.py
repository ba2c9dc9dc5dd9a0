"""GET /openapi.json: the document of every route, and schemathesis against a real server.

schemathesis (sync, requests) runs in a worker thread while the trio loop serves:
a bounded number of examples per operation, stateful off, the never-ending
alert stream left out. Every answer must be documented (status, content type,
headers, body schema) and none may be a 500.
"""

from __future__ import annotations

import os
import secrets

import hypothesis
import psycopg
import pytest
import schemathesis
import trio
from _http import problem, serving, wait_status
from schemathesis.core.failures import ServerError
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from actors.http.openapi import PROBLEM_STATUSES
from messages.config import Config
from messages.http_config import HttpConfig

ADMIN = "a" * 40


def no_500(ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """A 502/503/504 is a documented answer (database trouble, maintenance); a 500 is a bug."""
    if response.status_code == 500:
        raise ServerError(operation=case.operation.label, status_code=500)


CHECKS = [no_500, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]
NEVER_ENDING = "/api/alerts/stream"
EXAMPLES = 10


@pytest.fixture(scope="module")
def demo_schema(database_url: str):
    name = f"triage_oapi_{os.getpid()}_{secrets.token_hex(3)}"
    yield name
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def _http(demo_schema: str) -> HttpConfig:
    return HttpConfig(port=0, host="127.0.0.1", admin_token=ADMIN, demo_schema=demo_schema)


async def test_openapi_documents_every_route_with_bodies_problems_and_rate_headers(database_url, demo_schema):
    async with serving(Config(database_url=database_url), _http(demo_schema), service=True) as s:
        r = await s.client.get("/openapi.json")
    doc = r.json()
    assert (r.status_code, doc["openapi"]) == (200, "3.1.0")
    served = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert {("GET", "/api/health"), ("GET", "/metrics"), ("GET", NEVER_ENDING), ("POST", "/api/admin/maintenance"),
            ("POST", "/api/administrations"), ("POST", "/api/inventory/import")} <= served
    record = doc["paths"]["/api/administrations"]["post"]
    body = record["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/AdministrationIn"}
    assert "animalId" in doc["components"]["schemas"]["AdministrationIn"]["properties"]
    assert {str(code) for code in PROBLEM_STATUSES} <= set(record["responses"])
    assert "X-RateLimit-Remaining" in record["responses"]["429"]["headers"]
    assert "Retry-After" in record["responses"]["429"]["headers"]
    assert "X-RateLimit-Remaining" not in doc["paths"]["/api/health"]["get"]["responses"]["200"]["headers"]


async def test_openapi_in_production_follows_the_detailed_health_rule(database_url):
    config = Config(database_url=database_url, environment="production")
    async with serving(config, HttpConfig(port=0, health_token="h" * 40)) as s:
        anonymous = await s.client.get("/openapi.json")
        with_token = await s.client.get("/openapi.json", headers={"authorization": "Bearer " + "h" * 40})
    assert anonymous.status_code == 403
    assert problem(anonymous)["status"] == 403
    assert with_token.status_code == 200


def _last(operation: schemathesis.APIOperation) -> tuple[bool, bool]:
    """Logout (it revokes the session the writes use) and then admin (maintenance mode) go last."""
    return operation.path.startswith("/api/admin/"), operation.path == "/api/auth/logout"


def _fuzz(doc: dict, url: str, session: str) -> list[str]:
    """Every operation but the alert stream, EXAMPLES cases each; the failures, as text."""
    schema = schemathesis.openapi.from_dict(doc)
    failures: list[str] = []
    for operation in sorted((result.ok() for result in schema.get_all_operations()), key=_last):
        if operation.path == NEVER_ENDING:
            continue
        token = ADMIN if operation.path.startswith("/api/admin/") else session
        try:
            _examples(operation, url, token)()
        except (Exception, BaseExceptionGroup) as exc:  # collected: one report names every failing route
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    return failures


def _examples(operation: schemathesis.APIOperation, url: str, token: str):
    @hypothesis.settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                         suppress_health_check=list(hypothesis.HealthCheck),
                         phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate])
    @hypothesis.given(case=operation.as_strategy())
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=url, headers={"authorization": f"Bearer {token}"}, checks=CHECKS,
                               timeout=10)
    return run


async def test_schemathesis_finds_no_500_and_every_answer_matches_the_document(database_url, demo_schema):
    async with serving(Config(database_url=database_url), _http(demo_schema), service=True) as s:
        await wait_status(s.mon, "healthy")
        await s.app.service.ready.wait()
        doc = (await s.client.get("/openapi.json")).json()
        login = await s.client.post("/api/auth/login", json={"username": "alice", "password": "alice-demo-password"})
        with trio.fail_after(120):
            failures = await trio.to_thread.run_sync(_fuzz, doc, s.url, login.json()["token"])
    assert failures == []
