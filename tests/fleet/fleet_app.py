"""A minimal service for the multi-process fleet tests: three routes under three policies with
no SQL, and `/db`, one `SELECT 1` on the database tier (the shared breaker's test).

    triage serve --app tests.fleet.fleet_app:create
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response
from starlette.routing import Route

from actors.http.app import create_app
from examples.vet_tracker.service import ServiceRoute
from messages.config import Priority


async def _ok(request: Any) -> Response:
    return Response(b'{"ok":true}', media_type="application/json")


class FleetProbe:
    lifespan = None

    def __init__(self, mon: Any) -> None:
        self.mon = mon

    async def _db(self, request: Any) -> Response:
        value = await self.mon.db.fetchval("select 1", tier="database")
        return Response(b'{"value":%d}' % value, media_type="application/json")

    def table(self) -> list[ServiceRoute]:
        return [ServiceRoute("GET", "/db", "recording", Priority.NORMAL, "database", Route("/db", self._db)),
                ServiceRoute("GET", "/g", "general", Priority.NORMAL, "database", Route("/g", _ok)),
                ServiceRoute("GET", "/a", "auth", Priority.HIGH, "critical", Route("/a", _ok)),
                ServiceRoute("GET", "/r", "recording", Priority.CRITICAL, "critical", Route("/r", _ok))]


def create(mon: Any, http: Any) -> Any:
    return create_app(mon, http, service=FleetProbe(mon))
