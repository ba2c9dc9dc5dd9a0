"""schemathesis against /openapi.json on a real server on loopback.

schemathesis (sync, requests) runs in a worker thread while the trio loop serves:
a bounded number of examples per operation, stateful off, the never-ending
alert stream left out. Every answer must be documented (status, content type,
headers, body schema) and none may be a 500. schemathesis is in the `dev` extra.
"""

from __future__ import annotations

import hypothesis
import pytest
import trio
from _http import serving, throwaway_schema, wait_status

from messages.config import Config
from messages.http_config import HttpConfig

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the dev extra: pip install -e '.[dev]'")
from schemathesis.core.failures import ServerError  # noqa: E402 - after the importorskip
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

EXAMPLES = 10
ADMIN = "a" * 40
NEVER_ENDING = "/api/alerts/stream"


@pytest.fixture(scope="module")
def demo_schema(database_url: str):
    with throwaway_schema(database_url, "triage_fuzz") as name:
        yield name


def no_500(ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """A 502/503/504 is a documented answer (database trouble, maintenance); a 500 is a bug."""
    if response.status_code == 500:
        raise ServerError(operation=case.operation.label, status_code=500)


CHECKS = [no_500, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]


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
    async with serving(Config(database_url=database_url), HttpConfig(port=0, host="127.0.0.1", admin_token=ADMIN, demo_schema=demo_schema),
                       service=True) as s:
        await wait_status(s.mon, "healthy")
        await s.app.service.ready.wait()
        doc = (await s.client.get("/openapi.json")).json()
        login = await s.client.post("/api/auth/login", json={"username": "alice", "password": "alice-demo-password"})
        with trio.fail_after(120):
            failures = await trio.to_thread.run_sync(_fuzz, doc, s.url, login.json()["token"])
    assert failures == []
