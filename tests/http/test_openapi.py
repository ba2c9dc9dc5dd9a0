"""GET /openapi.json: the document of every route, built from the route descriptions."""

from __future__ import annotations

import pytest
from _http import problem, serving, throwaway_schema

from actors.http.openapi import PROBLEM_STATUSES
from messages.config import Config
from messages.http_config import HttpConfig

ADMIN = "a" * 40

NEVER_ENDING = "/api/alerts/stream"


@pytest.fixture(scope="module")
def demo_schema(database_url: str):
    with throwaway_schema(database_url, "triage_oapi") as name:
        yield name


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
